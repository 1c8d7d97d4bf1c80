"""Atomic writes and safe weight loading: a failed save never leaves a half-written file, and
bad weight files are one-line errors."""

import errno
import os
import socket

import pytest
import torch

from uniemo.errors import UniEmoError
from uniemo.io import load_state_dict_checked, load_tensors, partial_dir, read_json, save_tensors, write_json


def test_a_full_disk_while_saving_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError):
        save_tensors(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind


def test_tensors_round_trip(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(4.0), "b": torch.eye(2)})
    loaded = load_tensors(tmp_path / "t.safetensors")
    torch.testing.assert_close(loaded["a"], torch.arange(4.0))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"])
def test_corrupt_safetensors_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UniEmoError, match="corrupt weights file") as info:
        load_tensors(path)
    assert "\n" not in str(info.value)


def test_missing_weights_name_the_path(tmp_path):
    with pytest.raises(UniEmoError, match="no weights file at"):
        load_tensors(tmp_path / "model.safetensors")


def test_weights_of_another_shape_are_refused_with_a_summary():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(UniEmoError, match="do not match the model config: 0 missing.*1 with other shapes"):
        load_state_dict_checked(model, {"weight": torch.zeros(3, 4), "bias": torch.zeros(2)}, "run/model.safetensors")


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(UniEmoError, match="malformed JSON file .*a.json"):
        read_json(tmp_path / "a.json")
    write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert read_json(tmp_path / "b.json") == {"x": [1, 2]}


def test_a_folder_is_written_beside_itself_and_what_a_killed_writer_left_goes(tmp_path, ended_pid):
    host = socket.gethostname()
    names = (f".world.partial-{host}-{ended_pid}", f".world.partial-{host}-{os.getppid()}",
             f".world2.partial-{host}-{ended_pid}", f".world.partial-{host}x-{ended_pid}")
    killed, running, other, elsewhere = (tmp_path / name for name in names)
    for folder in (killed, running, other, elsewhere, tmp_path / f".world.partial-{host}-{os.getpid()}"):
        folder.mkdir()
        (folder / "half-written").write_text("x")
    own = partial_dir(tmp_path / "world")
    assert own == tmp_path / f".world.partial-{host}-{os.getpid()}" and not own.exists()
    assert not killed.exists() and running.is_dir() and other.is_dir()  # a running writer's, another folder's
    assert elsewhere.is_dir()  # another machine's (a shared folder): its pids cannot be looked up here


def test_a_file_is_written_beside_itself_and_what_a_killed_writer_left_goes(tmp_path, ended_pid):
    host = socket.gethostname()
    names = (f".a.json.tmp-{host}-{ended_pid}-x1", f".a.json.tmp-{host}-{os.getppid()}-x2",
             f".b.json.tmp-{host}-{ended_pid}-x3", f".a.json.tmp-{host}x-{ended_pid}-x4")
    killed, *kept = (tmp_path / name for name in names)
    for file in (killed, *kept):
        file.write_text("half-written")
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    # a running writer's, another file's and another machine's stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", *names[1:]])
    umask = os.umask(0o022)  # os.umask reads only by setting: put it back
    os.umask(umask)
    save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(2)})  # safetensors writes its files 0600
    for written in ("a.json", "w.safetensors"):  # readable as the user's umask allows
        assert (tmp_path / written).stat().st_mode & 0o777 == 0o666 & ~umask, written
