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
SAFE_PICKLE = {"UnpicklingError"}  # and pickle.Unpickler as the base of an allow-list unpickler
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(source: str) -> list[str]:
    """Lines of ``source`` that unpickle or could: pickle-family imports (``pickle`` itself only for
    an allow-list ``Unpickler`` subclass), ``torch.load`` without ``weights_only=True``,
    ``torch.jit.load``, YAML's non-safe loaders, ``numpy.load(allow_pickle=True)``, eval/exec."""
    found = []
    tree = ast.parse(source)
    restricted = _restricted_unpickler_bases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"line {node.lineno}: imports from {node.module}")
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in UNSAFE_MODULES and (a.name, a.asname) !=
                                                ("pickle", None) for a in node.names):
            found.append(f"line {node.lineno}: imports {[a.name for a in node.names]}")
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "pickle" and node.attr not in SAFE_PICKLE \
                and node not in restricted:
            found.append(f"line {node.lineno}: pickle.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        if func == "torch.jit.load":
            found.append(f"line {node.lineno}: {func} (runs the archive's code)")
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


def _restricted_unpickler_bases(tree: ast.AST) -> set[ast.AST]:
    """``pickle.Unpickler`` nodes that are the base of a class overriding ``find_class`` (an
    allow-list unpickler: the one way uniemo may read a pickle)."""
    bases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(isinstance(f, ast.FunctionDef) and f.name == "find_class"
                                                  for f in node.body):
            bases |= {b for b in node.bases if ast.unparse(b) == "pickle.Unpickler"}
    return bases


def test_the_checker_finds_each_unsafe_pattern():
    bad = ("import pickle\nfrom joblib import load\nimport torch, yaml, numpy as np\ntorch.load('a.pt')\n"
           "torch.load('a.pt', weights_only=False)\nyaml.load(text)\nnp.load('a.npy', allow_pickle=True)\n"
           "eval('1')\npickle.load(f)\nclass U(pickle.Unpickler):\n    pass\ntorch.jit.load('m.pt')\n"
           "import dill\nfrom pickle import loads\nimport pickle as p\n")
    assert len(unsafe_uses(bad)) == 12
    good = ("import torch, yaml, pickle\ntorch.load('a.pt', map_location='cpu', weights_only=True)\n"
            "yaml.safe_load(text)\nclass U(pickle.Unpickler):\n    def find_class(self, m, n):\n"
            "        raise pickle.UnpicklingError(m)\n")
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
