"""Issue 7, trust: no file is ever loaded in a way that can run code, and nothing touches the
network (the whole package imports and a command runs with every connection recorded)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import socket
from pathlib import Path

import uniemo

PACKAGE = Path(uniemo.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(source: str) -> list[str]:
    """Lines of ``source`` that unpickle or could: pickle-family imports, ``torch.load`` without
    ``weights_only=True``, YAML's non-safe loaders, ``numpy.load(allow_pickle=True)``, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in UNSAFE_MODULES for n in names):
                found.append(f"line {node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        weights_only = _keyword(node, "weights_only")
        if func.endswith("torch.load") and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append(f"line {node.lineno}: {func} without weights_only=True")
        if func.startswith("yaml.") and func.split(".")[-1] in UNSAFE_YAML:
            found.append(f"line {node.lineno}: {func}")
        allow = _keyword(node, "allow_pickle")
        if func in ("np.load", "numpy.load") and allow is not None and not (isinstance(allow, ast.Constant)
                                                                              and allow.value is False):
            found.append(f"line {node.lineno}: {func} with allow_pickle")
        if func in ("eval", "exec"):
            found.append(f"line {node.lineno}: {func}")
    return found


def test_the_checker_finds_each_unsafe_pattern():
    bad = ("import pickle\nfrom joblib import load\nimport torch, yaml, numpy as np\ntorch.load('a.pt')\n"
           "torch.load('a.pt', weights_only=False)\nyaml.load(text)\nnp.load('a.npy', allow_pickle=True)\n"
           "eval('1')\n")
    assert len(unsafe_uses(bad)) == 7
    good = "import torch, yaml\ntorch.load('a.pt', map_location='cpu', weights_only=True)\nyaml.safe_load(text)\n"
    assert unsafe_uses(good) == []


def test_no_module_loads_files_unsafely():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = {str(f.relative_to(PACKAGE)): found for f in files if (found := unsafe_uses(f.read_text()))}
    assert problems == {}


def test_import_and_commands_make_no_connection(tiny_models, tiny_emoset, tmp_path, monkeypatch, capsys):
    attempts = []

    def record(kind):
        def refuse(*args, **kwargs):
            attempts.append((kind, args[1:2] if kind == "connect" else args[:1]))
            raise OSError("network disabled in this test")
        return refuse

    monkeypatch.setattr(socket.socket, "connect", record("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", record("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", record("resolve"))
    monkeypatch.setattr(socket, "create_connection", record("connect"))
    for module in pkgutil.walk_packages([str(PACKAGE)], prefix="uniemo."):
        if module.name != "uniemo.__main__":  # that one runs the command line
            importlib.import_module(module.name)
    from uniemo.cli import main

    assert main(["synth", str(tmp_path / "world"), "--num-images", "24", "--size", "16"]) == 0
    assert main(["data", "check", str(tiny_emoset), "--decode"]) == 0
    assert main(["train", "evaluator", "--clip", str(tiny_models[0]), "--data", str(tiny_emoset),  # loads CLIP
                 "--out", str(tmp_path / "eval"), "--epochs", "1"]) == 0
    assert attempts == []
