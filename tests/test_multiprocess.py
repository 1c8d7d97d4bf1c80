"""Several processes (issue 18): stage 1 under `torchrun` with 2 CPU ranks (gloo) shards the
data, and only the main process evaluates, prints and writes the run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from uniemo.cli import main
from uniemo.vocab import EMOTIONS


def _train(out: Path, launcher: list[str], tiny_models, tiny_emoset) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "uniemo.cli", "train", "understand", "--data", str(tiny_emoset),
               "--clip", str(tiny_models[0]), "--preset", "tiny", "--epochs", "1", "--batch-size", "8",
               "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stage1_on_two_processes_halves_the_steps_and_writes_once(tiny_models, tiny_emoset, tmp_path, capsys):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    one = _train(tmp_path / "one", [sys.executable], tiny_models, tiny_emoset)
    two = _train(tmp_path / "two", [torchrun, "--standalone", "--nproc_per_node", "2"], tiny_models, tiny_emoset)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    for said in ("wrote stage-1 run", "val: top-1", "test: top-1"):
        assert one.stdout.count(said) == 1 and two.stdout.count(said) == 1, (said, two.stdout)
    single, double = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(double) == 1 and double[0]["processes"] == 2 and single[0]["processes"] == 1
    assert double[0]["step"] == math.ceil(single[0]["step"] / 2)  # each rank sees half of every epoch
    assert json.loads((tmp_path / "two" / "eval.json").read_text())["test"]["top1"] >= 0
    image = next((tiny_emoset / "image" / "awe").glob("*.jpg"))
    capsys.readouterr()
    assert main(["classify", "--run", str(tmp_path / "two"), str(image)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{image}: ") and printed.split()[1] in EMOTIONS  # the run loads and classifies
