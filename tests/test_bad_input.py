"""Issue 7, bad input: every command answers a user's mistake with one `error:` line that names
the problem, exit status 2 and no traceback. Cases already covered elsewhere are listed in
docs/RELIABILITY.md; this file adds the command-line side of the rest, and the property tests
of the annotation and --mix parsers."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from uniemo.cli import main
from uniemo.errors import UniEmoError

EMOTIONS = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")


@pytest.fixture(scope="module")
def paths(tiny_models, tiny_emoset, tmp_path_factory):
    """Named paths the argument templates below refer to: real inputs and wrong ones."""
    from PIL import Image
    from test_pipeline import write_run2

    root = tmp_path_factory.mktemp("bad_input")
    run2 = write_run2(tiny_models, root / "run2")
    (root / "images" / "awe").mkdir(parents=True)
    Image.new("RGB", (64, 64), (40, 90, 160)).save(root / "images" / "awe" / "0000.png")
    return {"clip": tiny_models[0], "sd": tiny_models[1], "data": tiny_emoset, "run2": run2,
            "images": root / "images", "nope": root / "nope", "out": root / "out"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, the one stderr line); fails the test on a traceback or several lines."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, lines[0]


def expect_error(template: str, needle: str, paths: dict, capsys) -> None:
    argv = [word.format(**paths) for word in template.split()]
    code, line = run_cli(argv, capsys)
    assert code == 2 and needle in line, line


# ------------------------------------------------------------------ paths that do not exist

@pytest.mark.parametrize("template, needle", [
    ("train understand --data {nope} --clip {clip} --out {out}/a --preset tiny", "{nope} is not a directory"),
    ("train understand --data {data} --clip {nope} --out {out}/b --preset tiny", "{nope} does not exist"),
    ("train understand --data {data} --out {nope} --resume", "no config"),
    ("train joint --run {nope} --sd {sd} --data {data} --out {out}/c", "{nope}/config.yaml"),
    ("train joint --run {run2} --sd {nope} --data {data} --out {out}/d", "{nope} does not exist"),
    ("train joint --run {run2} --sd {sd} --data {nope} --out {out}/e", "{nope} is not a directory"),
    ("train evaluator --clip {nope} --data {data} --out {out}/f", "{nope} does not exist"),
    ("train evaluator --clip {clip} --data {nope} --out {out}/g", "{nope} is not a directory"),
    ("classify --run {nope} x.jpg", "{nope} is not a directory"),
    ("classify --run {run2} {nope}/x.jpg", "{nope}/x.jpg does not exist: pass image files or folders of images"),
    ("evaluate understanding --run {run2} --data {nope}", "{nope} is not a directory"),
    ("evaluate generation --images {nope} --real {data}", "{nope} is not a directory"),
    ("evaluate generation --images {images} --real {nope}", "{nope} is not a directory"),
    ("evaluate generation --images {images} --real {data} --evaluator {nope}", "no evaluator config"),
    ("generate --run {nope} --emotion awe --out {out}/h", "{nope}/understanding.json"),
    ("inspect alpha --run {nope}", "{nope}/alpha_table.json"),
    ("feedback --run {nope} --data {data} --evaluator {nope} --out {out}/i", "{nope}/config.yaml"),
    ("feedback --run {run2} --data {nope} --evaluator {nope} --out {out}/j", "{nope} is not a directory"),
    ("feedback --run {run2} --data {data} --evaluator {nope} --out {out}/k", "no evaluator config"),
    ("data check {nope}", "{nope} has no train split"),
    ("pretrain-base {out}/l --data {nope}", "no train.json in {nope}"),
])
def test_a_path_that_does_not_exist(paths, capsys, template, needle):
    expect_error(template, needle.format(**paths), paths, capsys)


# ------------------------------------------------------------ directories of the wrong kind

@pytest.mark.parametrize("template, needle", [
    ("train understand --data {data} --clip {sd} --out {out}/a --preset tiny", "expected a Hugging Face CLIP"),
    ("train understand --data {data} --clip {data} --out {out}/b --preset tiny", "expected a Hugging Face CLIP"),
    ("train understand --data {clip} --clip {clip} --out {out}/c --preset tiny", "no EmoSet info.json"),
    ("train joint --run {run2} --sd {clip} --data {data} --out {out}/d", "expected a diffusers Stable Diffusion"),
    ("train joint --run {data} --sd {sd} --data {data} --out {out}/e", "a run directory made by `uniemo train`"),
    ("classify --run {data} x.jpg", "a run made by `uniemo train understand`"),
    ("generate --run {data} --emotion awe --out {out}/f", "a run made by `uniemo train joint`"),
    ("evaluate generation --images {images} --real {data} --evaluator {clip}", "made by `uniemo train evaluator`"),
])
def test_a_directory_of_the_wrong_kind(paths, capsys, template, needle):
    expect_error(template, needle, paths, capsys)


# ------------------------------------------------------- broken or incompatible run folders

def set_version(run, version):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "uniemo_version": version}))


def change_query_len(run):
    meta = json.loads((run / "understanding.json").read_text())
    meta["config"]["query_len"] += 1
    (run / "understanding.json").write_text(json.dumps(meta))


BREAKAGES = {
    "newer major version": (lambda run: set_version(run, "99.0.0"), "written by uniemo 99.0.0, a newer major version"),
    "unreadable version": (lambda run: set_version(run, "next"), "uniemo_version 'next' is not a version number"),
    "no model.safetensors": (lambda run: (run / "model.safetensors").unlink(), "no model weights file at"),
    "corrupt model.safetensors": (lambda run: (run / "model.safetensors").write_bytes(b"\x00" * 64),
                                  "corrupt model weights file"),
    "truncated model.safetensors": (
        lambda run: (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:1000]),
        "corrupt model weights file"),
    "weights of another shape": (change_query_len, "do not match the model config"),
    "malformed config.yaml": (lambda run: (run / "config.yaml").write_text("preset: [unclosed"), "malformed YAML"),
    "malformed understanding.json": (lambda run: (run / "understanding.json").write_text('{"config": '),
                                     "understanding.json: Expecting value"),
    "no fusion.safetensors": (lambda run: (run / "fusion.safetensors").unlink(), "missing fusion.safetensors"),
    "corrupt fusion.safetensors": (lambda run: (run / "fusion.safetensors").write_bytes(b"garbage"),
                                   "corrupt fusion weights file"),
}
COMMANDS = {
    "classify": "classify --run {run} {image}",
    "generate": "generate --run {run} --emotion awe -n 1 --steps 1 --out {out}/gen",
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_broken_run_directory(paths, tiny_emoset, tmp_path, capsys, breakage, command):
    if command == "classify" and "fusion" in breakage:
        pytest.skip("classify reads only the understanding branch")
    run = tmp_path / "run"
    shutil.copytree(paths["run2"], run)
    damage, needle = BREAKAGES[breakage]
    damage(run)
    image = next((tiny_emoset / "image").rglob("*.jpg"))
    expect_error(COMMANDS[command], needle, {**paths, "run": run, "image": image, "out": tmp_path}, capsys)
    assert not (tmp_path / "gen").exists()


def test_a_run_of_an_older_major_version_still_loads(paths, tmp_path):
    from uniemo.understanding import UniEmoUnderstanding

    shutil.copytree(paths["run2"], tmp_path / "run")
    set_version(tmp_path / "run", "0.0.1")
    assert UniEmoUnderstanding.from_pretrained(tmp_path / "run").class_names == EMOTIONS


# ----------------------------------------------------------------- numeric options

@pytest.mark.parametrize("template, needle", [
    ("train understand --data {data} --clip {clip} --out {out}/a --epochs 0", "--epochs 0 is invalid"),
    ("train understand --data {data} --clip {clip} --out {out}/a --batch-size -1", "--batch-size -1 is invalid"),
    ("train understand --data {data} --clip {clip} --out {out}/a --max-steps 0", "--max-steps 0 is invalid"),
    ("train understand --data {data} --clip {clip} --out {out}/a --seed -1", "--seed -1 is invalid"),
    ("train understand --data {data} --clip {clip} --out {out}/a --epochs ten", "invalid int value: 'ten'"),
    ("train understand --data {data} --out {out}/a", "--clip DIR is required"),
    ("train understand --clip {clip}", "the following arguments are required: --data, --out"),
    ("train joint --run {run2} --sd {sd} --data {data} --out {out}/b --max-steps 0", "--max-steps 0 is invalid"),
    ("train joint --run {run2} --sd {sd} --data {data} --out {out}/b --epochs 0", "--epochs 0 is invalid"),
    ("train joint --run {run2} --sd {sd} --data {data} --out {out}/b --batch-size -1", "--batch-size -1 is invalid"),
    ("train evaluator --clip {clip} --data {data} --out {out}/c --epochs 0", "--epochs 0 is invalid"),
    ("train evaluator --clip {clip} --data {data} --out {out}/c --lr -1", "--lr -1.0 is invalid"),
    ("train evaluator --clip {clip} --data {data} --out {out}/c --lr nan", "--lr nan is invalid"),
    ("train evaluator --clip {clip} --data {data} --out {out}/c --hidden -2", "--hidden -2 is invalid"),
    ("train evaluator --clip {clip} --data {data} --out {out}/c --dataset fl", "invalid choice: 'fl'"),
    ("evaluate understanding --run {run2} --data {data} --batch-size 0", "--batch-size 0 is invalid"),
    ("evaluate generation --images {images} --real {data} --pairs 0", "--pairs 0 is invalid"),
    ("evaluate generation --images {images} --real {data} --max-real 1", "--max-real 1 is invalid"),
    ("evaluate generation --images {images} --real {data} --out {out}/m.md", "give a .json file"),
    ("evaluate generation --images {images} --real {data} --split everything", "invalid choice: 'everything'"),
    ("generate --run {run2} --emotion awe --out {out}/d -n 0", "--num-images 0 is invalid"),
    ("generate --run {run2} --emotion awe --out {out}/d -n 1000000000", "--num-images 1000000000 is too large"),
    ("generate --run {run2} --emotion awe --out {out}/d --steps 0", "--steps 0 is invalid"),
    ("generate --run {run2} --emotion awe --out {out}/d --guidance -1", "--guidance -1.0 is invalid"),
    ("generate --run {run2} --emotion awe --out {out}/d --guidance inf", "--guidance inf is invalid"),
    ("generate --run {run2} --emotion awe --out {out}/d --truncation nan", "--truncation nan is invalid"),
    ("generate --run {run2} --emotion awe --out {out}/d --batch-size 0", "--batch-size 0 is invalid"),
    ("generate --run {run2} --emotion awe --out {out}/d --seed 4294967296", "--seed 4294967296 is invalid"),
    ("generate --run {run2} --emotion joy --out {out}/d", "unknown emotion 'joy'"),
    ("generate --run {run2} --mix awe=1e308,fear=1e308 --out {out}/d", "too large to add up"),
    ("inspect alpha --run {run2} --top 0", "--top 0 is invalid"),
    ("feedback --run {run2} --data {data} --evaluator {nope} --out {out}/e --proportion 1.5", "--proportion 1.5"),
    ("feedback --run {run2} --data {data} --evaluator {nope} --out {out}/e --eta 90 --delta 10",
     "rank window [90%, 10%) is invalid"),
    ("feedback --run {run2} --data {data} --evaluator {nope} --out {out}/e --per-emotion 1000000000",
     "--per-emotion 1000000000 is invalid"),
    ("feedback --run {run2} --data {data} --evaluator {nope} --out {out}/e --generate-batch-size 0",
     "--generate-batch-size 0 is invalid"),
    ("feedback --run {run2} --data {data} --evaluator {nope} --out {out}/e --seed -5", "--seed -5 is invalid"),
    ("synth {out}/f --num-images 0", "--num-images 0 is too small"),
    ("synth {out}/f --num-images 1000000000", "--num-images 1000000000 is too large"),
    ("synth {out}/f --size 100000", "--size 100000 is out of range"),
    ("synth {out}/f --label-noise 2", "--label-noise 2.0 is out of range"),
    ("synth {out}/f --seed -1", "--seed -1 is invalid"),
    ("pretrain-base {out}/g --data {data} --steps-scale 0", "--steps-scale 0.0 is invalid"),
    ("pretrain-base {out}/g --data {data} --steps-scale nan", "--steps-scale nan is invalid"),
    ("pretrain-base {out}/g --data {data} --steps-scale inf", "--steps-scale inf is invalid"),
    ("pretrain-base {out}/g --data {data} --clip-steps 0", "--clip-steps 0 is invalid"),
    ("demo --out {out}/h --seed -1", "--seed -1 is invalid"),
    ("no-such-command", "invalid choice: 'no-such-command'"),
])
def test_a_bad_option_value(paths, tmp_path, capsys, template, needle):
    expect_error(template, needle, {**paths, "out": tmp_path / "out"}, capsys)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_usage_error_is_answered_before_any_heavy_import():
    # a mistyped option is answered at once: building the parser imports no torch, numpy or PIL
    import subprocess
    import sys

    probe = ("import sys\nfrom uniemo.cli import main\ntry:\n    main(['train', 'understand', '--dataset', 'x'])\n"
             "except SystemExit as e:\n    print(e.code, sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "invalid choice: 'x'" in out.stderr and out.stdout == "2 []\n"


# --------------------------------------------------------------- parsers, property-based

ANNOTATION_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.one_of(ANNOTATION_VALUES, st.dictionaries(
    st.sampled_from(["scene", "object", "brightness", "colorfulness", "facial_expression", "x"]), ANNOTATION_VALUES,
    max_size=4)))
def test_any_annotation_json_gives_attributes_or_none(tmp_path_factory, value):
    from uniemo.data import _read_annotation
    from uniemo.vocab import normalise_attribute

    path = tmp_path_factory.mktemp("annotation") / "a.json"
    path.write_text(json.dumps(value))
    try:
        attributes, issues = _read_annotation(path)
    except UniEmoError as e:
        assert not isinstance(value, dict) and "expected a JSON object" in str(e)
        return
    assert isinstance(value, dict)
    scene, obj = attributes.get("scene"), attributes.get("object")
    given_scene, objects = value.get("scene"), value.get("object")
    assert scene == (normalise_attribute(given_scene) if isinstance(given_scene, str) and given_scene else None)
    valid_objects = isinstance(objects, list) and all(isinstance(o, str) for o in objects)
    assert obj == (normalise_attribute(objects[-1]) if valid_objects and objects and objects[-1] else None)
    assert ("object of wrong type" in issues) == (objects is not None and not valid_objects)
    for name in ("brightness", "colorfulness"):
        level = value.get(name)
        valid = isinstance(level, (int, float)) and not isinstance(level, bool) and 0 <= level <= 1
        assert attributes[name] == (float(level) if valid else None)
        assert (f"{name} not in [0, 1]" in issues) == (level is not None and not valid)
    assert ("scene of wrong type" in issues) == (given_scene is not None and not isinstance(given_scene, str))


MIX_TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.tuples(st.sampled_from([*EMOTIONS, "Awe ", "joy", ""]),
                       st.sampled_from(["=", ":", ""]),
                       st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                                 st.integers(-3, 10**6).map(str), st.sampled_from(["", "x", "1e400"]))),
             min_size=1, max_size=4).map(lambda parts: ",".join(f"{n}{s}{w}" for n, s, w in parts)))


@settings(max_examples=300, deadline=None)
@given(MIX_TEXT)
def test_any_mix_text_gives_weights_summing_to_one_or_a_one_line_error(text):
    from uniemo.pipeline import normalise_weights, parse_mix

    try:
        weights = normalise_weights(parse_mix(text, EMOTIONS), EMOTIONS)
    except UniEmoError as e:
        assert "\n" not in str(e)
        return
    assert weights and set(weights) <= set(EMOTIONS)
    assert all(w >= 0 for w in weights.values())
    assert sum(weights.values()) == pytest.approx(1.0)


def test_an_empty_split_is_one_line_not_a_crash(paths, tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    shutil.copy(paths["data"] / "info.json", root / "info.json")
    (root / "train.json").write_text("[]")
    for template in ("data check {data}", "train evaluator --clip {clip} --data {data} --out {out}/e"):
        expect_error(template, f"no usable images in {root} (train)", {**paths, "data": root, "out": tmp_path}, capsys)


def test_a_path_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    code, line = run_cli(["synth", str(tmp_path / "afile" / "world"), "--num-images", "24"], capsys)
    assert code == 2 and str(tmp_path / "afile") in line and "choose another path" in line, line


def test_a_reader_that_went_away_ends_the_command_quietly(monkeypatch, capsys):
    import os
    import sys

    import uniemo.commands.synth as synth

    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(synth, "run", lambda args: print("x" * 100_000))  # more than a pipe holds
    with os.fdopen(write, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["synth", "anywhere"]) == 1
        monkeypatch.undo()
    assert capsys.readouterr().err == ""
