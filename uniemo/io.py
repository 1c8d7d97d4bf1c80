"""Atomic, safe file I/O: every file a command writes appears whole or not at all, and
nothing is ever unpickled (weights are safetensors, everything else JSON/YAML)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

from uniemo.errors import UniEmoError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.tmp-HOST-PID-RANDOM``); rename it over
    ``path`` only on success. Such files of this host's processes that no longer run are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in _left_by_ended_writers(path, "tmp"):
        leftover.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{_writer()}-{secrets.token_hex(4)}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = tmp.stat().st_mode  # 0666 less the umask: what the user's files get (mkstemp and safetensors give 0600)
    try:
        yield tmp
        os.chmod(tmp, mode)  # whatever wrote the file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def partial_dir(path: Path) -> Path:
    """Where this process writes the folder ``path`` before renaming it into place:
    ``.NAME.partial-HOST-PID`` beside it, not yet made. Such folders of this host's processes
    that no longer run (a SIGKILLed writer's) are removed first; a running one's are left alone."""
    for leftover in _left_by_ended_writers(path, "partial"):
        shutil.rmtree(leftover, ignore_errors=True)
    own = path.with_name(f".{path.name}.partial-{_writer()}")
    shutil.rmtree(own, ignore_errors=True)
    return own


def _writer() -> str:
    """This process as a temporary sibling's name gives it: host and pid. Only this host's pids
    can be looked up, so a folder shared between machines (a uniemo cache in an NFS home) keeps
    the other machines' siblings."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _left_by_ended_writers(path: Path, kind: str) -> list[Path]:
    """The siblings ``.NAME.KIND-HOST-PID[-...]`` of ``path`` written on this host by processes
    that no longer run."""
    prefix = f".{path.name}.{kind}-{socket.gethostname()}-"
    found = []
    for sibling in path.parent.glob(glob.escape(prefix) + "*"):
        pid = sibling.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            found.append(sibling)
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only the process looked up
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UniEmoError(f"no {what} at {path}: check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UniEmoError(f"malformed {what} {path}: {e}; fix or regenerate the file") from None


def check_same_settings(path: str | os.PathLike, record: dict, settings: dict) -> None:
    """Refuse to keep ``path``, written before with the metadata ``record``, when it was made with
    other ``settings`` (key -> value; a key an older record lacks is not compared): one folder
    never holds images of two settings under one name."""
    for key, value in settings.items():
        if key in record and record[key] != value:
            raise UniEmoError(f"{path} was made with {key} {record[key]!r} and this call asks for {value!r}: "
                              "write into another --out, or delete the images made with the other settings")


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, what: str = "weights") -> dict:
    """Load a safetensors file; a missing or corrupt file is a one-line UniEmoError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UniEmoError(f"no {what} file at {path}: the run directory is incomplete; re-run the step that writes it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UniEmoError(f"corrupt {what} file {path} ({e}); re-run the step that writes it") from None


def load_state_dict_checked(module, state: dict, source: str | os.PathLike) -> None:
    """``module.load_state_dict(state)`` with shape and key mismatches as one-line errors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or bad:
        detail = (
            f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]}), "
            f"{len(bad)} with other shapes (e.g. {bad[:1]})"
        )
        raise UniEmoError(f"weights in {source} do not match the model config: {detail}; "
                          "use the config the weights were saved with")
    module.load_state_dict(state)
