"""Issue 7, interruption: a training process killed with SIGKILL resumes to exactly the run it
would have been, and a full disk while checkpointing leaves the previous checkpoint usable."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import uniemo.training
from uniemo.io import load_tensors

MAX_STEPS = 10


def train_command(tiny_models, tiny_emoset, out: Path, overrides: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uniemo.cli", "train", "understand", "--data", str(tiny_emoset),
            "--clip", str(tiny_models[0]), "--out", str(out), "--preset", "tiny", "--config", str(overrides),
            "--batch-size", "8", "--max-steps", str(MAX_STEPS), "--seed", "3", *extra]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=Path(__file__).resolve().parents[1])


def checkpoint_step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "last" / "trainer.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def finish(process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    assert process.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def test_a_sigkilled_training_resumes_to_the_uninterrupted_result(tiny_models, tiny_emoset, tmp_path):
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("stage1: {checkpoint_every: 1, num_workers: 0}\n")  # random augmentation stays on
    killed, full = tmp_path / "killed", tmp_path / "full"
    reference = start(train_command(tiny_models, tiny_emoset, full, overrides), tmp_path / "full.log")
    victim = start(train_command(tiny_models, tiny_emoset, killed, overrides), tmp_path / "killed.log")
    deadline = time.monotonic() + 240
    while checkpoint_step(killed) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed: raise MAX_STEPS"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 0 < checkpoint_step(killed) < MAX_STEPS
    resumed = start(train_command(tiny_models, tiny_emoset, killed, overrides, "--resume"), tmp_path / "resumed.log")
    finish(reference, tmp_path / "full.log")
    finish(resumed, tmp_path / "resumed.log")

    assert checkpoint_step(killed) == checkpoint_step(full) == MAX_STEPS
    a, b = load_tensors(killed / "model.safetensors"), load_tensors(full / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    got, want = metrics(killed), metrics(full)
    assert [(m["epoch"], m["step"]) for m in got] == [(m["epoch"], m["step"]) for m in want]
    for m, n in zip(got, want):
        assert m.keys() == n.keys() and m == pytest.approx(n, rel=1e-4)
    assert json.loads((killed / "eval.json").read_text()) == json.loads((full / "eval.json").read_text())


def disk_fills_on(name: str, armed: dict):
    """A ``save_tensors`` that, once armed, writes half of ``name`` and fails like a full disk."""
    real = uniemo.training.save_tensors

    def save(path, tensors, metadata=None):
        if armed["on"] and Path(path).name == name:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, tensors, metadata)
    return save


def test_a_full_disk_mid_checkpoint_keeps_the_previous_one_resumable(tmp_path, monkeypatch):
    from test_training import config, step_fn, train

    cfg = config(epochs=2)  # checkpoints at steps 4, 7 (epoch end), 8, ...
    full, _ = train(tmp_path / "full", cfg)
    armed = {"on": False}

    def arm_at_step_6(model, batch, step, calls={"n": 0}):
        calls["n"] += 1
        armed["on"] = calls["n"] >= 6
        return step_fn(model, batch, step)

    monkeypatch.setattr(uniemo.training, "save_tensors", disk_fills_on("optimizer.safetensors", armed))
    with pytest.raises(OSError, match="No space left"):
        train(tmp_path / "cut", cfg, step=arm_at_step_6)
    last = tmp_path / "cut" / "checkpoints" / "last"
    assert json.loads((last / "trainer.json").read_text())["step"] == 4
    assert set(load_tensors(last / "model.safetensors")) == {n for n, _ in full.named_parameters()}
    monkeypatch.undo()
    resumed, _ = train(tmp_path / "cut", cfg, resume=True)
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_the_cli_reports_a_full_disk_in_one_line(tiny_models, tiny_emoset, tmp_path, monkeypatch, capsys):
    from uniemo.cli import main

    armed = {"on": True}
    monkeypatch.setattr(uniemo.training, "save_tensors", disk_fills_on("model.safetensors", armed))
    code = main(["train", "understand", "--data", str(tiny_emoset), "--clip", str(tiny_models[0]), "--out",
                 str(tmp_path / "run"), "--preset", "tiny", "--batch-size", "8", "--max-steps", "1"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest: progress bars
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: No space left on device while writing") and "--resume" in errors[0]
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()
