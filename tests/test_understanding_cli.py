"""`uniemo train understand`, `uniemo evaluate understanding`, `uniemo classify` end to end."""

from __future__ import annotations

import json

import pytest

from uniemo.cli import main


@pytest.fixture(scope="module")
def run1(tiny_models, tiny_emoset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "stage1"
    code = main(["train", "understand", "--data", str(tiny_emoset), "--clip", str(tiny_models[0]), "--out", str(out),
                 "--preset", "tiny", "--epochs", "2", "--batch-size", "32", "--seed", "1"])
    assert code == 0
    return out


def test_train_writes_a_complete_run(run1, tiny_models):
    for name in ("config.yaml", "model.safetensors", "vision_config.json", "understanding.json", "attributes.json",
                 "attributes.safetensors", "preprocessor_config.json", "metrics.jsonl", "eval.json",
                 "checkpoints/last/trainer.json", "checkpoints/last/optimizer.safetensors"):
        assert (run1 / name).is_file(), name
    assert str(tiny_models[0].resolve()) in (run1 / "config.yaml").read_text()
    lines = [json.loads(x) for x in (run1 / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and all("val_top1" in x for x in lines)
    assert set(json.loads((run1 / "eval.json").read_text())) == {"val", "test"}


def test_training_again_into_the_run_needs_resume(run1, tiny_models, tiny_emoset, capsys):
    code = main(["train", "understand", "--data", str(tiny_emoset), "--clip", str(tiny_models[0]),
                 "--out", str(run1), "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--resume" in err[0]


def test_classify_json_probabilities_sum_to_one(run1, tiny_emoset, tmp_path, capsys):
    images = sorted((tiny_emoset / "image").rglob("*.jpg"))[:2]
    code = main(["classify", "--run", str(run1), *map(str, images), "--json", "--explain", str(tmp_path)])
    assert code == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(results) == 2
    for r in results:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["emotion"] == max(r["probabilities"], key=r["probabilities"].get)
        assert (tmp_path / f"{images[0].stem}_attention.png").read_bytes()[:4] == b"\x89PNG"


def test_classify_names_the_scene_and_object_the_expert_queries_read(run1, tiny_emoset, capsys):
    import torch

    from uniemo.data import clip_transforms, load_rgb
    from uniemo.understanding import UniEmoUnderstanding, load_attributes, load_image_processor

    image = sorted((tiny_emoset / "image").rglob("*.jpg"))[0]
    assert main(["classify", "--run", str(run1), str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = UniEmoUnderstanding.from_pretrained(run1)
    with torch.no_grad():
        out = model(clip_transforms(load_image_processor(run1), train=False)(load_rgb(image)).unsqueeze(0))
    for kind, bank in zip(("scene", "object"), load_attributes(run1)):
        cosines = torch.nn.functional.normalize(getattr(out, f"{kind}_embed"), dim=-1)[0] @ bank.embeds.T
        best = cosines.topk(3)
        assert list(result[kind]) == [bank.names[i] for i in best.indices]  # the 3 nearest names, best first
        assert list(result[kind].values()) == pytest.approx(best.values.tolist(), abs=1e-4)
    assert main(["classify", "--run", str(run1), str(image)]) == 0
    line = capsys.readouterr().out
    assert line.rstrip().endswith(f"scene: {next(iter(result['scene']))}  object: {next(iter(result['object']))}")


def test_classify_reads_folders_in_batches_as_it_reads_images_alone(run1, tiny_emoset, tmp_path, capsys):
    import shutil

    sources = sorted((tiny_emoset / "image").rglob("*.jpg"))[:40]  # more than one batch of 32
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sources:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image")
    assert main(["classify", "--run", str(run1), str(folder), "--json"]) == 0
    batched = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["image"] for r in batched] == [str(folder / p.name) for p in sorted(sources, key=lambda p: p.name)]
    for result in batched[::13]:
        assert main(["classify", "--run", str(run1), result["image"], "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["emotion"] == result["emotion"] and alone["object"].keys() == result["object"].keys()
        assert list(alone["probabilities"].values()) == pytest.approx(list(result["probabilities"].values()),
                                                                     abs=1e-4)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sources[0], other / sources[0].name)
    assert main(["classify", "--run", str(run1), str(folder), str(other), "--explain", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"share the name {sources[0].stem!r}, so their attention maps would overwrite each other" in err
    assert "\n" not in err and not (tmp_path / "maps").exists()


def test_evaluate_writes_json_and_png(run1, tiny_emoset, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "understanding", "--run", str(run1), "--data", str(tiny_emoset), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert 0.0 <= report["top1"] <= 1.0 and 0.0 <= report["binary"] <= 1.0
    confusion = report["confusion"]
    assert len(confusion) == 8 and sum(map(sum, confusion)) == report["num_samples"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv", [
    ["classify", "--run", "{missing}", "x.jpg"],
    ["evaluate", "understanding", "--run", "{missing}", "--data", "{missing}"],
    ["classify", "--run", "{empty}", "x.jpg"],
])
def test_bad_run_dir_is_one_line_exit_2(argv, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(missing=tmp_path / "nope", empty=tmp_path / "empty") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_unmappable_classes_are_refused(run1, tmp_path, capsys):
    from PIL import Image

    for name in ("anger", "disgust", "fear", "joy", "sadness", "surprise"):
        (tmp_path / "roi" / "test" / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), (100, 20, 20)).save(tmp_path / "roi" / "test" / name / "a.jpg")
    code = main(["evaluate", "understanding", "--run", str(run1), "--data", str(tmp_path / "roi"),
                 "--dataset", "emotionroi"])
    err = capsys.readouterr().err
    assert code == 2 and "no map" in err
