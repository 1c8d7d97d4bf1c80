"""The synthetic world: EmoSet's format, determinism, and the (scene, object) -> emotion rule."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from uniemo.cli import main
from uniemo.errors import UniEmoError
from uniemo.synth import OBJECTS, SCENES, pair_emotion, write_synthetic
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


def test_emotion_needs_the_pair(tmp_path):
    rows = _annotations(write_synthetic(tmp_path / "w", num_images=480, size=16, seed=1, label_noise=0.1))
    by_pair = [EMOTIONS[pair_emotion(SCENES.index(s), OBJECTS.index(o))] == e for s, o, e in rows]
    assert 0.85 <= sum(by_pair) / len(rows) <= 0.95  # labels follow the pair up to the 10% noise

    for column in (0, 1):  # the best classifier that sees only the scene (or only the object)
        seen = defaultdict(Counter)
        for row in rows:
            seen[row[column]][row[2]] += 1
        best = sum(max(c.values()) for c in seen.values()) / len(rows)
        assert best < 0.6, (column, best)  # 0.5 without label noise
        assert all(len(c) >= 2 for c in seen.values())


def test_every_family_takes_part_in_one_positive_and_one_negative_emotion():
    for names, index, side in ((SCENES, 0, OBJECTS), (OBJECTS, 1, SCENES)):
        for name in names:
            pairs = [(names.index(name), j) if index == 0 else (j, names.index(name)) for j in range(len(side))]
            emotions = {pair_emotion(*p) for p in pairs} - {None}
            assert len(emotions) == 2 and sum(e < 4 for e in emotions) == 1, name
    cells = [(s, o) for s in range(len(SCENES)) for o in range(len(OBJECTS)) if pair_emotion(s, o) is not None]
    assert len(cells) == 8 * 3 * 4  # each emotion: one family pair, 3 scenes x 4 objects


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
    assert not (tmp_path / "y").exists()


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--num-images", "32", "--size", "24", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 32 images (24x24 px, seed 2" in out and "train 16, val 8, test 8" in out
    with Image.open(tmp_path / "s" / "image" / "sadness" / "sadness_00000.jpg") as im:
        assert im.size == (24, 24)
    assert main(["synth", str(tmp_path / "s")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
