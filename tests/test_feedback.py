"""Explicit feedback (Algorithm 1): the rank window, the two-criterion filter, the mix, and
stage 3 end to end through `uniemo feedback` (RUN3 loads and classifies, re-runs skip images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from uniemo.errors import UniEmoError
from uniemo.feedback import descending_ranks, filter_images, mix_count, mix_plan, rank_window


def test_rank_window_keeps_ranks_2_to_7_of_10():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.05]
    # descending ranks:  0    8    4    2    6    1    7    3    5    9
    mask = rank_window(scores, eta=20, delta=80)
    assert descending_ranks(scores).tolist() == [0, 8, 4, 2, 6, 1, 7, 3, 5, 9]
    assert mask.nonzero().flatten().tolist() == [2, 3, 4, 6, 7, 8]  # the images of ranks 2..7


def test_filter_keeps_the_intersection_of_both_windows():
    emo_a = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.05]  # window: images 2, 3, 4, 6, 7, 8
    sem_c = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # ranks 9..0; window: images 2..7
    table = {"emo-a": emo_a, "sem-c": sem_c}
    assert filter_images(table, ["emo-a"]).nonzero().flatten().tolist() == [2, 3, 4, 6, 7, 8]
    assert filter_images(table, ["sem-c"]).nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
    assert filter_images(table, ["emo-a", "sem-c"]).nonzero().flatten().tolist() == [2, 3, 4, 6, 7]
    with pytest.raises(UniEmoError, match="sem-d"):
        filter_images(table, ["sem-d"])


def test_filter_ranks_within_each_emotion():
    # Emotion 1's scores are all below emotion 0's: a global ranking would drop it entirely.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.04, 0.03, 0.02, 0.01, 0.0]
    groups = [0] * 5 + [1] * 5
    kept = filter_images({"emo-a": scores}, ["emo-a"], eta=20, delta=80, groups=groups)
    assert kept.nonzero().flatten().tolist() == [1, 2, 3, 6, 7, 8]  # ranks 1..3 of each group of 5


def test_mix_proportion_holds():
    for n_real, p in [(800, 0.2), (1000, 0.5), (93, 0.3), (10, 0.0)]:
        n_gen = mix_count(n_real, p)
        assert n_gen / (n_real + n_gen) == pytest.approx(p, abs=1 / (n_real + n_gen))
    assert mix_count(800, 0.2) == 200
    assert mix_plan(800, 1000, 0.2) == (200, pytest.approx(0.2))
    assert mix_plan(800, 50, 0.2) == (50, pytest.approx(50 / 850))  # too few kept: all, actual share
    for bad in (-0.1, 1.0):
        with pytest.raises(UniEmoError, match="proportion"):
            mix_count(10, bad)


def test_invalid_window_is_a_one_line_error():
    for eta, delta in [(80, 20), (-1, 50), (10, 101), (50, 50)]:
        with pytest.raises(UniEmoError, match="eta < delta"):
            rank_window([0.1, 0.2], eta, delta)


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
       eta=st.integers(0, 99), width=st.integers(1, 100))
def test_rank_window_properties(scores, eta, width):
    delta = min(100, eta + width)
    n = len(scores)
    mask = rank_window(scores, eta, delta)
    assert int(mask.sum()) == (n * delta) // 100 - (n * eta) // 100  # kept count = the window size
    # Monotone: widening the window never drops an image.
    assert not (mask & ~rank_window(scores, max(0, eta - 5), delta)).any()
    assert not (mask & ~rank_window(scores, eta, min(100, delta + 5))).any()
    # Everything kept scores no higher than anything above the window, no lower than below it.
    t = torch.tensor(scores, dtype=torch.float64)
    ranks = descending_ranks(scores)
    if mask.any():
        above, below = t[ranks < (n * eta) // 100], t[ranks >= (n * delta) // 100]
        assert above.numel() == 0 or t[mask].max() <= above.min()
        assert below.numel() == 0 or t[mask].min() >= below.max()


class RecordingPipe:
    """A test double with UniEmoPipeline's calling contract: image j of a call is a solid colour
    derived from seed base + j, so a regenerated image must equal the original."""

    def __init__(self):
        self.calls = []

    def __call__(self, emotion, num_images, generator, batch_size, num_inference_steps=None):
        from types import SimpleNamespace

        from PIL import Image

        self.calls.append((emotion, num_images, generator))
        seeds = [generator + j for j in range(num_images)]
        images = [Image.new("RGB", (16, 16), (s % 256, (s // 256) % 256, 7)) for s in seeds]
        meta = [{"seed": s, "emotion": emotion, "matched_scene": "forest path", "matched_object": "bench",
                 **self.sampling_settings(num_inference_steps)} for s in seeds]
        return SimpleNamespace(images=images, metadata=meta)

    @staticmethod
    def sampling_settings(steps=None):
        return {"steps": steps or 50, "guidance": 7.5, "scheduler": "DDIMScheduler", "dtype": "float32"}


def test_generation_skips_images_already_written(tmp_path):
    from uniemo.feedback import generate_images, image_seed, list_generated

    names = ("amusement", "fear")
    pipe = RecordingPipe()
    generate_images(pipe, tmp_path, names, per_emotion=5, seed=3, batch_size=2)
    assert [c[1] for c in pipe.calls] == [2, 2, 1, 2, 2, 1]
    first = (tmp_path / "image/fear/fear_00003.png").read_bytes()
    (tmp_path / "annotation/fear/fear_00003.json").unlink()  # as if killed before it finished
    (tmp_path / "image/amusement/amusement_00000.png").unlink()
    (tmp_path / "annotation/amusement/amusement_00000.json").unlink()
    pipe.calls.clear()
    generate_images(pipe, tmp_path, names, per_emotion=5, seed=3, batch_size=2)
    assert pipe.calls == [("amusement", 1, image_seed(3, 0, 0)), ("fear", 1, image_seed(3, 1, 3))]
    assert (tmp_path / "image/fear/fear_00003.png").read_bytes() == first  # same seed, same image
    images = list_generated(tmp_path, names, 5)
    assert [im.seed for im in images[5:]] == [image_seed(3, 1, k) for k in range(5)]


@pytest.mark.parametrize("change, message", [({"seed": 4}, "made with seed 3 and this call asks for 4"),
                                             ({"num_inference_steps": 10}, "made with steps 50 and this call asks "
                                                                           "for 10")])
def test_generation_refuses_images_made_with_other_settings(tmp_path, change, message):
    from uniemo.errors import UniEmoError
    from uniemo.feedback import generate_images

    generate_images(RecordingPipe(), tmp_path, ("amusement", "fear"), per_emotion=2, seed=3)
    pipe = RecordingPipe()
    with pytest.raises(UniEmoError, match=message) as caught:
        generate_images(pipe, tmp_path, ("amusement", "fear"), per_emotion=3, **{"seed": 3, **change})
    assert "amusement_00000.png" in str(caught.value) and pipe.calls == []  # nothing generated
    generate_images(pipe, tmp_path, ("amusement", "fear"), per_emotion=3, seed=3)  # the same settings go on
    assert [c[1] for c in pipe.calls] == [1, 1]


def test_generation_refuses_images_another_run_made(tmp_path):
    import json

    from uniemo.errors import UniEmoError
    from uniemo.feedback import generate_images

    generate_images(RecordingPipe(), tmp_path, ("amusement",), per_emotion=1, seed=3, made_by={"run": "/runs/a"})
    record = json.loads((tmp_path / "annotation/amusement/amusement_00000.json").read_text())
    assert record["generation"]["run"] == "/runs/a"
    with pytest.raises(UniEmoError, match="made with run '/runs/a' and this call asks for '/runs/b'"):
        generate_images(RecordingPipe(), tmp_path, ("amusement",), per_emotion=2, seed=3, made_by={"run": "/runs/b"})


def test_selection_writes_scores_and_an_emoset_dataset_of_the_kept_images(tmp_path):
    import csv

    from uniemo.data import open_dataset
    from uniemo.feedback import generate_images, list_generated, write_selection

    names = ("amusement", "fear")
    generate_images(RecordingPipe(), tmp_path, names, per_emotion=10, seed=0, batch_size=10)
    images = list_generated(tmp_path, names, 10)
    emo_a = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.05] * 2)
    sem_c = torch.linspace(0.1, 1.0, 10).repeat(2)
    info = {"emotion": {"label2idx": {"amusement": 0, "fear": 1}},
            "scene": {"label2idx": {"forest_path": 0}}, "object": {"label2idx": {"Bench": 0}}}
    kept = write_selection(tmp_path, images, {"emo-a": emo_a, "sem-c": sem_c}, ["emo-a", "sem-c"], 20, 80, info)
    assert [im.name for im in kept] == [f"{e}_{k:05d}" for e in names for k in (2, 3, 4, 6, 7)]
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 20 and sum(int(r["kept"]) for r in rows) == 10
    assert rows[0]["rank_emo-a"] == "0" and rows[0]["rank_sem-c"] == "9" and rows[0]["kept"] == "0"
    ds = open_dataset(tmp_path, kind="emoset", split="train")
    assert len(ds) == 10 and ds.class_names == names
    assert ds.items[0].scene == "forest path" and ds.items[0].object == "bench"


# ----------------------------------------------------------------------------- stage 3, end to end


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    """A small synthetic EmoSet (96 images: every pass over it is short), a tiny RUN2 (`uniemo
    train joint`, 1 step, on an untrained RUN1) and a tiny evaluator."""
    from test_joint import write_run1

    from uniemo.cli import main
    from uniemo.demo.synth import write_synthetic

    root = tmp_path_factory.mktemp("feedback")
    data = write_synthetic(root / "data", num_images=96, size=64, seed=0)
    run1, run2, evaluator = write_run1(tiny_models, data, root / "run1"), root / "run2", root / "evaluator"
    assert main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(data),
                 "--out", str(run2), "--max-steps", "1", "--batch-size", "8", "--alpha-table", "counts"]) == 0
    assert main(["train", "evaluator", "--clip", str(tiny_models[0]), "--data", str(data),
                 "--out", str(evaluator), "--epochs", "5"]) == 0
    return {"data": data, "run2": run2, "evaluator": evaluator, "root": root}


def feedback_argv(setup, out, *extra):
    return ["feedback", "--run", str(setup["run2"]), "--data", str(setup["data"]), "--evaluator",
            str(setup["evaluator"]), "--out", str(out), "--per-emotion", "5", "--steps", "2", "--max-steps", "2",
            "--batch-size", "8", "--generate-batch-size", "5", *extra]


@pytest.fixture(scope="module")
def run3(setup):
    """`uniemo feedback` with Emo-A only: 3 of 5 images kept per emotion, enough for p = 0.1."""
    from uniemo.cli import main

    out = setup["root"] / "run3"
    assert main(feedback_argv(setup, out, "--criteria", "emo-a", "--proportion", "0.1", "--metrics")) == 0
    return out


@pytest.mark.e2e
def test_feedback_writes_a_run3_that_loads_and_classifies(run3, setup):
    import json

    from uniemo.feedback import feedback_table

    from uniemo.data import open_dataset
    from uniemo.io import load_tensors
    from uniemo.understanding import UniEmoUnderstanding, predict

    summary = json.loads((run3 / "feedback.json").read_text())
    assert summary["generated"] == 40 and summary["kept"] == 24  # ranks 1..3 of 5 in every emotion
    assert summary["criteria"] == ["emo-a"] and (summary["eta"], summary["delta"]) == (20, 80)
    assert set(summary["accuracy"]) == {"val", "test"}
    assert all(0 <= v <= 1 for acc in summary["accuracy"].values() for v in acc.values())
    assert summary["initial_weights"].startswith(str(setup["run2"]))
    table = feedback_table(summary)  # what the command prints
    assert "| test top-1 |" in table and "kept 24 of 40" in table and "proportion 10." in table
    metrics = json.loads((run3 / "generation_metrics.json").read_text())  # --metrics
    assert sum(metrics["generated"]["counts"]["generated"].values()) == 40
    assert sum(metrics["kept"]["counts"]["generated"].values()) == 24
    assert metrics["kept"]["metrics"]["emo_a"]["network"].startswith("evaluator")
    model = UniEmoUnderstanding.from_pretrained(run3)
    test = open_dataset(setup["data"], "emoset", "test")
    from uniemo.data import clip_transforms
    from uniemo.understanding import load_image_processor

    test.transform = clip_transforms(load_image_processor(run3), train=False)
    probs, _ = predict(model, test, batch_size=16)
    assert probs.shape == (len(test), 8) and torch.allclose(probs.sum(-1), torch.ones(len(test)), atol=1e-5)
    # Stage 3 fine-tunes RUN2 (2 steps of lr <= 1e-3): every weight stays close to RUN2's.
    before, after = load_tensors(setup["run2"] / "model.safetensors"), load_tensors(run3 / "model.safetensors")
    assert max((after[k] - before[k]).abs().max().item() for k in after) < 0.02


@pytest.mark.e2e
def test_the_mix_holds_the_proportion(run3, setup):
    import json

    from uniemo.data import open_dataset
    from uniemo.feedback import build_mix, mix_count

    summary = json.loads((run3 / "feedback.json").read_text())
    real = open_dataset(setup["data"], "emoset", "train")
    assert summary["real"] == len(real) and summary["mixed_in"] == mix_count(len(real), 0.1)
    assert summary["proportion"] == pytest.approx(0.1, abs=1 / (summary["real"] + summary["mixed_in"]))
    mix = build_mix(real, run3 / "generated", 0.1, seed=0, transform=None)
    assert len(mix) == len(real) + summary["mixed_in"] and mix.num_generated == summary["mixed_in"]
    generated = [item for item in mix.items if str(run3) in str(item.path)]
    assert len(generated) == mix.num_generated and len(mix.items) == len(mix)
    assert mix[len(real)]["label"] == generated[0].label  # generated images follow the real ones
    assert mix.class_names == real.class_names and mix.scene_vocab == real.scene_vocab
    again = build_mix(real, run3 / "generated", 0.1, seed=0, transform=None)
    other = build_mix(real, run3 / "generated", 0.1, seed=1, transform=None)
    assert again.items == mix.items and other.items != mix.items  # the subset is seeded


@pytest.mark.e2e
def test_too_few_kept_uses_all_and_reports_the_actual_share(setup):
    from uniemo.data import open_dataset
    from uniemo.feedback import build_mix, generate_images, list_generated, vocabulary_info, write_selection

    root = setup["root"] / "few"
    real = open_dataset(setup["data"], "emoset", "train")
    generate_images(RecordingPipe(), root, real.class_names, per_emotion=5, seed=0, batch_size=5)
    images = list_generated(root, real.class_names, 5)
    scores = {"emo-a": torch.linspace(0, 1, 40), "sem-c": torch.linspace(1, 0, 40)}
    kept = write_selection(root, images, scores, ["emo-a", "sem-c"], 20, 80, vocabulary_info(real))
    mix = build_mix(real, root, 0.5, seed=0, transform=None)
    assert mix.num_generated == len(kept) == 24 < len(real)  # p = 0.5 would need as many as the real ones
    assert mix.proportion == pytest.approx(24 / (len(real) + 24))


@pytest.mark.e2e
def test_rerun_skips_generated_images_and_resume_is_required(run3, setup, capsys):
    from uniemo.cli import main

    images = sorted((run3 / "generated" / "image").rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in images}
    removed = run3 / "generated" / "image" / "fear" / "fear_00002.png"
    original = np.asarray(Image.open(removed), dtype=int)
    removed.unlink()
    (run3 / "generated" / "annotation" / "fear" / "fear_00002.json").unlink()
    argv = feedback_argv(setup, run3, "--criteria", "emo-a", "--proportion", "0.1")
    assert main(argv) == 2  # the training is there: continuing it must be asked for
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and len(err.splitlines()) == 1
    assert main([*argv, "--resume"]) == 0
    # regenerated from its own seed (alone, not in a batch of 5: equal up to batched-kernel rounding)
    assert np.abs(np.asarray(Image.open(removed), dtype=int) - original).max() <= 2
    assert all(p.stat().st_mtime_ns == stamps[p] for p in images if p != removed)  # the rest skipped
    capsys.readouterr()
    argv[argv.index("--steps") + 1] = "3"
    assert main([*argv, "--resume"]) == 2  # images of 2 steps and of 3 must not mix
    err = capsys.readouterr().err.strip()
    assert "made with steps 2 and this call asks for 3" in err and len(err.splitlines()) == 1
    assert all(p.stat().st_mtime_ns == stamps[p] for p in images if p != removed)


@pytest.mark.e2e
@pytest.mark.parametrize("extra, needle", [
    (["--eta", "80", "--delta", "20"], "eta < delta"),
    (["--delta", "120"], "eta < delta"),
    (["--proportion", "1"], "--proportion"),
    (["--proportion", "0"], "--proportion"),
    (["--criteria", "emo-a,sem-d"], "--criteria"),
    (["--criteria", ","], "--criteria"),
    (["--per-emotion", "0"], "--per-emotion"),
    (["--max-steps", "-1"], "--max-steps"),
])
def test_bad_options_are_one_line_errors(setup, tmp_path, capsys, extra, needle):
    from uniemo.cli import main

    assert main([*feedback_argv(setup, tmp_path / "run3"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run3").exists()  # refused before anything was written


@pytest.mark.e2e
def test_feedback_on_a_folder_dataset_filters_by_emo_a_alone(tiny_models, tmp_path, capsys):
    """EmotionROI annotates no scenes or objects, so CLIP zero-shot has no Sem-C: the default
    criteria are refused before anything is written, and Emo-A alone selects."""
    import csv

    from test_joint import write_folder_dataset, write_run1

    from uniemo.cli import main

    roi = write_folder_dataset(tmp_path / "roi", ["anger", "disgust", "fear", "joy", "sadness", "surprise"], 4)
    run1, run2 = write_run1(tiny_models, roi, tmp_path / "run1", kind="emotionroi"), tmp_path / "run2"
    data = ["--data", str(roi), "--dataset", "emotionroi"]
    assert main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), *data, "--out", str(run2),
                 "--max-steps", "1", "--batch-size", "8"]) == 0
    assert main(["train", "evaluator", "--clip", str(tiny_models[0]), *data, "--out", str(tmp_path / "eval"),
                 "--epochs", "1"]) == 0
    argv = ["feedback", "--run", str(run2), *data, "--evaluator", str(tmp_path / "eval"), "--per-emotion", "5",
            "--steps", "2", "--max-steps", "1", "--batch-size", "8"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "run3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "filter by Emo-A alone (--criteria emo-a)" in err
    assert not (tmp_path / "run3").exists()
    assert main([*argv, "--out", str(tmp_path / "run3"), "--criteria", "emo-a"]) == 0
    with open(tmp_path / "run3" / "generated" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and "sem-c" not in rows[0] and 0 < sum(int(r["kept"]) for r in rows) < 30


@pytest.mark.e2e
def test_a_dataset_of_other_emotions_is_refused_before_any_image_is_generated(setup, tmp_path, capsys):
    from test_joint import write_folder_dataset

    from uniemo.cli import main

    roi = write_folder_dataset(tmp_path / "roi", ["anger", "disgust", "fear", "joy", "sadness", "surprise"], 4)
    argv = feedback_argv(setup, tmp_path / "run3", "--criteria", "emo-a")
    argv[argv.index("--data") + 1:argv.index("--data") + 2] = [str(roi), "--dataset", "emotionroi"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "but" in err and "joy" in err, err
    assert not (tmp_path / "run3").exists()
