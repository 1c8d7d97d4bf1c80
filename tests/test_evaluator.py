"""The Emo-A evaluator: a probe on frozen CLIP features, trained, saved, reloaded, and Emo-A
on crafted generated sets whose answer is known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from PIL import Image

from uniemo import metrics
from uniemo.evaluator import EmotionProbe, Evaluator, EvaluatorConfig, fit_probe, train_evaluator

COLOURS = {"amusement": (230, 40, 40), "anger": (40, 40, 230)}


def _write_colour_images(root, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = torch.randint(-25, 26, (64, 64, 3), generator=g)
            pixels = (torch.tensor(rgb) + noise).clamp(0, 255).byte().numpy()
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def _probe_by_hand(hidden: int = 0) -> EmotionProbe:
    probe = EmotionProbe(2, 2, hidden)
    probe.mean.copy_(torch.tensor([1.0, 2.0]))
    probe.std.copy_(torch.tensor([2.0, 4.0]))
    return probe


def test_probe_standardises_then_classifies_by_hand():
    probe = _probe_by_hand()
    with torch.no_grad():
        probe.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        probe.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    # (5, 6) standardised: ((5 − 1)/2, (6 − 2)/4) = (2, 1); logits (2 + 0.5, 3 − 0.5)
    assert probe(torch.tensor([[5.0, 6.0]])).tolist() == [[2.5, 2.5]]
    assert probe(torch.tensor([[1.0, 10.0]])).tolist() == [[0.5, 5.5]]
    mlp = _probe_by_hand(hidden=3)
    with torch.no_grad():
        mlp.classifier[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        mlp.classifier[0].bias.zero_()
        mlp.classifier[2].weight.copy_(torch.ones(2, 3))
        mlp.classifier[2].bias.copy_(torch.tensor([0.0, 1.0]))
    # standardised (2, 1) → hidden ReLU(2, −2, 1) = (2, 0, 1) → 3 and 4
    assert mlp(torch.tensor([[5.0, 6.0]])).tolist() == [[3.0, 4.0]]


def test_fit_probe_standardises_with_the_training_features():
    features = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [8.0, 5.0, 0.0]])
    probe, history = fit_probe(features, torch.tensor([0, 1, 1]), 2, epochs=3, seed=0)
    assert probe.mean.tolist() == [4.0, 5.0, 2.0]
    assert torch.allclose(probe.std, torch.tensor([math.sqrt(13), 1e-6, 2.0]))  # unbiased; a constant column: 1e-6
    assert len(history) == 3 and not probe.training
    single, _ = fit_probe(features[:1], torch.tensor([0]), 2, epochs=1)
    assert single.mean.tolist() == [1.0, 5.0, 2.0] and single.std.tolist() == [1.0, 1.0, 1.0]


def test_fit_probe_takes_one_step_per_minibatch_of_a_seeded_permutation():
    """Five samples in minibatches of two: three steps an epoch; with lr 0 and no weight decay
    nothing moves, and the seed fixes the order (and so the weights) of a real fit."""
    features, labels = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1, 1])
    steps = []
    hook = register_optimizer_step_post_hook(lambda optimizer, *_: steps.append(type(optimizer)))
    try:
        frozen, _ = fit_probe(features, labels, 2, epochs=2, lr=0.0, weight_decay=0.0, batch_size=2, seed=3)
    finally:
        hook.remove()
    assert steps == [torch.optim.AdamW] * 6
    torch.manual_seed(3)
    assert torch.equal(frozen.classifier.weight, nn.Linear(4, 2).weight)  # the seed also draws the initial weights
    a, b = (fit_probe(features, labels, 2, epochs=2, batch_size=2, seed=s)[0].classifier.weight for s in (1, 2))
    assert not torch.equal(a, b)


def test_fit_probe_defaults_and_its_weight_decay():
    """The defaults are lr 1e-2, weight decay 1e-4, minibatches of 256 and seed 0 (300 samples: two
    minibatches, so 257 would split them otherwise); weight decay reaches the optimizer."""
    features = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    labels = (features[:, 0] > 0).long()
    default = fit_probe(features, labels, 2, epochs=2)[0].classifier.weight
    spelled = fit_probe(features, labels, 2, epochs=2, lr=1e-2, weight_decay=1e-4, batch_size=256, seed=0)[0]
    assert torch.equal(default, spelled.classifier.weight)
    decayed, plain = (fit_probe(features, labels, 2, epochs=2, weight_decay=w)[0].classifier.weight for w in (5.0, 0.0))
    assert not torch.allclose(decayed, plain)
    assert isinstance(fit_probe(features, labels, 2, hidden=8, epochs=1)[0].classifier, nn.Sequential)
    two, _ = fit_probe(features[:2], labels[:2], 2, epochs=1)
    assert torch.allclose(two.std, features[:2].std(dim=0))  # two samples have a spread


def test_fit_probe_minibatches_follow_a_permutation_drawn_from_the_seed():
    from torch.nn.modules.module import register_module_forward_pre_hook

    features = torch.arange(10.0)[:, None].repeat(1, 3)
    seen = []
    hook = register_module_forward_pre_hook(
        lambda module, args: seen.append(args[0][:, 0].long().tolist()) if isinstance(module, EmotionProbe)
        and module.training else None)
    try:
        fit_probe(features, torch.arange(10) % 2, 2, epochs=2, batch_size=4, seed=5)
    finally:
        hook.remove()
    g = torch.Generator().manual_seed(5)
    expected = [idx.tolist() for _ in range(2) for idx in torch.randperm(10, generator=g).split(4)]
    assert seen == expected


def test_probabilities_are_the_softmax_of_the_probe():
    probe = _probe_by_hand()
    with torch.no_grad():
        probe.classifier.weight.copy_(torch.eye(2))
        probe.classifier.bias.zero_()
    encoder = SimpleNamespace(device=torch.device("cpu"), name="features")
    evaluator = Evaluator(EvaluatorConfig("clip", 2, ["a", "b"]), probe, encoder)
    # standardised (2, 1) and (0, 0): softmax(2, 1) = (e/(e + 1), 1/(e + 1)), softmax(0, 0) = (½, ½)
    probs = evaluator.proba_from_features(torch.tensor([[5.0, 6.0], [1.0, 2.0]]))
    assert torch.allclose(probs, torch.tensor([[math.e / (math.e + 1), 1 / (math.e + 1)], [0.5, 0.5]]))
    assert evaluator.name == "evaluator linear probe on features" and evaluator.class_names == ("a", "b")


def test_fit_probe_learns_a_separable_toy_set():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    labels = torch.arange(4).repeat_interleave(30)
    features = centres[labels] + 0.3 * torch.randn(120, 16, generator=g)
    for hidden in (0, 32):
        probe, history = fit_probe(features, labels, 4, hidden=hidden, epochs=30, lr=1e-2, seed=0)
        assert history[-1] == 1.0
        assert metrics.top1_accuracy(probe(features), labels) == 1.0
    first, second = (fit_probe(features, labels, 4, epochs=3, lr=1e-2, seed=0)[0] for _ in range(2))
    assert torch.equal(first.classifier.weight, second.classifier.weight)  # seeded: repeatable


def test_fit_probe_accuracy_rises_from_chance():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (200,), generator=g)
    features = torch.randn(200, 8, generator=g) + labels[:, None] * 1.5
    _, history = fit_probe(features, labels, 2, epochs=40, lr=1e-2, seed=0)
    assert history[-1] > history[0] and history[-1] > 0.8


@pytest.fixture(scope="module")
def colour_world(tmp_path_factory, tiny_models):
    """A folder dataset of red (amusement) and blue (anger) images, an evaluator trained on it,
    and 'generated' images of the same two colours."""
    clip_dir, _ = tiny_models
    root = tmp_path_factory.mktemp("colours")
    data = _write_colour_images(root / "data", per_class=20, seed=0)
    generated = _write_colour_images(root / "generated", per_class=6, seed=1)
    evaluator = train_evaluator(clip_dir, data, root / "eval", kind="folder", epochs=40, lr=1e-2, seed=0,
                                device=torch.device("cpu"))
    return data, generated, root / "eval", evaluator


def test_evaluator_trains_saves_and_reloads(colour_world):
    _, generated, eval_dir, evaluator = colour_world
    assert (eval_dir / "config.json").is_file() and (eval_dir / "evaluator.safetensors").is_file()
    assert evaluator.config.accuracy["train"] == 1.0 and evaluator.config.accuracy["val"] == 1.0
    assert evaluator.class_names == ("amusement", "anger")
    images = [metrics.open_image(p) for p in sorted((generated / "anger").iterdir())[:3]]
    reloaded = Evaluator.from_pretrained(eval_dir, device=torch.device("cpu"))
    assert torch.allclose(reloaded.predict_proba(images), evaluator.predict_proba(images), atol=1e-6)


def test_emo_a_is_one_for_a_separating_evaluator_and_zero_for_an_always_wrong_one(colour_world, tiny_models):
    from uniemo.data import open_dataset

    data, generated, eval_dir, _ = colour_world
    real = open_dataset(data, kind="folder", split="train")
    items = metrics.read_generated(generated, real.class_names)
    evaluator = Evaluator.from_pretrained(eval_dir, device=torch.device("cpu"))
    report = metrics.evaluate_generation(items, real, real.class_names, evaluator=evaluator)
    assert report["metrics"]["emo_a"]["all"] == 1.0
    assert report["metrics"]["emo_a"]["per_emotion"] == {"amusement": 1.0, "anger": 1.0}
    with torch.no_grad():  # swap the two output rows: every prediction becomes the other emotion
        evaluator.probe.classifier.weight.copy_(evaluator.probe.classifier.weight.flip(0))
        evaluator.probe.classifier.bias.copy_(evaluator.probe.classifier.bias.flip(0))
    report = metrics.evaluate_generation(items, real, real.class_names, evaluator=evaluator)
    assert report["metrics"]["emo_a"]["all"] == 0.0
    assert report["metrics"]["fid"]["note"].startswith("not computed")


def test_evaluator_from_a_missing_directory_is_a_one_line_error(tmp_path):
    from uniemo.errors import UniEmoError

    with pytest.raises(UniEmoError, match="uniemo train evaluator"):
        Evaluator.from_pretrained(tmp_path / "nothing")


def test_a_folder_dataset_without_a_val_split_is_evaluated_on_the_splits_it_has(tmp_path, tiny_models):
    data = tmp_path / "fold"
    _write_colour_images(data / "train", 6, seed=0)
    _write_colour_images(data / "test", 3, seed=1)
    evaluator = train_evaluator(tiny_models[0], data, tmp_path / "eval", kind="folder", epochs=20)
    assert set(evaluator.config.accuracy) == {"train", "test"}
    assert Evaluator.from_pretrained(tmp_path / "eval").class_names == ("amusement", "anger")


def test_evaluate_generation_loads_the_evaluators_clip_once(colour_world, tiny_models):
    from uniemo.commands.evaluate_generation import load_networks
    from uniemo.data import open_dataset

    data, _, eval_dir, _ = colour_world
    real = open_dataset(data, kind="folder", split="train")
    args = SimpleNamespace(evaluator=str(eval_dir), clip=str(tiny_models[0]), places365=None, imagenet_resnet50=None,
                           inception=None, lpips_alex=None, lpips_linear=None)
    networks = load_networks(args, real, distribution=False)
    assert networks["clip"] is networks["evaluator"].encoder  # --clip names the evaluator's own CLIP
