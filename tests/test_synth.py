"""The synthetic world: EmoSet's format, determinism, its rule (style + emotional or neutral scene
and object -> emotion), its exact ceiling and the data-scarce split."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniemo.cli import main
from uniemo.errors import UniEmoError
from uniemo.demo import synth
from uniemo.demo.synth import OBJECTS, SCENES, write_synthetic
from uniemo.vocab import EMOTIONS

EMOSET_INFO = Path(__file__).parent / "data" / "emoset_info.json"  # EmoSet's real info.json


def _annotations(root):
    """(scene, object, emotion) of every image in every split."""
    rows = []
    for split in ("train", "val", "test"):
        for emotion, _, annotation in json.loads((root / f"{split}.json").read_text()):
            a = json.loads((root / annotation).read_text())
            assert a["emotion"] == emotion
            rows.append((a["scene"], a["object"][-1], emotion))
    return rows


def test_format_matches_emoset(tiny_emoset):
    info = json.loads((tiny_emoset / "info.json").read_text())
    assert info["emotion"]["label2idx"] == {e: i for i, e in enumerate(EMOTIONS)}
    assert info["emotion"]["idx2label"] == {str(i): e for i, e in enumerate(EMOTIONS)}
    assert list(info["scene"]["label2idx"]) == list(SCENES)
    assert list(info["object"]["idx2label"].values()) == list(OBJECTS)
    real = json.loads(EMOSET_INFO.read_text())
    assert set(SCENES) <= set(real["scene"]["label2idx"])
    assert set(OBJECTS) <= set(real["object"]["label2idx"])

    for split in ("train", "val", "test"):
        items = json.loads((tiny_emoset / f"{split}.json").read_text())
        assert {emotion for emotion, _, _ in items} == set(EMOTIONS), split
        for emotion, image, annotation in items:
            assert image.startswith(f"image/{emotion}/{emotion}_") and image.endswith(".jpg")
            assert annotation == image.replace("image/", "annotation/", 1)[:-4] + ".json"
    emotion, image, annotation = items[0]
    a = json.loads((tiny_emoset / annotation).read_text())
    assert isinstance(a["scene"], str) and isinstance(a["object"], list)
    assert 0.0 <= a["brightness"] <= 1.0 and 0.0 <= a["colorfulness"] <= 1.0
    with Image.open(tiny_emoset / image) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


def test_the_dataset_records_its_world_and_real_data_has_none(tiny_emoset, tmp_path):
    assert synth.world_of(tiny_emoset) == {"version": synth.WORLD_VERSION, "num_images": 240, "size": 64, "seed": 0,
                                           "label_noise": 0.05, "train_per_emotion": None}
    assert synth.world_of(tmp_path) is None
    (tmp_path / synth.WORLD_FILE).write_text("{")
    with pytest.raises(UniEmoError, match="malformed world file"):
        synth.world_of(tmp_path)


def test_splits_are_balanced_and_disjoint(tiny_emoset):
    splits = {s: json.loads((tiny_emoset / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    paths = [item[1] for items in splits.values() for item in items]
    assert len(paths) == len(set(paths)) == 240
    assert [len(splits[s]) for s in ("train", "val", "test")] == [192, 24, 24]
    assert set(Counter(e for e, _, _ in splits["val"]).values()) == {3}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_synthetic(tmp_path / "a", num_images=48, size=32, seed=3)
    b = write_synthetic(tmp_path / "b", num_images=48, size=32, seed=3)
    c = write_synthetic(tmp_path / "c", num_images=48, size=32, seed=4)
    files = ["train.json", "test.json", "image/awe/awe_00001.jpg", "annotation/fear/fear_00002.json"]
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()
    assert (a / files[2]).read_bytes() != (c / files[2]).read_bytes()


def test_the_pool_writes_the_files_one_process_writes(tmp_path, monkeypatch):
    # 1,000 images start a pool of one process per core (on a machine of 2 or more)
    pooled = write_synthetic(tmp_path / "pooled", num_images=1000, size=16, seed=5)
    monkeypatch.setattr("uniemo.demo.synth.os.cpu_count", lambda: 1)
    alone = write_synthetic(tmp_path / "alone", num_images=1000, size=16, seed=5)
    names = sorted(p.relative_to(alone) for p in alone.rglob("*") if p.is_file())
    assert len(names) > 2000 and names == sorted(p.relative_to(pooled) for p in pooled.rglob("*") if p.is_file())
    assert all((alone / n).read_bytes() == (pooled / n).read_bytes() for n in names)


def test_neutral_attributes_are_uniform_and_emotional_ones_point_at_one_emotion(tmp_path):
    rows = _annotations(write_synthetic(tmp_path / "w", num_images=1600, size=16, seed=1, label_noise=0.0))
    for column, neutral, emotional in ((0, synth.NEUTRAL_SCENES, synth.EMOTION_SCENES),
                                       (1, synth.NEUTRAL_OBJECTS, synth.EMOTION_OBJECTS)):
        seen = defaultdict(Counter)
        for row in rows:
            seen[row[column]][row[2]] += 1
        for name in neutral:
            shares = [seen[name][e] / sum(seen[name].values()) for e in EMOTIONS]
            assert min(shares) > 0.05 and max(shares) < 0.22, (name, shares)  # uniform: 0.125
        for emotion, name in emotional.items():
            assert set(seen[name]) == {emotion}, name
        share = sum(row[column] in neutral for row in rows) / len(rows)
        expected = 1 - (synth.EMOTIONAL_SCENE_P if column == 0 else synth.EMOTIONAL_OBJECT_P)
        assert abs(share - expected) < 0.04, (column, share)


def test_every_image_shows_its_style(tmp_path):
    """Each emotion has its own style; the annotation names it, and the measured brightness and
    colorfulness agree with its words on average (a scene's own colours may outweigh them)."""
    measured = {}
    for i in range(96):
        rng = np.random.default_rng([7, i])
        style, scene, obj = synth.draw_attributes(i % 8, rng)
        assert synth.STYLES[style] == synth.EMOTION_STYLES[EMOTIONS[i % 8]]
        image, surroundings = synth.render(style, scene, obj, 64, rng)
        x = np.asarray(image, dtype=np.float32)
        measured.setdefault(synth.STYLES[style], []).append((*surroundings, (x[..., 0] - x[..., 2]).mean() / 255))
        assert image.size == (64, 64)
    mean = {name: np.mean(rows, axis=0) for name, rows in measured.items()}
    assert len(set(synth.EMOTION_STYLES.values())) == 8 == len(mean)
    for name, (brightness, colorfulness, warmth) in mean.items():
        words = name.split()
        assert (brightness >= synth.BRIGHT_FROM) == (words[0] == "bright"), (name, brightness)
        assert (colorfulness >= synth.COLORFUL_FROM) == (words[1] == "colorful"), (name, colorfulness)
        assert (warmth >= 0) == (words[2] == "warm"), (name, warmth)
        assert synth.style_of(brightness, colorfulness, warmth) == synth.STYLES.index(name)


def test_patterns_are_each_emotions_own():
    """Every style's pattern spans [-1, 1] and its power spectrum differs from every other's:
    the cue that a blend of two emotions can show both of."""
    spectra = {}
    for name in synth.PATTERNS:
        p = np.stack([synth.pattern(name, 64, np.random.default_rng([name.encode()[0], k])) for k in range(8)])
        assert p.min() >= -1 and p.max() <= 1 and p.std() > 0.3, name
        power = np.abs(np.fft.fft2(p - p.mean(axis=(1, 2), keepdims=True))).mean(axis=0).ravel()
        spectra[name] = power / np.linalg.norm(power)
    assert {s.split()[3] for s in synth.STYLES} == set(synth.PATTERNS)
    for a in synth.PATTERNS:
        for b in synth.PATTERNS:
            if a < b:
                assert spectra[a] @ spectra[b] < 0.8, (a, b, spectra[a] @ spectra[b])


def test_crossed_images_give_each_emotion_a_channel():
    """An image of two emotions as the world draws it: the first half in the first emotion's style
    (amusement: bright) with the second's scene and object, the rest the other way round (fear: dark)."""
    images = synth.crossed_images("amusement", "fear", 6, 32, seed=0)
    assert len(images) == 6 and all(im.size == (32, 32) for im in images)
    level = [np.asarray(im, dtype=np.float32).mean() for im in images]
    assert min(level[:3]) > max(level[3:]) + 40, level
    assert synth.crossed_attributes("amusement", "fear") == (
        synth.STYLES.index("bright colorful warm striped"), SCENES.index("forest"), OBJECTS.index("Spider"))
    assert [np.asarray(im).tobytes() for im in images] == [
        np.asarray(im).tobytes() for im in synth.crossed_images("amusement", "fear", 6, 32, seed=0)]


def test_annotation_names_the_style(tmp_path):
    root = synth.write_synthetic(tmp_path / "w", num_images=48, size=32, seed=3, label_noise=0.0)
    for emotion, image, annotation in json.loads((root / "train.json").read_text()):
        named = json.loads((root / annotation).read_text())["style"]
        assert named == synth.EMOTION_STYLES[emotion]
        assert synth.annotated_style(root / image) == synth.STYLES.index(named)
    assert synth.annotated_style(tmp_path / "image" / "amusement" / "none.jpg") is None


def test_ceiling_is_the_bayes_accuracy_of_the_rule():
    # by hand: the style tells the emotion; without it, an image whose scene and object are both
    # neutral is a guess among the eight
    ambiguous = (1 - synth.EMOTIONAL_SCENE_P) * (1 - synth.EMOTIONAL_OBJECT_P)
    assert synth.ceiling(0.0) == pytest.approx(1.0) and synth.ceiling(0.05) == pytest.approx(0.95)
    assert synth.ceiling(0.0, ("scene", "object")) == pytest.approx(1 - ambiguous + ambiguous / 8)
    # empirically: the majority label of each (style, scene, object) on many draws
    rows = synth.plan(40_000, seed=3, label_noise=0.05)
    counts = defaultdict(Counter)
    for *attributes, label in rows:
        counts[tuple(attributes)][label] += 1
    majority = sum(max(c.values()) for c in counts.values()) / len(rows)
    assert majority == pytest.approx(synth.ceiling(0.05), abs=0.01)
    assert synth.ceiling(0.05, ("style",)) == pytest.approx(synth.ceiling(0.05))
    assert synth.ceiling(0.05) - 0.15 > synth.ceiling(0.05, ("scene", "object"))


def test_data_scarce_split_keeps_val_test_and_the_images(tmp_path):
    full = write_synthetic(tmp_path / "full", num_images=240, size=16, seed=5)
    scarce = write_synthetic(tmp_path / "scarce", num_images=240, size=16, seed=5, train_per_emotion=3)
    train = json.loads((scarce / "train.json").read_text())
    assert Counter(e for e, _, _ in train) == {e: 3 for e in EMOTIONS}
    assert {tuple(i) for i in train} <= {tuple(i) for i in json.loads((full / "train.json").read_text())}
    for split in ("val", "test"):
        assert (scarce / f"{split}.json").read_bytes() == (full / f"{split}.json").read_bytes()
    for _, image, _ in train:
        assert (scarce / image).read_bytes() == (full / image).read_bytes()
    assert len(list((scarce / "image").rglob("*.jpg"))) == 24 + 24 + 24  # unlisted images are not written


def test_refuses_a_non_empty_directory_and_bad_arguments(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UniEmoError, match="not an empty directory"):
        write_synthetic(tmp_path / "x", num_images=48)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(UniEmoError, match="num-images"):
        write_synthetic(tmp_path / "y", num_images=10)
    with pytest.raises(UniEmoError, match="label-noise"):
        write_synthetic(tmp_path / "y", num_images=48, label_noise=1.5)
    with pytest.raises(UniEmoError, match="train-per-emotion"):
        write_synthetic(tmp_path / "y", num_images=48, train_per_emotion=0)
    assert not (tmp_path / "y").exists()


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--num-images", "32", "--size", "24", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 32 images (24x24 px, seed 2" in out and "train 16, val 8, test 8" in out
    with Image.open(tmp_path / "s" / "image" / "sadness" / "sadness_00000.jpg") as im:
        assert im.size == (24, 24)
    assert main(["synth", str(tmp_path / "s")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_ctrl_c_stops_the_pool_at_once_and_leaves_nothing(tmp_path):
    # Ctrl-C reaches the pool's workers too: the command must still end at once, say so in one
    # line, exit 130 and leave neither the world nor its temporary sibling
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "uniemo.cli", "synth", str(tmp_path / "w"), "--num-images", "20000"]
    # a terminal's foreground job takes SIGINT; one started in the background (`.ci/run &`) inherits
    # it ignored, and Python then never raises KeyboardInterrupt
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".w.partial-*/image/*/*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.1)  # until the pool is writing (a loaded machine takes seconds to start it)
    started = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and err.strip().splitlines()[-1].endswith("interrupted")
    assert time.monotonic() - started < 15
    assert list(tmp_path.iterdir()) == []
