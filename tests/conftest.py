"""Shared fixtures: tiny random foundation models saved in the Hugging Face layouts, a tiny
synthetic EmoSet, and no network: any socket connection outside this machine fails the test."""

from __future__ import annotations

import os
import socket

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


def pytest_configure(config):
    socket.socket.connect = _guarded_connect(socket.socket.connect)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(clip_dir, sd_dir): random tiny CLIP and SD-layout directories sharing one text tower."""
    from uniemo.demo.foundation import build_random

    return build_random(tmp_path_factory.mktemp("foundation"), CAPTIONS)


@pytest.fixture(scope="session")
def tiny_emoset(tmp_path_factory):
    """A small synthetic dataset in EmoSet's on-disk format (real loader, real JPEGs)."""
    from uniemo.demo.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("emoset"), num_images=240, size=64, seed=0)
