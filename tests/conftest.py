"""Shared fixtures: tiny random foundation models saved in the Hugging Face layouts, a tiny
synthetic EmoSet, and no network: any socket connection outside this machine fails the test."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

CAPTIONS = [
    "a photo of a cake in a cemetery", "a photo of a dog on a beach", "a bench in a forest",
    "a balloon in a playground", "a skull in a desert", "a flower in a garden", "a cup", "a room",
]


def _guarded_connect(original):
    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return original(self, address)
        raise RuntimeError(f"network access attempted in a test: {address!r}")
    return connect


def _isolated_cache() -> None:
    """Tests write features to a fresh cache that links to the metric weights `make test` fetched."""
    from uniemo import metric_nets

    real = metric_nets.cache_dir()
    cache = Path(tempfile.mkdtemp(prefix="uniemo-cache-"))
    for name in [p.converted for p in metric_nets.PACKAGES] + ["packages"]:
        if (real / name).exists():
            (cache / name).symlink_to(real / name)
    os.environ["UNIEMO_CACHE"] = str(cache)
    atexit.register(shutil.rmtree, cache, ignore_errors=True)


def pytest_configure(config):
    socket.socket.connect = _guarded_connect(socket.socket.connect)
    _isolated_cache()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture
def ended_pid() -> int:
    """The pid of a process that has ended, as a SIGKILLed writer's has."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(clip_dir, sd_dir): random tiny CLIP and SD-layout directories sharing one text tower."""
    from uniemo.demo.foundation import build_random

    return build_random(tmp_path_factory.mktemp("foundation"), CAPTIONS)


@pytest.fixture(scope="session")
def tiny_xl_models(tmp_path_factory):
    """(clip_dir, sd_xl_dir): the same tiny CLIP and a tiny SD XL (two text encoders, the UNet's
    added conditions) in the diffusers layout."""
    from uniemo.demo.foundation import build_random

    return build_random(tmp_path_factory.mktemp("foundation_xl"), CAPTIONS, xl=True)


@pytest.fixture(scope="session")
def tiny_emoset(tmp_path_factory):
    """A small synthetic dataset in EmoSet's on-disk format (real loader, real JPEGs)."""
    from uniemo.demo.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("emoset"), num_images=240, size=64, seed=0)


@pytest.fixture(scope="session")
def metric_weights():
    """The converted metric weights and the package files they came from (`make test` fetches them)."""
    from uniemo import metric_nets

    cache = metric_nets.cache_dir()
    packages = {p.converted: cache / "packages" / p.filename for p in metric_nets.PACKAGES}
    if not all((cache / name).is_file() and archive.is_file() for name, archive in packages.items()):
        pytest.skip("metric weights not fetched: run `uniemo fetch-metrics` (make test does)")
    return cache
