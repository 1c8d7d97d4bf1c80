"""Several processes (issue 18): stages 1 and 2 under `torchrun` with 2 CPU ranks (gloo) shard
the data, and only the main process evaluates, prints and writes the run; `generate` and
`feedback` share their images out and write what one process writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_feedback import feedback_argv, setup  # noqa: F401 (a fixture)

from uniemo.cli import main
from uniemo.vocab import EMOTIONS

ONE = [sys.executable, "-m", "uniemo.cli"]
# "--": torchrun's own parser would otherwise take --run for its --run-path
TWO = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "uniemo.cli", "--"]


def _uniemo(launcher: list[str], *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


def _train(out: Path, launcher: list[str], tiny_models, tiny_emoset) -> subprocess.CompletedProcess:
    return _uniemo(launcher, "train", "understand", "--data", tiny_emoset, "--clip", tiny_models[0], "--preset", "tiny",
                   "--epochs", "1", "--batch-size", "8", "--out", out)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run1(tiny_models, tiny_emoset, tmp_path_factory):
    """One stage-1 run by one process: the reference of the stage-1 test and the start of stage 2."""
    out = tmp_path_factory.mktemp("run1") / "one"
    done = _train(out, ONE, tiny_models, tiny_emoset)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_stage1_on_two_processes_halves_the_steps_and_writes_once(run1, tiny_models, tiny_emoset, tmp_path, capsys):
    ran, one = run1
    two = _train(tmp_path / "two", TWO, tiny_models, tiny_emoset)
    assert two.returncode == 0, two.stderr[-3000:]
    for said in ("wrote stage-1 run", "val: top-1", "test: top-1"):
        assert one.stdout.count(said) == 1 and two.stdout.count(said) == 1, (said, two.stdout)
    single, double = _metrics(ran), _metrics(tmp_path / "two")
    assert len(double) == 1 and double[0]["processes"] == 2 and single[0]["processes"] == 1
    assert double[0]["step"] == math.ceil(single[0]["step"] / 2)  # each rank sees half of every epoch
    assert json.loads((tmp_path / "two" / "eval.json").read_text())["test"]["top1"] >= 0
    image = next((tiny_emoset / "image" / "awe").glob("*.jpg"))
    capsys.readouterr()
    assert main(["classify", "--run", str(tmp_path / "two"), str(image)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{image}: ") and printed.split()[1] in EMOTIONS  # the run loads and classifies


def test_stage2_on_two_processes_writes_a_run_that_generates(run1, tiny_models, tiny_emoset, tmp_path):
    from uniemo.pipeline import UniEmoPipeline

    two = _uniemo(TWO, "train", "joint", "--run", run1[0],
                  "--sd", tiny_models[1], "--data", tiny_emoset, "--max-steps", "2", "--batch-size", "4",
                  "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote stage-2 run") == 1 and two.stdout.count("test accuracy") == 1, two.stdout
    assert _metrics(tmp_path / "two")[-1]["processes"] == 2
    out = UniEmoPipeline.from_pretrained(tmp_path / "two")(emotion="awe", num_images=1, num_inference_steps=2,
                                                           generator=0)
    assert out.images[0].size[0] > 0 and out.metadata[0]["emotion"] == "awe"


def test_stage2_is_bit_exact_from_one_process_to_the_next(run1, tiny_models, tiny_emoset, tmp_path):
    """Same run 1, same seed: the same weights, bit for bit, from a fresh process and from this one
    (whose global RNG has been drawn from by every test before). The mappers' initial weights used
    to come from the process's unseeded RNG (building the alpha table forks the RNG and restores
    it), so every run of stage 2 differed."""
    from safetensors.torch import load_file

    argv = ["train", "joint", "--run", run1[0], "--sd", tiny_models[1], "--data", tiny_emoset,
            "--max-steps", "2", "--batch-size", "4", "--seed", "3", "--out"]
    done = _uniemo(ONE, *argv, tmp_path / "a")
    assert done.returncode == 0, done.stderr[-3000:]
    torch.rand(7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): sums split over threads round differently
    try:
        assert main([*map(str, argv), str(tmp_path / "b")]) == 0
    finally:
        torch.set_num_threads(threads)
    for weights in ("fusion.safetensors", "model.safetensors", "emotion_space.safetensors"):
        a, b = (load_file(tmp_path / run / weights) for run in ("a", "b"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights


def test_generate_on_two_processes_writes_what_one_process_writes(tiny_models, tmp_path):
    import numpy as np
    from PIL import Image
    from test_pipeline import write_run2

    from uniemo.metrics import read_metadata

    run = write_run2(tiny_models, tmp_path / "run2")
    args = ["generate", "--run", run, "--emotion", "all", "-n", "3", "--batch-size", "2", "--steps", "2", "--seed", "4"]
    one = _uniemo(ONE, *args, "--out", tmp_path / "one")
    two = _uniemo(TWO, *args, "--out", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote 24 image(s)") == 1, two.stdout
    a, b = (read_metadata(tmp_path / d / "metadata.jsonl") for d in ("one", "two"))
    assert len(a) == 24 and a == b  # same files, seeds and records
    for file in a:
        x, y = (np.asarray(Image.open(tmp_path / d / file), dtype=int) for d in ("one", "two"))
        assert np.abs(x - y).max() <= 2, file
    assert (tmp_path / "two" / "awe" / "grid.png").is_file()


def test_the_evaluator_on_two_processes_is_trained_and_written_once(tiny_models, tiny_emoset, tmp_path):
    from uniemo.evaluator import Evaluator

    two = _uniemo(TWO, "train", "evaluator", "--clip", tiny_models[0], "--data", tiny_emoset, "--epochs", "2",
                  "--out", tmp_path / "eval")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1, two.stdout
    assert Evaluator.from_pretrained(tmp_path / "eval").class_names


def test_feedback_on_two_processes_generates_and_keeps_what_one_process_does(setup, tmp_path):
    import numpy as np
    from PIL import Image

    argv = ("--criteria", "emo-a", "--proportion", "0.1")
    one = _uniemo(ONE, *feedback_argv(setup, tmp_path / "one", *argv))
    two = _uniemo(TWO, *feedback_argv(setup, tmp_path / "two", *argv))
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("kept 24 of 40") == 1 and two.stdout.count("wrote stage-3 run") == 1, two.stdout
    generated = [sorted((run / "generated" / "image").rglob("*.png")) for run in (tmp_path / "one", tmp_path / "two")]
    assert len(generated[0]) == 40 and [p.name for p in generated[0]] == [p.name for p in generated[1]]
    for a, b in zip(*generated):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name
    selections = [(run / "generated" / "train.json").read_text() for run in (tmp_path / "one", tmp_path / "two")]
    assert selections[0] == selections[1]
    assert json.loads((tmp_path / "two" / "feedback.json").read_text())["kept"] == 24
    assert _metrics(tmp_path / "two")[-1]["processes"] == 2
