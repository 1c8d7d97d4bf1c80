"""Datasets in their real formats: EmoSet (3- and 4-field splits), the folder kinds, CLIP
transforms, and every kind of broken entry a real dataset contains."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from uniemo.cli import main
from uniemo.data import (EmotionDataset, Item, SplitEntry, clip_transforms, collate,
                         open_dataset, parse_split)
from uniemo.errors import UniEmoError
from uniemo.vocab import BINARY, EMOTIONS, to_binary


def _save(path, image=None, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (20, 16), (200, 30, 30))).save(path, format=fmt)
    return path


def _emoset(root, items, annotations=None):
    """A hand-made EmoSet root: info.json, train.json = ``items``, annotation files as given."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = lambda names: {"label2idx": {n: i for i, n in enumerate(names)},
                           "idx2label": {str(i): n for i, n in enumerate(names)}}
    info = {"emotion": vocab(EMOTIONS), "scene": vocab(["amusement_park", "bakery/shop"]),
            "object": vocab(["Alarm clock", "Balloon"])}
    (root / "info.json").write_text(json.dumps(info))
    (root / "train.json").write_text(json.dumps(items))
    for rel, content in (annotations or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content if isinstance(content, str) else json.dumps(content))
    return root


# ---------------------------------------------------------------------------- EmoSet


def test_synthetic_emoset_loads_with_clip_transforms(tiny_emoset):
    from transformers import CLIPImageProcessor

    ds = open_dataset(tiny_emoset, "emoset", "train")
    assert len(ds) == 192 and ds.class_names == EMOTIONS
    assert "candy store" in ds.scene_vocab and "stop sign" in ds.object_vocab
    assert all(item.scene in ds.scene_vocab and item.object in ds.object_vocab for item in ds.items)
    sample = ds[5]
    assert sample["pixel_values"].mode == "RGB" and sample["index"] == 5 and sample["label"] == ds.items[5].label

    processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.5, 0.25, 0.0], image_std=[0.5, 0.25, 1.0])
    for train in (True, False):
        ds.transform = clip_transforms(processor, train)
        batch = collate([ds[i] for i in range(3)])
        assert batch["pixel_values"].shape == (3, 3, 32, 32)
        assert batch["label"].tolist() == [item.label for item in ds.items[:3]]
        assert batch["scene"] == [item.scene for item in ds.items[:3]]
    white = clip_transforms(processor, train=False)(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert torch.allclose(white.mean(dim=(1, 2)), torch.tensor([1.0, 3.0, 1.0]), atol=1e-3)


def test_three_and_four_field_items_and_annotations(tmp_path):
    _save(tmp_path / "image/awe/a.jpg")
    _save(tmp_path / "image/fear/b.jpg")
    _save(tmp_path / "image/fear/c.jpg")
    _save(tmp_path / "image/awe/d.jpg")
    items = [
        ["awe", "image/awe/a.jpg", "annotation/a.json"],
        ["fear", "fear_00001", "image/fear/b.jpg", "annotation/b.json"],
        ["fear", 7, "image/fear/c.jpg", "annotation/c.json"],
        ["awe", "image/awe/d.jpg", "annotation/missing.json"],
    ]
    annotations = {
        "annotation/a.json": {"scene": "bakery/shop", "object": ["Balloon", "Alarm clock"], "brightness": 0.4},
        "annotation/b.json": {"emotion": "fear", "facial_expression": "neutral"},
        "annotation/c.json": {"scene": 3, "object": "Balloon", "brightness": 1.5, "colorfulness": 0.7},
    }
    ds = open_dataset(_emoset(tmp_path, items, annotations), "emoset", "train")
    assert [(i.path.name, i.label, i.scene, i.object, i.brightness, i.colorfulness) for i in ds.items] == [
        ("a.jpg", 1, "bakery shop", "alarm clock", 0.4, None),  # the last listed object
        ("b.jpg", 6, None, None, None, None),
        ("c.jpg", 6, None, None, None, 0.7),  # wrong types or range: attribute missing, counted
        ("d.jpg", 1, None, None, None, None),
    ]
    assert ds.problems == {"scene of wrong type": 1, "object of wrong type": 1, "annotation missing": 1,
                           "brightness not in [0, 1]": 1}
    sample = ds[0]
    assert (sample["brightness"], sample["colorfulness"]) == (0.4, None)
    assert ds.scene_vocab == ("amusement park", "bakery shop")


@pytest.mark.parametrize("path", ["../outside.jpg", "image/../../outside.jpg", "/etc/hosts", "C:\\x.jpg"])
def test_paths_must_stay_inside_the_root(tmp_path, path):
    _emoset(tmp_path / "root", [["awe", "image/ok.jpg", "a.json"], ["awe", path, "a.json"]])
    with pytest.raises(UniEmoError, match=r"item #1 .*train\.json.*outside the dataset root"):
        open_dataset(tmp_path / "root", "emoset", "train")


@pytest.mark.parametrize("content, message", [
    ("[[\"awe\", \"a.jpg\"", "malformed EmoSet split file"),
    ('{"awe": "a.jpg"}', "expected a JSON list"),
    ('[["awe", "a.jpg"]]', "malformed item #0"),
    ('[["awe", 3, "a.json"]]', "must be non-empty strings"),
    ('[["awe", [1], "a.jpg", "a.json"]]', "image_id must be"),
    ('[["joy", "a.jpg", "a.json"]]', "emotion 'joy'"),
])
def test_malformed_split_files_are_one_line_errors(tmp_path, content, message):
    root = _emoset(tmp_path, [])
    (root / "train.json").write_text(content)
    with pytest.raises(UniEmoError, match=message) as error:
        open_dataset(root, "emoset", "train")
    assert "train.json" in str(error.value) and "\n" not in str(error.value)


def test_malformed_annotation_and_info_name_the_file(tmp_path):
    _save(tmp_path / "a" / "x.jpg")
    _emoset(tmp_path / "a", [["awe", "x.jpg", "x.json"]], {"x.json": "[1, 2]"})
    with pytest.raises(UniEmoError, match=r"malformed annotation .*x\.json"):
        open_dataset(tmp_path / "a", "emoset", "train")
    with pytest.raises(UniEmoError, match="no EmoSet split file"):
        open_dataset(tmp_path / "a", "emoset", "val")
    (tmp_path / "a" / "info.json").write_text('{"emotion": {"label2idx": ["awe"]}}')
    with pytest.raises(UniEmoError, match=r"malformed .*info\.json"):
        open_dataset(tmp_path / "a", "emoset", "train")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["awe", "image/a.jpg", "../x", "/abs", "a/../../b", ""]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_split_parser_returns_valid_items_or_a_uniemo_error(value):
    try:
        entries = parse_split(value, "split.json")
    except UniEmoError as e:
        assert "split.json" in str(e)
        return
    assert len(entries) == len(value)
    for entry in entries:
        assert isinstance(entry, SplitEntry)
        for path in (entry.image, entry.annotation):
            assert not path.startswith(("/", "..")) and ".." not in path.split("/")


# ------------------------------------------------------------------------- bad images


def _bad_images(root):
    """One file of every troublesome kind; returns the split items pointing at them."""
    ok = _save(root / "ok.jpg")
    grey = _save(root / "grey.jpg", Image.new("L", (9, 9), 100))
    _save(root / "rgba.png", Image.new("RGBA", (9, 9), (0, 0, 255, 0)), "PNG")
    palette = Image.new("P", (9, 9), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    _save(root / "palette.png", palette, "PNG")
    _save(root / "cmyk.jpg", Image.new("CMYK", (9, 9), (0, 255, 255, 0)))
    deep = Image.fromarray(np.full((9, 9), 32896, dtype=np.uint16))  # half of 16-bit white
    _save(root / "deep.png", deep, "PNG")
    _save(root / "png_named.jpg", Image.new("RGB", (9, 9), (1, 2, 3)), "PNG")
    (root / "empty.jpg").write_bytes(b"")
    (root / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    names = ["ok.jpg", "grey.jpg", "rgba.png", "palette.png", "cmyk.jpg", "deep.png", "png_named.jpg",
             "empty.jpg", "garbage.jpg", "missing.jpg", "truncated.jpg"]
    assert ok.exists() and grey.exists()
    return [["awe", name, "none.json"] for name in names]


def test_bad_images_are_converted_or_skipped_with_one_summary_line(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    ds = open_dataset(_emoset(root, _bad_images(root)), "emoset", "train")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("skipped 3 of 11 images") and "1 missing, 2 unreadable" in err[0]
    assert "first: " in err[0] and "empty.jpg" in err[0]
    assert ds.problems["missing"] == 1 and ds.problems["unreadable"] == 2

    names = [item.path.name for item in ds.items]
    pixel = {name: ds[names.index(name)]["pixel_values"].getpixel((4, 4)) for name in names[:-1]}
    assert pixel["grey.jpg"] == (100, 100, 100)
    assert pixel["rgba.png"] == (255, 255, 255)  # fully transparent over white
    assert pixel["palette.png"] == (10, 200, 30)
    assert pixel["png_named.jpg"] == (1, 2, 3)
    assert pixel["deep.png"] == (128, 128, 128)
    r, g, b = pixel["cmyk.jpg"]
    assert r > 200 and g < 60 and b < 60


def test_a_truncated_image_is_replaced_by_its_neighbour_and_counted(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    ds = open_dataset(_emoset(root, _bad_images(root)), "emoset", "train")
    capsys.readouterr()
    last = len(ds) - 1
    assert ds.items[last].path.name == "truncated.jpg"
    for _ in range(2):
        sample = ds[last]
        assert sample["index"] == last and sample["pixel_values"].size == (20, 16)  # ds.items[0]: ok.jpg
        assert sample["label"] == ds.items[0].label
    assert ds.decode_failures == 2
    assert capsys.readouterr().err.count("cannot decode") == 1


def test_decompression_bombs_count_as_unreadable(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _save(tmp_path / "small.jpg", Image.new("RGB", (9, 9)))
    _save(tmp_path / "bomb.jpg", Image.new("RGB", (15, 10)))  # between the limit and twice it: a warning
    _save(tmp_path / "huge.jpg", Image.new("RGB", (30, 30)))  # above twice the limit: an error
    ds = open_dataset(_emoset(tmp_path, [["awe", n, "x.json"] for n in ("small.jpg", "bomb.jpg", "huge.jpg")]))
    assert [item.path.name for item in ds.items] == ["small.jpg"]
    assert "2 unreadable" in capsys.readouterr().err


def test_a_dataset_with_no_usable_image_is_an_error(tmp_path):
    _emoset(tmp_path, [["awe", "gone.jpg", "x.json"], ["fear", "gone2.jpg", "x.json"]])
    with pytest.raises(UniEmoError, match=r"no usable images .*all 2 entries were broken"):
        open_dataset(tmp_path, "emoset", "train")


# ---------------------------------------------------------------------- folder datasets


def _folder_dataset(root, classes, per_class=10):
    for c, name in enumerate(classes):
        for k in range(per_class):
            _save(root / name / f"{k:02d}.jpg", Image.new("RGB", (8, 8), (20 * c, 0, 0)))
    return root


def test_fi_matches_folders_case_insensitively_and_splits_deterministically(tmp_path):
    root = _folder_dataset(tmp_path / "fi", [e.capitalize() for e in EMOTIONS])
    (root / "Awe" / "notes.txt").write_text("not an image")
    splits = {s: open_dataset(root, "fi", s) for s in ("train", "val", "test")}
    assert splits["train"].class_names == EMOTIONS
    assert [len(splits[s]) for s in ("train", "val", "test")] == [64, 8, 8]
    paths = [item.path for ds in splits.values() for item in ds.items]
    assert len(set(paths)) == 80  # disjoint and complete
    assert all(item.path.parent.name.lower() == EMOTIONS[item.label] for item in splits["val"].items)
    assert [i.path for i in open_dataset(root, "fi", "val").items] == [i.path for i in splits["val"].items]
    other = open_dataset(root, "fi", "val", seed=1)
    assert [i.path for i in other.items] != [i.path for i in splits["val"].items]


def test_emotionroi_and_generic_folder(tmp_path):
    roi = _folder_dataset(tmp_path / "roi", ["joy", "Anger", "surprise"], per_class=3)
    ds = open_dataset(roi, "emotionroi", "train")
    assert ds.class_names == ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    assert sorted({item.label for item in ds.items}) == [0, 3, 5]
    generic = _folder_dataset(tmp_path / "generic", ["zebra", "apple"], per_class=3)
    ds = open_dataset(generic, "folder", "test")
    assert ds.class_names == ("apple", "zebra") and ds.scene_vocab == () and len(ds) == 2
    with pytest.raises(UniEmoError, match="unexpected folder .*Hobbies"):
        open_dataset(_folder_dataset(tmp_path / "roi2", ["Hobbies"], 1), "emotionroi", "train")


def test_a_generic_folder_split_missing_a_class_keeps_the_labels_of_the_others(tmp_path):
    root = tmp_path / "any"
    _folder_dataset(root / "train", ["calm", "eerie", "joyful"], per_class=2)
    _folder_dataset(root / "val", ["calm", "joyful"], per_class=1)
    train, val = open_dataset(root, "folder", "train"), open_dataset(root, "folder", "val")
    assert train.class_names == val.class_names == ("calm", "eerie", "joyful")
    assert val.labels == [0, 2]  # joyful is 2 in both splits, not 1


def test_twitter_split_folders_and_the_binary_map(tmp_path):
    root = tmp_path / "tw"
    _folder_dataset(root / "train", ["positive", "Negative"], per_class=2)
    _folder_dataset(root / "test", ["positive", "negative"], per_class=1)
    train = open_dataset(root, "twitter1", "train")
    assert train.class_names == BINARY and len(train) == 4
    assert len(open_dataset(root, "twitter2", "test")) == 2
    with pytest.raises(UniEmoError, match="no val/"):
        open_dataset(root, "twitter1", "val")
    assert [to_binary(label) for label in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]  # amusement .. excitement positive


def test_unknown_kind_split_and_root_are_errors(tmp_path):
    with pytest.raises(UniEmoError, match="unknown dataset kind 'imagenet'"):
        open_dataset(tmp_path, "imagenet")
    with pytest.raises(UniEmoError, match="unknown split 'dev'"):
        open_dataset(tmp_path, "fi", "dev")
    with pytest.raises(UniEmoError, match="is not a directory"):
        open_dataset(tmp_path / "nowhere", "fi")
    with pytest.raises(UniEmoError, match="no EmoSet info.json"):
        open_dataset(tmp_path, "emoset")


def test_dataset_without_validation_keeps_given_items(tmp_path):
    path = _save(tmp_path / "a.jpg")
    ds = EmotionDataset([Item(path, 3, "beach", None)], EMOTIONS, validate=False)
    assert ds[0]["label"] == 3 and ds[0]["scene"] == "beach" and ds[0]["object"] is None


# --------------------------------------------------------------------------------- CLI


def test_cli_data_check(tiny_emoset, tmp_path, capsys):
    assert main(["data", "check", str(tiny_emoset), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "emoset dataset at" in out and "12 scene and 15 object names" in out
    train_row = next(line for line in out.splitlines() if line.startswith("train"))
    assert train_row.split()[1:] == ["192"] + ["24"] * 8
    assert "train scene 100.0%, object 100.0%" in out and "problems: none" in out

    root = tmp_path / "bad"
    root.mkdir()
    _emoset(root, _bad_images(root))
    assert main(["data", "check", str(root), "--decode"]) == 0
    captured = capsys.readouterr()
    assert "skipped 3 of 11 images" in captured.err
    assert "train: 1 missing; train: 1 truncated or corrupt; train: 2 unreadable" in captured.out
    assert "train scene 0.0%" in captured.out and "val" in captured.out and "absent" in captured.out

    _folder_dataset(tmp_path / "fi", EMOTIONS, per_class=3)
    assert main(["data", "check", str(tmp_path / "fi"), "--dataset", "fi"]) == 0
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "error: " in capsys.readouterr().err


def test_cli_data_check_lists_an_unusable_split_and_refuses_a_train_split_that_does_not_decode(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    rows = {row[1]: row for row in _bad_images(root)}
    _emoset(root, [rows["ok.jpg"], rows["grey.jpg"]])
    (root / "val.json").write_text(json.dumps([rows["missing.jpg"]]))
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "problems: val: no usable images" in out and out.rstrip().endswith("\nusable")
    assert next(line for line in out.splitlines() if line.startswith("val")).split() == ["val", "unusable"]

    (root / "val.json").unlink()
    (root / "train.json").write_text(json.dumps([rows["truncated.jpg"]]))
    assert main(["data", "check", str(root)]) == 0  # its header reads
    capsys.readouterr()
    assert main(["data", "check", str(root), "--decode"]) == 2
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after the progress bar
    assert err.startswith("error: ") and "\n" not in err and "no image of" in err and "train split decodes" in err


def test_the_real_emoset_info_json_gives_the_full_vocabularies(tmp_path):
    _save(tmp_path / "image/awe/awe_00000.jpg")
    _emoset(tmp_path, [["awe", "awe_00000", "image/awe/awe_00000.jpg", "annotation/awe/awe_00000.json"]],
            {"annotation/awe/awe_00000.json": {"scene": "bakery/shop", "object": ["Person", "Alarm clock"]}})
    (tmp_path / "info.json").write_text((Path(__file__).parent / "data" / "emoset_info.json").read_text())
    ds = open_dataset(tmp_path, "emoset", "train")
    assert ds.class_names == EMOTIONS and len(ds.scene_vocab) == 254 and len(ds.object_vocab) == 409
    assert ds.scene_vocab[17] == "bakery shop" and ds.object_vocab[2] == "alarm clock"
    assert (ds.items[0].scene, ds.items[0].object) == ("bakery shop", "alarm clock")


@pytest.mark.parametrize("mode, values, grey", [
    ("I;16", [0, 32768, 65535], [0, 128, 255]),   # 16 bits: 65535 is white
    ("I", [0, 100, 255], [0, 100, 255]),          # 32-bit ints within 0-255: already 8-bit values
    ("I", [0, 256, 65535], [0, 1, 255]),          # above 255: 16-bit values
    ("F", [0.0, 0.5, 1.0], [0, 128, 255]),        # floats within [0, 1]
    ("F", [0.0, 2.0, 255.0], [0, 2, 255]),        # floats above 1: 8-bit values
    ("F", [-5.0, 100.0, 300.0], [0, 0, 1]),       # above 255: 16-bit values, negatives clipped to 0
    ("L", [7, 8, 9], [7, 8, 9]),
])
def test_deep_and_float_images_become_8_bit_grey_by_hand(mode, values, grey):
    from uniemo.data import to_rgb

    image = Image.fromarray(np.array([values], dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32,
                                                      "L": np.uint8}[mode]))
    if mode == "I;16":
        image = Image.frombytes("I;16", (3, 1), np.array(values, dtype="<u2").tobytes())
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and [rgb.getpixel((x, 0)) for x in range(3)] == [(g, g, g) for g in grey]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBa"])
def test_transparency_is_composited_over_white_by_hand(mode):
    from uniemo.data import to_rgb

    # opaque black, half-transparent black (≈ half grey over white), fully transparent
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 255), (0, 0, 0, 128), (0, 0, 0, 0)])
    image = rgba.convert(mode)
    assert image.mode == mode
    pixels = [to_rgb(image).getpixel((x, 0)) for x in range(3)]
    assert pixels[0] == (0, 0, 0) and pixels[2] == (255, 255, 255)
    assert all(abs(c - 127) <= 2 for c in pixels[1])


def test_a_palette_image_with_a_transparent_index_is_white_there():
    from uniemo.data import to_rgb

    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata([0, 1])
    image.info["transparency"] = 1
    assert [to_rgb(image).getpixel((x, 0)) for x in range(2)] == [(10, 20, 30), (255, 255, 255)]
    del image.info["transparency"]
    assert to_rgb(image).getpixel((1, 0)) == (200, 100, 50)


def test_collate_stacks_tensors_and_keeps_names_as_lists():
    batch = collate([{"pixel_values": torch.full((3, 2, 2), float(i)), "label": i + 4, "scene": s, "object": o,
                      "index": 10 + i} for i, (s, o) in enumerate([("beach", None), (None, "house")])])
    assert batch["pixel_values"].shape == (2, 3, 2, 2) and batch["pixel_values"][1].eq(1).all()
    assert batch["label"].tolist() == [4, 5] and batch["label"].dtype == torch.long
    assert batch["index"].tolist() == [10, 11] and batch["index"].dtype == torch.long
    assert batch["scene"] == ["beach", None] and batch["object"] == [None, "house"]


def test_model_view_undoes_the_normalisation_by_hand():
    from types import SimpleNamespace

    from uniemo.data import model_view

    processor = SimpleNamespace(image_mean=[0.5, 0.25, 0.0], image_std=[0.5, 0.25, 2.0])
    pixels = torch.tensor([1.0, -1.0, 0.25]).view(3, 1, 1).expand(3, 1, 2)
    # channel c: pixels · std + mean = (1, 0, 0.5), clamped to [0, 1]; laid out (H, W, 3)
    view = model_view(pixels * torch.tensor([1.0, 1.0, 2.0]).view(3, 1, 1), processor)
    assert view.shape == (1, 2, 3) and view[0, 1].tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert model_view(torch.full((3, 1, 1), 5.0), processor).max() == 1.0
    assert model_view(torch.full((3, 1, 1), -5.0), processor).min() == 0.0


@pytest.mark.parametrize("per_class, held", [(3, 1), (10, 1), (30, 3)])
def test_folder_splits_hold_out_a_tenth_for_val_and_test_by_hand(tmp_path, per_class, held):
    root = _folder_dataset(tmp_path / "f", ["apple", "zebra"], per_class=per_class)
    sizes = [len(open_dataset(root, "folder", s)) for s in ("train", "val", "test")]
    assert sizes == [2 * (per_class - 2 * held), 2 * held, 2 * held]


def test_a_class_of_two_images_is_all_training(tmp_path):
    root = _folder_dataset(tmp_path / "f", ["apple", "zebra"], per_class=2)
    assert len(open_dataset(root, "folder", "train")) == 4
    with pytest.raises(UniEmoError, match="no usable images"):
        open_dataset(root, "folder", "val")


def test_folder_datasets_skip_hidden_folders_hidden_files_and_non_images_and_apply_the_transform(tmp_path):
    root = _folder_dataset(tmp_path / "f", ["apple", "zebra"], per_class=3)
    _save(root / ".cache" / "00.jpg", Image.new("RGB", (8, 8)))  # a hidden folder is no class
    _save(root / "apple" / ".hidden.jpg", Image.new("RGB", (8, 8)))
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / "folder.jpg").mkdir()  # a folder with an image's name
    (root / "README.md").write_text("a file beside the class folders")
    ds = open_dataset(root, "folder", "train", transform=lambda image: image.size)
    assert ds.class_names == ("apple", "zebra") and len(ds) == 2
    assert ds[0]["pixel_values"] == (8, 8)  # the transform was applied
    (tmp_path / "empty").mkdir()
    with pytest.raises(UniEmoError, match=r"no class folders in .*: a folder dataset has one folder per class \(any names\)"):
        open_dataset(tmp_path / "empty", "folder", "train")
