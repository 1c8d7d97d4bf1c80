"""Emotion editing (SPEC §4): ``UniEmoPipeline.edit`` (SDEdit through diffusers' img2img) and
``uniemo edit``: seeds, strength, the understanding branch's readings, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from uniemo.cli import main
from uniemo.errors import UniEmoError
from uniemo.pipeline import UniEmoPipeline
from uniemo.vocab import EMOTIONS


@pytest.fixture(scope="module")
def run2(tiny_models, tmp_path_factory):
    from test_pipeline import write_run2

    return write_run2(tiny_models, tmp_path_factory.mktemp("run2"))


@pytest.fixture(scope="module")
def pipe(run2):
    return UniEmoPipeline.from_pretrained(run2)


def photo(seed: int, size=(40, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def test_edit_is_seeded_and_strength_sets_how_far_it_moves(pipe):
    source = photo(0)
    fitted = pipe.fit(source)
    side = pipe.cfg.generation.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert min(fitted.size) == side and all(s % pipe.vae_scale_factor == 0 for s in fitted.size)
    a = pipe.edit(source, emotion="awe", strength=0.5, num_images=2, num_inference_steps=4, generator=3)
    b = pipe.edit(source, emotion="awe", strength=0.5, num_images=2, num_inference_steps=4, generator=3)
    assert all(np.array_equal(array(x), array(y)) for x, y in zip(a.images, b.images))
    assert a.images[0].size == fitted.size and [m["seed"] for m in a.metadata] == [3, 4]
    assert a.metadata[0]["strength"] == 0.5 and a.metadata[0]["emotion"] == "awe"
    # SDEdit: the strength sets how many of the schedule's steps denoise, and so how much of the
    # source survives: two sources stay apart at a low strength and nearly meet at full strength
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        gap = {s: np.abs(array(pipe.edit(source, emotion="awe", strength=s, num_inference_steps=10,
                                         generator=3).images[0]) -
                         array(pipe.edit(photo(9), emotion="awe", strength=s, num_inference_steps=10,
                                         generator=3).images[0])).mean() for s in (0.3, 1.0)}
    finally:
        hook.remove()
    assert len(calls) == 2 * (3 + 10)
    assert gap[1.0] < 0.5 * gap[0.3], gap


def test_a_list_of_images_is_one_batch_with_the_same_results(pipe):
    together = pipe.edit([photo(0), photo(1)], emotion="fear", strength=0.5, num_images=2, num_inference_steps=4,
                         generator=5)
    apart = [pipe.edit(photo(k), emotion="fear", strength=0.5, num_images=2, num_inference_steps=4, generator=5)
             for k in (0, 1)]
    assert [m["seed"] for m in together.metadata] == [5, 6, 5, 6]  # image-major; result i uses seed s + i
    for got, expected in zip(together.images, apart[0].images + apart[1].images):
        assert np.abs(array(got) - array(expected)).max() <= 2  # batched float rounding
    with pytest.raises(UniEmoError, match="one size"):
        pipe.edit([photo(0), photo(1, (32, 40))], emotion="fear")


def test_read_gives_the_understanding_branchs_probabilities(pipe):
    probs = pipe.read([photo(1), photo(2, (64, 64))])
    assert probs.shape == (2, len(pipe.class_names))
    assert np.allclose(probs.sum(-1).numpy(), 1.0, atol=1e-5)


def test_paths_are_read_as_the_datasets_read_images(pipe, tmp_path):
    from uniemo.data import load_rgb

    photo(3).save(tmp_path / "a.png")
    rgba = photo(4).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((32, 40), 128, dtype=np.uint8)))
    rgba.save(tmp_path / "b.png")
    opened = [Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")]
    assert torch.equal(pipe.read([tmp_path / "a.png", str(tmp_path / "b.png")]), pipe.read(opened))
    over_white = load_rgb(tmp_path / "b.png")  # transparency over white, as the datasets read it
    assert torch.equal(pipe.read([rgba]), pipe.read([over_white]))
    by_path = pipe.edit(tmp_path / "a.png", emotion="fear", strength=0.5, num_inference_steps=4, generator=0)
    by_image = pipe.edit(opened[0], emotion="fear", strength=0.5, num_inference_steps=4, generator=0)
    assert array(by_path.images[0]).tobytes() == array(by_image.images[0]).tobytes()
    with pytest.raises(UniEmoError, match="cannot read image .*nope.png"):
        pipe.read([tmp_path / "nope.png"])
    with pytest.raises(UniEmoError, match="an image must be a PIL image or an image file's path, not ndarray"):
        pipe.edit(np.zeros((32, 32, 3), dtype=np.uint8), emotion="fear")


def test_read_objects_names_the_bank_entry_nearest_the_object_expert(pipe, monkeypatch):
    from uniemo.understanding import AttributeBank

    images = [photo(1), photo(2)]
    pixels = torch.stack([pipe.transform(im) for im in images])
    with torch.no_grad():
        embeds = pipe.understanding(pixels).object_embed
    # a bank made of the two images' own object embeddings (and a far one): each is named its own
    bank = AttributeBank(["first", "second", "far"], torch.cat([embeds, -embeds.mean(0, keepdim=True)]))
    monkeypatch.setattr(pipe, "object_bank", bank)
    assert pipe.read_objects(images) == ["first", "second"]
    assert pipe.read_objects(images[::-1]) == ["second", "first"]
    monkeypatch.setattr(pipe.understanding.cfg, "queries", "none")
    with pytest.raises(UniEmoError, match="no object expert"):
        pipe.read_objects(images)


def test_edit_with_an_object_names_it_in_the_prompt_per_image(pipe):
    kept = pipe.edit(photo(0), emotion="fear", object="bench", strength=0.5, num_inference_steps=4, generator=5)
    plain = pipe.edit(photo(0), emotion="fear", strength=0.5, num_inference_steps=4, generator=5)
    assert kept.metadata[0]["object"] == "bench" and kept.metadata[0]["prompt"].endswith(" bench")
    assert plain.metadata[0]["object"] is None and plain.metadata[0]["prompt"] == pipe.cfg.fusion.placeholder
    assert np.abs(array(kept.images[0]) - array(plain.images[0])).max() > 2
    # one object per image, in one batch: as each image edited on its own
    together = pipe.edit([photo(0), photo(1)], emotion="fear", object=["bench", None], strength=0.5,
                         num_inference_steps=4, generator=5)
    apart = pipe.edit(photo(1), emotion="fear", strength=0.5, num_inference_steps=4, generator=5)
    for got, expected in zip(together.images, kept.images + apart.images):
        assert np.abs(array(got) - array(expected)).max() <= 2
    assert [m["object"] for m in together.metadata] == ["bench", None]
    with pytest.raises(UniEmoError, match="2 objects for 1 images"):
        pipe.edit(photo(0), emotion="fear", object=["bench", "tree"])


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, True, float("nan")])
def test_edit_refuses_a_strength_outside_0_1(pipe, strength):
    with pytest.raises(UniEmoError, match="out of range"):
        pipe.edit(photo(0), emotion="awe", strength=strength)


def test_edit_refuses_a_strength_that_denoises_no_step(pipe):
    with pytest.raises(UniEmoError, match="denoises no step"):
        pipe.edit(photo(0), emotion="awe", strength=0.05, num_inference_steps=10)


def edit(run2, out, *args):
    return main(["edit", *map(str, args), "--run", str(run2), "--steps", "4", "--out", str(out)])


def test_edit_command_records_both_readings_and_resumes(run2, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(2):
        photo(k).save(folder / f"p{k}.png")
    photo(5).save(tmp_path / "single.jpg")
    out = tmp_path / "edits"
    assert edit(run2, out, folder, tmp_path / "single.jpg", "--emotion", "fear", "-n", "2", "--seed", "7") == 0
    records = {r["file"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    assert sorted(records) == [f"fear/{s}_{i:02d}.png" for s in ("p0", "p1", "single") for i in range(2)]
    for file, r in records.items():
        assert (out / file).is_file() and r["emotion"] == "fear" and r["strength"] == 0.6
        assert r["seed"] == 7 + int(file[-6:-4]) and r["steps"] == 4
        assert {r["source_emotion"], r["result_emotion"]} <= set(EMOTIONS)
        assert 0 < r["source_probability"] <= 1 and 0 <= r["target_probability"] <= 1
        assert r["reached"] == (r["result_emotion"] == "fear")
    assert records["fear/single_00.png"]["source"] == str((tmp_path / "single.jpg").absolute())
    (out / "fear" / "p1_01.png").unlink()
    capsys.readouterr()
    assert edit(run2, out, folder, tmp_path / "single.jpg", "--emotion", "fear", "-n", "2", "--seed", "7") == 0
    assert "skipping 2 source(s)" in capsys.readouterr().out
    assert (out / "fear" / "p1_01.png").is_file()


@pytest.mark.parametrize("other, message", [(("--strength", "0.8"), "with strength 0.6 and this call asks for 0.8"),
                                            (("--invert",), "with invert False and this call asks for True"),
                                            (("--seed", "3"), "with seed 0 and this call asks for 3"),
                                            (("--object", "bench"), "with object None and this call asks for 'bench'"),
                                            (("--invert", "--keep-region", "0.3"),
                                             "with invert False and this call asks for True")])
def test_a_rerun_with_other_settings_is_refused_not_skipped(run2, tmp_path, capsys, other, message):
    """Re-running into the same --out skips what is written only if it was made the same way: an
    edit of another strength, sampler, seed or object under the same name is a one-line error."""
    photo(0).save(tmp_path / "p.png")
    out = tmp_path / "edits"
    assert edit(run2, out, tmp_path / "p.png", "--emotion", "awe") == 0
    before = (out / "metadata.jsonl").read_bytes()
    capsys.readouterr()
    assert edit(run2, out, tmp_path / "p.png", "--emotion", "awe", *other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "awe/p_00.png was made " + message in err and "another --out" in err
    assert (out / "metadata.jsonl").read_bytes() == before
    assert edit(run2, out, tmp_path / "p.png", "--emotion", "awe", "--until-target") == 0  # from 0.6: as written
    assert edit(run2, out, tmp_path / "p.png", "--emotion", "fear", *other) == 0  # another target, another file


def test_until_target_raises_the_strength_until_the_target_is_read(run2, tmp_path):
    photo(3).save(tmp_path / "a.png")
    out = tmp_path / "edits"
    assert edit(run2, out, tmp_path / "a.png", "--mix", "awe=1,sadness=1", "--strength", "0.3",
                "--until-target", "-n", "3") == 0
    for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines()):
        assert r["file"].startswith("mix_awe-0.5_sadness-0.5/")
        assert r["reached"] == (r["result_emotion"] in ("awe", "sadness"))
        assert 0.3 <= r["strength"] <= 1.0 and (r["reached"] or r["strength"] == 1.0)
        step = round((r["strength"] - 0.3) / 0.1, 6)
        assert step == int(step)  # 0.3, 0.4, ... 1.0


def test_until_target_in_python_edits_each_missed_result_again_stronger(pipe):
    sources = [photo(5), photo(6)]
    out = pipe.edit(sources, emotion="awe", strength=0.3, num_images=2, num_inference_steps=10, generator=4,
                    until_target=True)
    first = pipe.edit(sources, emotion="awe", strength=0.3, num_images=2, num_inference_steps=10, generator=4)
    reads = pipe.read(out.images).argmax(-1).tolist()
    assert [m["seed"] for m in out.metadata] == [4, 5, 4, 5]  # result k: source k // 2, seed 4 + k % 2
    for k, (meta, image) in enumerate(zip(out.metadata, out.images)):
        assert meta["reached"] == (reads[k] == EMOTIONS.index("awe"))
        assert meta["reached"] or meta["strength"] == 1.0
        if meta["strength"] == 0.3:  # read as awe at once: the plain edit's result
            assert array(image).tobytes() == array(first.images[k]).tobytes()
        else:  # again alone at the strength that made it (or 1.0), with its own seed
            again = pipe.edit(sources[k // 2], emotion="awe", strength=meta["strength"], num_inference_steps=10,
                              generator=4 + k % 2)
            assert np.abs(array(image) - array(again.images[0])).max() <= 2  # batch of one: float rounding only
    assert {m["strength"] for m in out.metadata} - {0.3} and "reached" not in first.metadata[0]


def test_keep_object_prompts_the_object_the_understanding_branch_reads(run2, pipe, tmp_path):
    for k in range(2):
        photo(k).save(tmp_path / f"p{k}.png")
    out = tmp_path / "edits"
    assert edit(run2, out, tmp_path / "p0.png", tmp_path / "p1.png", "--emotion", "awe", "--keep-object") == 0
    records = {r["file"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    named = pipe.read_objects([pipe.fit(photo(k)) for k in range(2)])
    for k, name in enumerate(named):
        r = records[f"awe/p{k}_00.png"]
        assert r["object"] == name and r["prompt"] == pipe.prompt(name)
    assert edit(run2, out, tmp_path / "p0.png", "--emotion", "fear", "--object", "bench") == 0  # one named for all
    assert json.loads((out / "metadata.jsonl").read_text().splitlines()[-1])["object"] == "bench"


@pytest.mark.parametrize("make, args, message", [
    (lambda d: (d / "x.png").write_text("not an image"), ["--emotion", "awe"], "cannot read image"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "joy"], "unknown emotion 'joy'"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--strength", "1.2"], "--strength 1.2"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--strength", "0"], "--strength 0"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--truncation", "-1"], "--truncation -1.0 is invalid"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "all"], "not an edit target"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--object", "bench!?"], "cannot be encoded"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "-n", "0"], "--num-images 0"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--object-from", "/no/such/emoset"],
     "/no/such/emoset holds none of the splits (train, val, test) of a dataset of kind 'emoset'"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--keep-region", "0.3"], "needs --invert"),
    (lambda d: photo(0).save(d / "x.png"), ["--emotion", "awe", "--invert", "--keep-region", "1.5"],
     "--keep-region 1.5 needs --invert and a number in (0, 1]"),
])
def test_edit_bad_input_exits_2_with_one_line(run2, tmp_path, capsys, make, args, message):
    make(tmp_path)
    assert edit(run2, tmp_path / "bad", tmp_path / "x.png", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "bad" / "metadata.jsonl").exists()


def test_edit_refuses_missing_paths_empty_folders_and_clashing_names(run2, tmp_path, capsys):
    assert edit(run2, tmp_path / "o", tmp_path / "nope.png", "--emotion", "awe") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert edit(run2, tmp_path / "o", tmp_path / "empty", "--emotion", "awe") == 2
    assert "holds no images" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        photo(0).save(tmp_path / d / "same.png")
    assert edit(run2, tmp_path / "o", tmp_path / "a", tmp_path / "b", "--emotion", "awe") == 2
    assert "share the name 'same'" in capsys.readouterr().err


def test_object_from_names_each_sources_annotated_object(run2, pipe, tiny_emoset, tmp_path, capsys):
    from uniemo.data import open_dataset

    items = open_dataset(tiny_emoset, split="val").items
    names = list(dict.fromkeys(i.object for i in items if i.object))[:2]
    annotated = [next(i for i in items if i.object == name) for name in names]
    photo(1).save(tmp_path / "mine.png")
    out = tmp_path / "edits"
    assert edit(run2, out, *(i.path for i in annotated), tmp_path / "mine.png", "--emotion", "awe",
                "--object-from", str(tiny_emoset)) == 0
    assert "1 of 3 source(s) have no object annotated" in capsys.readouterr().out
    records = {r["file"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    for item in annotated:
        r = records[f"awe/{item.path.stem}_00.png"]
        assert r["object"] == item.object and r["prompt"] == pipe.prompt(item.object)
    assert records["awe/mine_00.png"]["object"] is None and records["awe/mine_00.png"]["prompt"] == pipe.prompt(None)
    assert annotated[0].object != annotated[1].object


def test_edits_of_dataset_images_are_judged_against_their_annotated_object(run2, tiny_models, tiny_emoset, tmp_path):
    """`evaluate generation` compares an edit's object with its source's annotation when the
    source is an image of --real (any split), and with CLIP's reading of the source otherwise."""
    from uniemo.data import open_dataset

    test = [item for item in open_dataset(tiny_emoset, split="test").items if item.object][:2]
    photo(1).save(tmp_path / "mine.png")
    out, report = tmp_path / "edits", tmp_path / "report.json"
    assert edit(run2, out, *(item.path for item in test), tmp_path / "mine.png", "--emotion", "awe") == 0
    assert main(["evaluate", "generation", "--images", str(out), "--real", str(tiny_emoset), "--clip",
                 str(tiny_models[0]), "--inception", "none", "--out", str(report)]) == 0
    kept = json.loads(report.read_text())["metrics"]["edit_kept"]
    assert kept["images"] == 3 and kept["reference"] == {"annotated object": 2, "object clip names in the source": 1}


def test_an_inverted_edit_starts_from_the_source_not_from_random_noise(pipe, run2, tmp_path):
    """``invert``: the source is DDIM-inverted under its own condition, so even at full strength
    the edit still depends on it, where SDEdit's random noise has nearly forgotten it; results are
    seeded and batched as SDEdit's, and ``uniemo edit --invert`` records it."""
    def edit_of(source, strength, invert, seed=3):
        return array(pipe.edit(source, emotion="awe", strength=strength, num_inference_steps=10, generator=seed,
                               invert=invert).images[0])

    gap = {invert: np.abs(edit_of(photo(0), 1.0, invert) - edit_of(photo(9), 1.0, invert)).mean()
           for invert in (False, True)}
    assert gap[True] > 3 * gap[False], gap
    assert np.array_equal(edit_of(photo(0), 0.6, True), edit_of(photo(0), 0.6, True))
    both = pipe.edit([photo(0), photo(9)], emotion="awe", strength=0.6, num_images=2, num_inference_steps=10,
                     generator=3, invert=True)
    assert np.abs(array(both.images[2]) - edit_of(photo(9), 0.6, True)).max() <= 2  # image-major, as SDEdit's
    assert [m["invert"] for m in both.metadata] == [True] * 4
    other = UniEmoPipeline.from_pretrained(run2, scheduler="EulerDiscreteScheduler")  # inverted edits sample with DDIM
    assert other.edit(photo(0), emotion="awe", num_inference_steps=4, invert=True).metadata[0]["scheduler"] == \
        "DDIMScheduler"
    assert other.edit(photo(0), emotion="awe", num_inference_steps=4).metadata[0]["scheduler"] == \
        "EulerDiscreteScheduler"
    photo(0).save(tmp_path / "p.png")
    assert edit(run2, tmp_path / "edits", tmp_path / "p.png", "--emotion", "awe", "--invert", "--keep-object") == 0
    record = json.loads((tmp_path / "edits" / "metadata.jsonl").read_text())
    assert record["invert"] is True and record["prompt"] == pipe.prompt(record["object"])


def test_keep_region_keeps_where_the_object_queries_look(pipe, run2, tmp_path):
    """``keep_region``: DiffEdit's mask is 0 (kept, following the inversion) where the object
    queries' attention is at least that share of its maximum; at a tiny share it keeps the whole
    photo, so the result follows the inversion alone and no longer depends on the target."""
    sources = [pipe.fit(photo(0)), pipe.fit(photo(9))]
    maps = pipe._understand(sources, output_attentions=True).attentions["object"]
    mask = pipe.redrawn_region(sources, 0.3, (8, 8))
    assert mask.shape == (2, 1, 8, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (pipe.redrawn_region(sources, 0.9, (8, 8)) >= mask).all()  # a higher share keeps less
    peak = maps[0].flatten().argmax()
    assert pipe.redrawn_region(sources[:1], 1.0, maps.shape[-2:])[0, 0].flatten()[peak] == 0  # the maximum is kept
    assert pipe.redrawn_region(sources, 1e-9, (8, 8)).sum() == 0

    def toward(emotion, **keep):
        return pipe.edit(photo(0), emotion=emotion, strength=1.0, num_inference_steps=10, generator=3, invert=True,
                         **keep)

    free = np.abs(array(toward("fear").images[0]) - array(toward("awe").images[0])).mean()
    kept = toward("fear", keep_region=1e-9)
    assert free > 1 and np.abs(array(kept.images[0]) - array(toward("awe", keep_region=1e-9).images[0])).max() <= 1
    assert toward("fear").metadata[0]["keep_region"] is None and kept.metadata[0]["keep_region"] == 1e-9
    with pytest.raises(UniEmoError, match="needs invert"):
        pipe.edit(photo(0), emotion="fear", keep_region=0.3)
    with pytest.raises(UniEmoError, match="out of range"):
        pipe.edit(photo(0), emotion="fear", invert=True, keep_region=0)
    photo(0).save(tmp_path / "p.png")
    assert edit(run2, tmp_path / "edits", tmp_path / "p.png", "--emotion", "awe", "--invert", "--keep-region",
                "0.3") == 0
    assert json.loads((tmp_path / "edits" / "metadata.jsonl").read_text())["keep_region"] == 0.3


def test_keep_region_needs_the_object_queries(pipe, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(pipe, "_understand", lambda images, output_attentions=False: SimpleNamespace(attentions=None))
    with pytest.raises(UniEmoError, match=r"no queries \(queries: none\): edit without it"):
        pipe.redrawn_region([pipe.fit(photo(0))], 0.3, (8, 8))
