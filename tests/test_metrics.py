"""Metrics on crafted inputs whose answers are known (SPEC §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uniemo import metrics


def test_accuracy_helpers_on_a_known_confusion():
    labels = [0, 0, 1, 1, 2, 2, 4, 7]
    preds = [0, 1, 1, 1, 2, 0, 5, 3]
    assert metrics.top1_accuracy(preds, labels) == pytest.approx(4 / 8)
    cm = metrics.confusion_matrix(preds, labels, 8)
    assert cm[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert cm[2, 0] == 1 and cm[4, 5] == 1 and cm[7, 3] == 1 and cm.sum() == 8
    per_class = metrics.per_class_accuracy(preds, labels, 8)
    assert per_class[:3] == [0.5, 1.0, 0.5] and per_class[3] is None and per_class[4] == 0.0
    # binary: 7 -> 3 crosses negative -> positive; every other prediction stays on its side.
    assert metrics.binary_accuracy(preds, labels) == pytest.approx(7 / 8)


def test_accuracy_takes_logits():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 1.0]])
    assert metrics.top1_accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)
    report = metrics.accuracy_report(logits, [1, 0, 0], ("a", "b"))
    assert report["per_class"] == {"a": 0.5, "b": 1.0} and "binary" not in report


def _images(n, seed, size=32):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    feats = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(feats, feats.clone()) == pytest.approx(0.0, abs=1e-6)
    # A pure mean shift of 3 in every one of 8 dimensions adds |mu1 - mu2|^2 = 72.
    assert metrics.frechet_distance(feats, feats + 3.0) == pytest.approx(72.0, rel=1e-4)
    assert torch.isnan(torch.tensor(metrics.frechet_distance(feats[:1], feats)))


def test_fid_by_emotion_compares_only_the_same_emotion():
    real = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    labels = [0] * 20 + [1] * 20
    fake = real.clone()
    fake[20:] += 2.0  # emotion 1 generated off by 2 in each of 4 dims -> 16
    pooled, per = metrics.fid_by_emotion(real, labels, fake, labels, [0, 1])
    assert per[0] == pytest.approx(0.0, abs=1e-6) and per[1] == pytest.approx(16.0, rel=1e-4)
    assert pooled > 0


def test_sample_pairs_stay_within_one_emotion_and_the_pool_resets():
    labels = [0] * 6 + [1] * 6 + [2] * 2
    pairs = metrics.sample_pairs(labels, num_pairs=10, seed=3)
    assert set(pairs) == {0, 1, 2}
    for emotion, chosen in pairs.items():
        assert all(labels[i] == emotion and labels[j] == emotion and i != j for i, j in chosen)
        assert len(set(chosen)) == len(chosen)
    assert len(pairs[0]) == len(pairs[1]) == 10 and pairs[2] == [(12, 13)]  # 2 images: the only pair
    # Each emotion's draw is independent of the others (no shared, never-reset pool).
    alone = metrics.sample_pairs([1] * 6, num_pairs=10, seed=3)[1]
    assert [(i + 6, j + 6) for i, j in alone] == pairs[1]
    assert metrics.sample_pairs(labels, 10, seed=3) == pairs and metrics.sample_pairs(labels, 10, seed=4) != pairs


def test_semantic_diversity_and_clarity_on_known_values():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.semantic_diversity(feats, [(0, 1)]) == 0.0
    assert metrics.semantic_diversity(feats, [(0, 1), (0, 2)]) == pytest.approx((0.0 + 1.0) / 2)
    scenes = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    objects = torch.tensor([[0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    assert metrics.semantic_clarity([scenes, objects]).tolist() == pytest.approx([0.7, 0.9])
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert metrics.target_probability(probs, [1, 1]).tolist() == pytest.approx([0.9, 0.2])


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    import torchvision
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("alexnet") / "alexnet.safetensors"
    torch.manual_seed(0)
    save_file(torchvision.models.alexnet(weights=None).state_dict(), str(path))
    return path


def test_lpips_is_zero_on_identical_pairs_and_positive_on_different_images(alexnet_file):
    lp = metrics.LpipsDistance(alexnet_file)
    a, b = _images(2, seed=0), _images(2, seed=1)
    assert lp(a, a).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert (lp(a, b) > 0).all()
    assert "alexnet" in lp.name and str(alexnet_file) in lp.name


def test_lpips_rejects_a_file_that_is_not_alexnet(tmp_path):
    from safetensors.torch import save_file

    from uniemo.errors import UniEmoError

    save_file({"features.0.weight": torch.zeros(2, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UniEmoError, match="not a torchvision AlexNet"):
        metrics.LpipsDistance(tmp_path / "x.safetensors")


@pytest.mark.e2e
def test_inception_path_gives_zero_fid_on_identical_sets(tmp_path):
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    # A randomly initialised network of the real architecture, saved like the released .pth.
    with mock.patch.object(fe, "load_state_dict_from_url", return_value=None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict"):
        torch.manual_seed(0)
        random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_net.state_dict(), tmp_path / "inception.pth")
    encoder = metrics.InceptionEncoder(tmp_path / "inception.pth", device=torch.device("cpu"))
    images = _images(3, seed=2)
    feats = encoder(images)
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all()
    assert metrics.frechet_distance(feats, encoder(images)) == pytest.approx(0.0, abs=1e-3)


def test_reference_features_are_cached_by_the_images_bytes(tiny_emoset, tmp_path, monkeypatch):
    import shutil

    from PIL import Image

    from uniemo.data import open_dataset

    class Net:
        name, calls = "counting", 0

        def __call__(self, images):
            Net.calls += 1
            return torch.stack([torch.tensor(np.asarray(im, dtype=np.float32).mean((0, 1))) for im in images])

    monkeypatch.setenv("UNIEMO_CACHE", str(tmp_path / "cache"))
    copy = shutil.copytree(tiny_emoset, tmp_path / "copy")
    first = metrics.reference_features(Net(), open_dataset(tiny_emoset, "emoset", "test"))
    calls = Net.calls
    again = metrics.reference_features(Net(), open_dataset(copy, "emoset", "test"))  # other paths, times
    assert Net.calls == calls and torch.equal(again, first)
    changed = open_dataset(copy, "emoset", "test")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(changed.items[0].path, format="JPEG")
    fresh = metrics.reference_features(Net(), changed)
    assert Net.calls > calls and not torch.equal(fresh[0], first[0]) and torch.equal(fresh[1:], first[1:])


def test_read_state_dict_unwraps_places365_checkpoints_and_rejects_pickled_code(tmp_path):
    from uniemo.errors import UniEmoError

    torch.save({"epoch": 1, "state_dict": {"module.fc.weight": torch.ones(2, 2)}}, tmp_path / "places.pth.tar")
    assert list(metrics.read_state_dict(tmp_path / "places.pth.tar", "Places365")) == ["fc.weight"]
    torch.save({"fc.weight": torch.ones(1), "hook": print}, tmp_path / "evil.pth")  # would run code on load
    with pytest.raises(UniEmoError, match="cannot read"):
        metrics.read_state_dict(tmp_path / "evil.pth", "ImageNet")
    with pytest.raises(UniEmoError, match="no ImageNet weight file"):
        metrics.read_state_dict(tmp_path / "missing.pth", "ImageNet")


def test_resnet_classifier_returns_probabilities(tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None, num_classes=365).state_dict(), tmp_path / "places.pth")
    clf = metrics.ResNetClassifier(tmp_path / "places.pth", "places365", device=torch.device("cpu"))
    probs = clf(_images(2, seed=0, size=64))
    assert probs.shape == (2, 365) and probs.sum(-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


@pytest.mark.e2e
def test_evaluate_generation_cli_end_to_end(tmp_path, tiny_models, tiny_emoset, alexnet_file):
    """Generated images that ARE the real training images of two emotions: CLIP-feature FID of
    each emotion is 0; LPIPS runs on random AlexNet; the report names every network."""
    import json

    from uniemo.cli import main
    from uniemo.data import load_rgb, open_dataset

    clip_dir, _ = tiny_models
    real = open_dataset(tiny_emoset, split="train")
    fake = tmp_path / "generated"
    for item in real.items:
        emotion = real.class_names[item.label]
        if emotion in ("awe", "fear"):
            (fake / emotion).mkdir(parents=True, exist_ok=True)
            load_rgb(item.path).save(fake / emotion / f"{item.path.stem}.png")
    out = tmp_path / "report.json"
    code = main(["evaluate", "generation", "--images", str(fake), "--real", str(tiny_emoset), "--clip", str(clip_dir),
                 "--lpips-alex", str(alexnet_file), "--inception", "none", "--pairs", "3", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["emotions"] == ["awe", "fear"]
    assert report["counts"]["generated"] == report["counts"]["real"]
    assert m["fid"]["per_emotion"]["awe"] == pytest.approx(0.0, abs=1e-3)
    assert m["fid"]["per_emotion"]["fear"] == pytest.approx(0.0, abs=1e-3)
    assert m["fid"]["network"].startswith("clip image features") and str(clip_dir) in m["fid"]["network"]
    assert m["lpips"]["all"] > 0 and "alexnet" in m["lpips"]["network"] and m["lpips"]["pairs_per_emotion"] == 3
    assert "clip zero-shot" in m["sem_c"]["network"] and 0 < m["sem_c"]["all"] <= 1
    assert m["sem_d"]["all"] > 0
    assert m["emo_a"]["all"] is None and "--evaluator" in m["emo_a"]["note"]
    table = out.with_suffix(".md").read_text()
    assert "| awe |" in table and "| **all** |" in table and "clip zero-shot" in table


@pytest.mark.e2e
def test_sem_d_is_emogens_mean_squared_difference_of_unnormalised_clip_features(tiny_models, tiny_emoset):
    from uniemo.data import open_dataset
    from uniemo.loading import load_clip

    encoder = metrics.ClipImageEncoder(load_clip(tiny_models[0]), device=torch.device("cpu"))
    real = open_dataset(tiny_emoset, split="train")
    generated = [metrics.Generated(item.path, item.label) for item in real.items if item.label in (1, 6)]
    report = metrics.evaluate_generation(generated, real, real.class_names, clip=encoder, pairs=4, seed=3,
                                         inception=None)
    raw = encoder.raw([metrics.open_image(g.path) for g in generated])
    pairs = metrics.sample_pairs([g.label for g in generated], 4, seed=3)
    expected = {real.class_names[e]: ((raw[[i for i, _ in p]] - raw[[j for _, j in p]]) ** 2).mean().item()
                for e, p in pairs.items()}
    assert report["metrics"]["sem_d"]["per_emotion"] == pytest.approx(expected, rel=1e-5)
    assert "unnormalised" in report["metrics"]["sem_d"]["network"]
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(raw)), atol=0.1)  # so normalising would differ


def test_zero_shot_sem_c_reuses_features_only_of_its_own_clip(tiny_models, tiny_emoset):
    from uniemo.data import open_dataset
    from uniemo.loading import load_clip

    own, other = (metrics.ClipImageEncoder(load_clip(tiny_models[0]), device=torch.device("cpu")) for _ in range(2))
    real = open_dataset(tiny_emoset, split="train")
    images = [metrics.open_image(item.path) for item in real.items[:6]]
    classifier = metrics.ClipZeroShot(own, real.scene_vocab, "scene")
    foreign = torch.nn.functional.normalize(torch.randn(len(images), other.model.config.projection_dim), dim=-1)
    expected = metrics.semantic_clarity([classifier(images)])
    scores = metrics.semantic_scores([classifier], images.__getitem__, len(images), foreign, other)
    assert torch.allclose(scores, expected)  # another CLIP's features: the classifier encodes the images itself
    reused = metrics.semantic_scores([classifier], images.__getitem__, len(images), foreign, own)
    assert not torch.allclose(reused, expected)  # its own CLIP's (here made up): taken as they are


@pytest.mark.parametrize("folder", ["happiness", "mix_happiness-1", "mix_awe"])
def test_evaluate_generation_rejects_a_folder_that_is_no_emotion_nor_mix(tmp_path, tiny_emoset, capsys, folder):
    from uniemo.cli import main

    (tmp_path / "gen" / folder).mkdir(parents=True)
    assert main(["evaluate", "generation", "--images", str(tmp_path / "gen"), "--real", str(tiny_emoset)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and folder in err and "mix_<emotion>-<weight>" in err and err.count("\n") == 1


def test_generated_images_are_read_per_emotion_without_the_contact_sheet(tmp_path):
    from PIL import Image

    for emotion, count in (("awe", 2), ("fear", 3)):
        (tmp_path / emotion).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / emotion / f"{i:04d}.png")
        Image.new("RGB", (16, 16)).save(tmp_path / emotion / metrics.GRID_FILE)
    found = metrics.read_generated(tmp_path, ("amusement", "awe", "fear"))
    assert [(g.path.name, g.label, g.mix, g.object) for g in found] == [
        ("0000.png", 1, None, None), ("0001.png", 1, None, None), ("0000.png", 2, None, None),
        ("0001.png", 2, None, None), ("0002.png", 2, None, None)]


def test_mix_folder_names_round_trip_and_other_names_spell_no_mix():
    names = ("awe", "fear", "very_sad", "sad", "so-so")
    assert metrics.mix_folder({"awe": 0.7, "fear": 0.3}) == "mix_awe-0.7_fear-0.3"
    for weights in ({"awe": 0.7, "fear": 0.3}, {"very_sad": 0.5, "sad": 0.5}, {"so-so": 1.0},
                    {"awe": 0.5, "fear": 1e-05}, {"sad": 0.25, "awe": 0.25, "fear": 0.5}):
        folder = metrics.mix_folder(weights)
        assert metrics.parse_mix_folder(folder, names) == pytest.approx(weights), folder
    for other in ("awe", "mix_", "mix_awe", "mix_happy-0.5", "mix_awe-0.5_", "mix_awe-0.5__fear-0.5", "mixawe-1",
                  "mix_awe-x", "mix_awe--0.5"):
        assert metrics.parse_mix_folder(other, names) is None, other


def test_mix_folders_are_read_with_the_weights_and_objects_of_metadata(tmp_path):
    """Metadata gives the exact weights and the (normalised) object; without a record a mix
    folder's name gives the weights; a line cut short by a kill is ignored."""
    import json

    from PIL import Image

    for folder in ("awe", "mix_awe-0.667_fear-0.333", "mix_awe-0.5_fear-0.5"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "0000.png")
    records = [{"file": "awe/0000.png", "emotion": "awe", "mix": None, "object": "Stop_Sign"},
               {"file": "mix_awe-0.667_fear-0.333/0000.png", "emotion": None,
                "mix": {"awe": 0.666667, "fear": 0.333333}, "object": None}]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"file": "mix_awe-0.5_fear-0.5/0000.png", "mi'
    (tmp_path / metrics.METADATA_FILE).write_text(text)
    found = metrics.read_generated(tmp_path, ("awe", "fear"))
    assert [(g.path.parent.name, g.label, g.mix, g.object) for g in found] == [
        ("awe", 0, None, "stop sign"),
        ("mix_awe-0.5_fear-0.5", None, {"awe": 0.5, "fear": 0.5}, None),
        ("mix_awe-0.667_fear-0.333", None, {"awe": 0.666667, "fear": 0.333333}, None)]


@pytest.fixture(scope="module")
def emoset_evaluator(tmp_path_factory, tiny_models, tiny_emoset):
    """An Emo-A evaluator trained on the tiny synthetic EmoSet (its 8 emotions)."""
    from uniemo.evaluator import train_evaluator

    out = tmp_path_factory.mktemp("evaluator") / "eval"
    train_evaluator(tiny_models[0], tiny_emoset, out, epochs=10, seed=0, device=torch.device("cpu"))
    return out


def _write_generated(root, items, folder, records, **record) -> list:
    """Real dataset images copied as ``uniemo generate`` would write them into ``root/folder``,
    with one metadata record each (``record`` with the object per image if ``object`` is a
    list) when ``records`` is a list; returns the written paths."""
    from uniemo.data import load_rgb

    (root / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, item in enumerate(items):
        path = root / folder / f"{i:04d}.png"
        load_rgb(item.path).save(path)
        paths.append(path)
        if records is not None:
            fields = {k: v[i] if isinstance(v, list) else v for k, v in record.items()}
            records.append({"file": f"{folder}/{path.name}", "seed": i, **fields})
    return paths


@pytest.mark.e2e
def test_object_kept_and_mix_mass_end_to_end(tmp_path, tiny_models, tiny_emoset, emoset_evaluator):
    """Transfer: each image asks for the object CLIP's zero-shot top-1 names for it, except one
    that asks for a word no image shows: object_kept is 6/7 overall, 3/4 for awe. Fusion: the mass
    of each mix folder is the evaluator's own probability of the mix's emotions, summed and averaged."""
    import json

    from uniemo.cli import main
    from uniemo.data import open_dataset
    from uniemo.evaluator import Evaluator
    from uniemo.loading import load_clip
    from uniemo.vocab import normalise_attribute

    clip_dir, _ = tiny_models
    real = open_dataset(tiny_emoset, split="train")
    of = {name: [it for it in real.items if real.class_names[it.label] == name] for name in real.class_names}
    fake = tmp_path / "generated"
    records: list[dict] = []
    # The object each image will ask for is CLIP's top-1 over the vocabulary plus "spaceship".
    encoder = metrics.ClipImageEncoder(load_clip(clip_dir), device=torch.device("cpu"))
    vocab = list(real.object_vocab) + ["spaceship"]
    zero_shot = metrics.ClipZeroShot(encoder, vocab, "object")

    def top1(items):
        from uniemo.data import load_rgb

        return [vocab[k] for k in zero_shot([load_rgb(it.path) for it in items]).argmax(-1).tolist()]

    awe_words, fear_words = top1(of["awe"][:4]), top1(of["fear"][:3])
    assert awe_words[0] != "spaceship"  # so asking the first awe image for a spaceship is wrong
    awe_asked = ["Spaceship"] + awe_words[1:]  # normalised to "spaceship", added to the candidates
    fear_asked = [w.title().replace(" ", "_") for w in fear_words]  # e.g. "Stop_Sign": normalised back
    _write_generated(fake, of["awe"][:4], "awe", records, emotion="awe", mix=None, object=awe_asked)
    _write_generated(fake, of["fear"][:3], "fear", records, emotion="fear", mix=None, object=fear_asked)
    half = _write_generated(fake, of["awe"][4:5] + of["fear"][3:5], "mix_awe-0.5_fear-0.5", records,
                            emotion=None, mix={"awe": 0.5, "fear": 0.5}, object=None)
    unlisted = _write_generated(fake, of["anger"][:2], "mix_anger-0.7_sadness-0.3", None)
    (fake / metrics.METADATA_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))

    out = tmp_path / "report.json"
    assert main(["evaluate", "generation", "--images", str(fake), "--real", str(tiny_emoset), "--clip", str(clip_dir),
                 "--evaluator", str(emoset_evaluator), "--pairs", "2", "--inception", "none", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["emotions"] == ["awe", "fear"]
    assert report["mixes"] == ["mix_anger-0.7_sadness-0.3", "mix_awe-0.5_fear-0.5"]
    assert report["counts"]["generated"] == {"awe": 4, "fear": 3, "mix_anger-0.7_sadness-0.3": 2,
                                             "mix_awe-0.5_fear-0.5": 3}

    kept = m["object_kept"]
    assert "clip zero-shot over" in kept["network"] and str(clip_dir) in kept["network"]
    assert kept["all"] == pytest.approx(6 / 7) and kept["images"] == 7
    assert kept["per_emotion"] == pytest.approx({"awe": 3 / 4, "fear": 1.0})
    words = [normalise_attribute(w) for w in awe_asked + fear_asked]
    hits = [0.0] + [1.0] * 6
    assert kept["per_object"] == pytest.approx(
        {w: sum(h for x, h in zip(words, hits) if x == w) / words.count(w) for w in dict.fromkeys(words)})
    assert kept["per_object"]["spaceship"] == 0.0

    evaluator = Evaluator.from_pretrained(emoset_evaluator, device=torch.device("cpu"))
    names = list(evaluator.class_names)
    mass = m["mix_mass"]
    assert mass["network"] == evaluator.name
    for folder, paths, weights in (("mix_awe-0.5_fear-0.5", half, {"awe": 0.5, "fear": 0.5}),
                                   ("mix_anger-0.7_sadness-0.3", unlisted, {"anger": 0.7, "sadness": 0.3})):
        probs = evaluator.predict_proba([metrics.open_image(p) for p in paths])
        entry = mass["per_mix"][folder]
        assert entry["weights"] == pytest.approx(weights) and entry["images"] == len(paths)
        assert entry["mean_probability"] == pytest.approx(  # every emotion, not only the mix's
            {n: probs[:, k].mean().item() for k, n in enumerate(names)}, abs=1e-5)
        assert entry["mass"] == pytest.approx(sum(probs[:, names.index(n)] for n in weights).mean().item(), abs=1e-5)
    assert mass["all"] == pytest.approx((mass["per_mix"]["mix_awe-0.5_fear-0.5"]["mass"]
                                         + mass["per_mix"]["mix_anger-0.7_sadness-0.3"]["mass"]) / 2)
    # The emotion folders are measured as before, the mixes left out of them.
    assert m["emo_a"]["network"] == evaluator.name and set(m["emo_a"]["per_emotion"]) == {"awe", "fear"}
    assert set(m["fid"]["per_emotion"]) == {"awe", "fear"} and report["counts"]["real"] == {
        "awe": len(of["awe"]), "fear": len(of["fear"])}

    table = out.with_suffix(".md").read_text()
    assert "Obj-K ↑" in table and "Mix-M ↑" in table and "| mix_awe-0.5_fear-0.5 | 3 |" in table
    assert "| awe | 4 |" in table and "75.00%" in table and "spaceship 0.00%" in table
    assert "mix_anger-0.7_sadness-0.3 (2 images): weights anger 0.7, sadness 0.3" in table


@pytest.mark.e2e
def test_mix_folders_alone_with_an_evaluator_give_mix_mass_and_mark_the_rest_not_applicable(
        tmp_path, tiny_emoset, emoset_evaluator):
    import json

    from uniemo.cli import main
    from uniemo.data import open_dataset

    real = open_dataset(tiny_emoset, split="train")
    _write_generated(tmp_path / "gen", real.items[:2], "mix_awe-0.5_fear-0.5", None)
    out = tmp_path / "report.json"
    assert main(["evaluate", "generation", "--images", str(tmp_path / "gen"), "--real", str(tiny_emoset),
                 "--evaluator", str(emoset_evaluator), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["emotions"] == [] and report["mixes"] == ["mix_awe-0.5_fear-0.5"]
    assert 0 < m["mix_mass"]["all"] <= 1 and m["mix_mass"]["per_mix"]["mix_awe-0.5_fear-0.5"]["images"] == 2
    for key in ("fid", "lpips", "emo_a", "sem_c", "sem_d", "object_kept"):
        assert m[key]["all"] is None and m[key]["note"].startswith("not applicable"), key
    assert "only mixes" in m["fid"]["note"] and "object" in m["object_kept"]["note"]
    table = out.with_suffix(".md").read_text()
    assert "\n| emotion | n | Mix-M ↑ |\n" in table and "| **all** | 2 |" in table
    assert "- FID: not applicable" in table


def test_object_kept_and_mix_mass_without_their_networks_are_not_computed(tmp_path, tiny_emoset):
    import json

    from uniemo.cli import main
    from uniemo.data import open_dataset

    real = open_dataset(tiny_emoset, split="train")
    records: list[dict] = []
    _write_generated(tmp_path / "gen", real.items[:2], "mix_awe-1", records, mix={"awe": 1.0}, object="house")
    (tmp_path / "gen" / metrics.METADATA_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "report.json"
    assert main(["evaluate", "generation", "--images", str(tmp_path / "gen"), "--real", str(tiny_emoset),
                 "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["object_kept"] == {"network": None, "all": None, "per_emotion": {}, "per_object": {},
                                "note": metrics.NOT_GIVEN["object_kept"]}
    assert m["mix_mass"] == {"network": None, "all": None, "per_mix": {}, "note": metrics.NOT_GIVEN["mix_mass"]}
    assert "--clip" in m["object_kept"]["note"] and "--evaluator" in m["mix_mass"]["note"]
    assert "\n| emotion | n | Obj-K ↑ | Mix-M ↑ |\n" in out.with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def clip_encoder(tiny_models):
    from uniemo.loading import load_clip

    return metrics.ClipImageEncoder(load_clip(tiny_models[0]), torch.device("cpu"))


CLASSES = ("amusement", "awe", "fear")


def test_object_kept_by_hand(clip_encoder, tmp_path):
    """Features made equal (up to scale) to the text embedding of a chosen word are read as that
    word: four images ask for house, house, tree and a word outside the vocabulary, and show
    house, tree, tree and that word: 3 of 4 kept; amusement ½, awe 1, the mix 1."""
    from uniemo.metrics import Generated, GeneratedSet, object_kept

    vocab = ["House", "Tree", "Cake"]
    names = ["house", "tree", "cake", "balloon"]
    text = metrics.ClipZeroShot(clip_encoder, names, "object").text
    shown = [0, 1, 1, 3]
    images = [Generated(tmp_path / "amusement" / "0.png", 0, object="house"),
              Generated(tmp_path / "amusement" / "1.png", 0, object="house"),
              Generated(tmp_path / "awe" / "0.png", 1, object="tree"),
              Generated(tmp_path / "mix_awe-0.5_fear-0.5" / "0.png", None, mix={"awe": 0.5, "fear": 0.5}, object="balloon")]
    kept = object_kept(GeneratedSet(images, clip_raw=torch.tensor([3.0, 0.5, 2.0, 1.0])[:, None] * text[shown]),
                       clip_encoder, vocab, CLASSES)
    assert kept["all"] == 0.75 and kept["images"] == 4
    assert kept["per_emotion"] == {"amusement": 0.5, "awe": 1.0, "mix_awe-0.5_fear-0.5": 1.0}
    assert kept["per_object"] == {"house": 0.5, "tree": 1.0, "balloon": 1.0}
    assert kept["network"] == f"clip zero-shot over 4 object names ({clip_encoder.clip.path})"


def test_edit_fidelity_by_hand(clip_encoder, tmp_path):
    """Three edits, read in batches of two: the first shows its source's own features (kept,
    distance 0), the second another object's text embedding (not kept, 1 − cos by hand), the
    third the text embedding of its source's top-1 object (kept)."""
    from PIL import Image

    from uniemo.metrics import Generated, GeneratedSet, edit_fidelity

    vocab = ["House", "Tree", "Cake", "Fish"]
    classifier = metrics.ClipZeroShot(clip_encoder, ["house", "tree", "cake", "fish"], "object")
    sources = []
    for i, rgb in enumerate([(250, 30, 30), (30, 250, 30), (30, 30, 250)]):
        sources.append(tmp_path / f"source{i}.png")
        Image.new("RGB", (32, 32), rgb).save(sources[-1])
    source = clip_encoder([Image.open(p) for p in sources])
    top1 = classifier.probs_from_features(source).argmax(-1).tolist()
    other = (top1[1] + 1) % 4
    edits = torch.stack([2 * source[0], classifier.text[other], 0.5 * classifier.text[top1[2]]])
    images = [Generated(tmp_path / "awe" / "0.png", 1, source=sources[0]),
              Generated(tmp_path / "awe" / "1.png", 1, source=sources[1]),
              Generated(tmp_path / "fear" / "0.png", 2, source=sources[2])]
    result = edit_fidelity(GeneratedSet(images, clip_raw=edits), clip_encoder, vocab, CLASSES, batch_size=2)
    kept, distance = result["edit_kept"], result["edit_distance"]
    assert kept["all"] == pytest.approx(2 / 3) and kept["per_emotion"] == {"awe": 0.5, "fear": 1.0}
    assert kept["images"] == 3 and distance["images"] == 3
    d = [0.0, 1 - float(classifier.text[other] @ source[1]), 1 - float(classifier.text[top1[2]] @ source[2])]
    assert distance["per_emotion"]["awe"] == pytest.approx((d[0] + d[1]) / 2, abs=1e-5)
    assert distance["per_emotion"]["fear"] == pytest.approx(d[2], abs=1e-5)
    assert distance["all"] == pytest.approx(sum(d) / 3, abs=1e-5) and d[1] > 0.01
    assert kept["network"] == f"clip zero-shot over 4 object names ({clip_encoder.clip.path})"
    assert distance["network"] == clip_encoder.name
    assert kept["reference"] == {"annotated object": 0, "object clip names in the source": 3}
    # a source's annotation, where there is one, is the object to keep: the second edit shows the
    # object annotated in its source (not the one CLIP names there), so it now counts as kept
    annotated = {str(sources[0].resolve()): vocab[top1[0]], str(sources[1].resolve()): vocab[other]}
    kept = edit_fidelity(GeneratedSet(images, clip_raw=edits), clip_encoder, vocab, CLASSES, batch_size=2,
                         source_objects=annotated)["edit_kept"]
    assert kept["per_emotion"] == {"awe": 1.0, "fear": 1.0} and kept["all"] == 1.0
    assert kept["reference"] == {"annotated object": 2, "object clip names in the source": 1}


def test_edit_fidelity_reads_each_source_once_and_names_one_that_is_gone(clip_encoder, tmp_path, monkeypatch):
    from PIL import Image

    from uniemo.errors import UniEmoError
    from uniemo.metrics import Generated, GeneratedSet, edit_fidelity

    source = tmp_path / "street.png"
    Image.new("RGB", (32, 32), (200, 100, 0)).save(source)
    images = [Generated(tmp_path / "awe" / "0.png", 1, source=source), Generated(tmp_path / "fear" / "0.png", 2,
                                                                                 source=source)]
    edits = torch.randn(2, clip_encoder.model.config.projection_dim)
    opened, open_image = [], metrics.open_image
    monkeypatch.setattr(metrics, "open_image", lambda path, *how: opened.append(path) or open_image(path, *how))
    edit_fidelity(GeneratedSet(images, clip_raw=edits), clip_encoder, ["House", "Tree"], CLASSES)
    assert opened == [str(source)]  # two edits, one source read
    source.unlink()
    with pytest.raises(UniEmoError, match="cannot read the edit source .*street.png.*restore it"):
        edit_fidelity(GeneratedSet(images, clip_raw=edits), clip_encoder, ["House", "Tree"], CLASSES)
