"""UniEmoUnderstanding (paper §III-A): token bookkeeping, L_U, gradients, learning, save/load."""

from __future__ import annotations

import time

import pytest
import torch

from uniemo.config import UnderstandingConfig
from uniemo.errors import UniEmoError
from uniemo.understanding import AttributeBank, UniEmoUnderstanding, load_attributes, save_attributes

WIDTH, LAYERS, PATCH, IMAGE, TEXT_DIM, Q = 32, 6, 8, 32, 24, 4
NUM_PATCHES = (IMAGE // PATCH) ** 2


def tiny_vision(layers=LAYERS, seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=layers,
                                            num_attention_heads=4, patch_size=PATCH, image_size=IMAGE))


def make_model(queries="multi-stage", seed=0, **overrides):
    cfg = UnderstandingConfig(**{"queries": queries, "query_len": Q, "head_hidden": 32, "head_dropout": 0.0,
                                 **overrides})
    return UniEmoUnderstanding(tiny_vision(seed=seed), cfg, TEXT_DIM)


def random_bank(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return AttributeBank([f"name {i}" for i in range(n)],
                         torch.nn.functional.normalize(torch.randn(n, TEXT_DIM, generator=g), dim=-1))


def sequence_lengths(model, pixels):
    lengths = []
    hooks = [layer.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
             for layer in model.vision.encoder.layers]
    with torch.no_grad():
        out = model(pixels)
    for h in hooks:
        h.remove()
    return lengths, out


@pytest.mark.parametrize("queries, expected", [
    ("none", [1 + NUM_PATCHES] * 6),
    ("single-step", [1 + NUM_PATCHES + 2 * Q] * 6),
    ("multi-stage", [1 + NUM_PATCHES + Q] * 2 + [1 + NUM_PATCHES + 2 * Q] * 4),
])
def test_sequence_length_at_every_layer(queries, expected):
    model = make_model(queries).eval()
    lengths, out = sequence_lengths(model, torch.randn(3, 3, IMAGE, IMAGE))
    assert lengths == expected  # stages default to L1 = N/3 = 2, L2 = 2N/3 = 4
    assert out.logits.shape == (3, 8) and out.cls.shape == (3, WIDTH)
    assert out.scene.shape == out.object.shape == (3, WIDTH)
    assert out.scene_embed.shape == out.object_embed.shape == (3, TEXT_DIM)
    if queries == "none":
        assert not out.scene.any() and not out.object.any()
    else:
        assert torch.allclose(out.scene_embed.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_custom_stages_and_invalid_stages():
    model = make_model(stages=[1, 5]).eval()
    lengths, _ = sequence_lengths(model, torch.randn(1, 3, IMAGE, IMAGE))
    assert lengths == [1 + NUM_PATCHES + Q] * 1 + [1 + NUM_PATCHES + 2 * Q] * 5
    with pytest.raises(UniEmoError, match="stages"):
        make_model(stages=[4, 4])
    with pytest.raises(UniEmoError, match="queries"):
        make_model(queries="everywhere")


def test_queries_sit_after_the_patches_and_get_the_interactive_block():
    """The scene queries read by Interactive Block #1 are the tokens after CLS+patches at layer L1,
    and the pooled scene vector is the mean of Q + beta*Q~ computed from them."""
    model = make_model().eval()
    captured = {}
    model.vision.encoder.layers[1].register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    with torch.no_grad():
        out = model(torch.randn(2, 3, IMAGE, IMAGE))
        h = captured["h"]
        p = 1 + NUM_PATCHES
        q_hat, _ = model.scene_block(h[:, p:p + Q], h[:, 1:p])
    assert torch.allclose(out.scene, q_hat.mean(dim=1), atol=1e-6)


def test_attention_maps_are_distributions_over_the_patch_grid():
    model = make_model().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, IMAGE, IMAGE), output_attentions=True)
        plain = model(torch.randn(2, 3, IMAGE, IMAGE))
    grid = IMAGE // PATCH
    for kind in ("scene", "object"):
        maps = out.attentions[kind]
        assert maps.shape == (2, grid, grid)
        assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    assert plain.attentions is None


def test_explicit_attention_path_matches_sdpa():
    model = make_model().eval()
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        a, b = model(x), model(x, output_attentions=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)


def test_loss_terms_finite_and_vanish_without_attributes():
    model = make_model()
    out = model(torch.randn(4, 3, IMAGE, IMAGE))
    labels = torch.tensor([0, 3, 5, 7])
    scenes, objects = random_bank(5), random_bank(6, seed=1)
    full = model.loss(out, labels, torch.tensor([0, 1, 1, 4]), torch.tensor([2, -1, 5, 0]), scenes, objects)
    assert all(torch.isfinite(v) for v in full.values())
    assert full["scene"] > 0 and full["object"] > 0
    none = model.loss(out, labels, torch.full((4,), -1), torch.tensor([-1, -1, 3, -1]), scenes, objects)
    assert none["scene"].item() == 0.0 and none["object"].item() == 0.0  # only one name: nothing to contrast
    assert torch.allclose(none["total"], 0.5 * none["cls"])
    none["total"].backward()  # a vanished term must not break backward


def test_contrastive_loss_does_not_treat_shared_names_as_negatives():
    model = make_model()
    bank = random_bank(3)
    out = model(torch.randn(2, 3, IMAGE, IMAGE))
    out.scene_embed = bank.embeds[[0, 0]].clone()  # both images match name 0 perfectly
    terms = model.loss(out, torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([-1, -1]), bank, bank)
    assert terms["scene"].item() == pytest.approx(0.0, abs=1e-6)


def test_plain_mode_has_zero_attribute_terms():
    model = make_model("none")
    out = model(torch.randn(2, 3, IMAGE, IMAGE))
    bank = random_bank(3)
    terms = model.loss(out, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 2]), bank, bank)
    assert terms["scene"].item() == terms["object"].item() == 0.0
    assert not hasattr(model, "scene_queries")


def test_queries_blocks_and_beta_receive_gradients():
    model = make_model()
    out = model(torch.randn(4, 3, IMAGE, IMAGE))
    bank = random_bank(4)
    idx = torch.tensor([0, 1, 2, 3])
    model.loss(out, torch.tensor([0, 1, 2, 3]), idx, idx, bank, bank)["total"].backward()
    for name in ("scene_queries", "object_queries", "scene_block.beta", "object_block.beta",
                 "scene_block.layers.0.attn.q_proj.weight", "object_block.layers.1.ffn.2.weight",
                 "scene_proj.weight", "vision.encoder.layers.0.self_attn.q_proj.weight", "emotion_head.3.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def pattern_task(n, seed):
    """Noise images whose class is the colour cast: red, green, blue or none."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    for i, c in enumerate(labels.tolist()):
        if c < 3:
            x[i, c] += 1.0
    return x, labels


def test_training_raises_accuracy_far_above_chance():
    torch.manual_seed(0)
    model = make_model(num_classes=4)
    bank = random_bank(4)
    x, y = pattern_task(128, seed=0)
    tx, ty = pattern_task(128, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(3):
        for i in range(0, len(x), 32):
            out = model(x[i:i + 32])
            loss = model.loss(out, y[i:i + 32], y[i:i + 32], torch.full((len(y[i:i + 32]),), -1), bank, bank)
            opt.zero_grad()
            loss["total"].backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(tx).logits.argmax(-1) == ty).float().mean().item()
    assert acc > 0.85  # chance is 0.25


def test_save_load_round_trip_is_exact(tmp_path):
    model = make_model().eval()
    model.class_names = tuple(f"c{i}" for i in range(8))
    x = torch.randn(2, 3, IMAGE, IMAGE)
    model.save_pretrained(tmp_path)
    loaded = UniEmoUnderstanding.from_pretrained(tmp_path)
    with torch.no_grad():
        a, b = model(x, output_attentions=True), loaded(x, output_attentions=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.scene_embed, b.scene_embed)
    assert torch.equal(a.attentions["object"], b.attentions["object"])
    assert loaded.class_names == model.class_names and loaded.cfg == model.cfg


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(UniEmoError, match="not a directory"):
        UniEmoUnderstanding.from_pretrained(tmp_path / "missing")
    with pytest.raises(UniEmoError, match="understanding config"):
        UniEmoUnderstanding.from_pretrained(tmp_path)
    make_model().save_pretrained(tmp_path)
    make_model(query_len=Q + 1).save_pretrained(tmp_path / "other")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(UniEmoError, match="do not match"):
        UniEmoUnderstanding.from_pretrained(tmp_path)


def test_attribute_bank_encode_index_and_save(tiny_models, tmp_path):
    from uniemo.loading import load_clip

    bundle = load_clip(tiny_models[0])
    bank = AttributeBank.encode(bundle, ["Alarm clock", "cemetery", "beach_house", "cemetery"])
    assert bank.names == ["alarm clock", "beach house", "cemetery"]
    assert bank.embeds.shape == (3, bundle.model.config.projection_dim)
    assert torch.allclose(bank.embeds.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert bank.index(["cemetery", None, "unknown thing", "Alarm clock"]).tolist() == [2, -1, -1, 0]
    objects = AttributeBank.encode(bundle, ["dog"])
    save_attributes(tmp_path, bank, objects)
    scene, obj = load_attributes(tmp_path)
    assert scene.names == bank.names and torch.equal(scene.embeds, bank.embeds)
    assert obj.names == ["dog"] and torch.equal(obj.embeds, objects.embeds)


def build_preset(name):
    from transformers import CLIPVisionModel

    from uniemo.demo.foundation import clip_config

    cfg = clip_config(name)
    torch.manual_seed(0)
    return UniEmoUnderstanding(CLIPVisionModel(cfg.vision_config), UnderstandingConfig(), cfg.projection_dim)


def forward_backward(model):
    size = model.vision.config.image_size
    out = model(torch.randn(2, 3, size, size))
    bank = random_bank(2)
    bank.embeds = torch.nn.functional.normalize(torch.randn(2, model.text_dim), dim=-1)
    loss = model.loss(out, torch.tensor([0, 5]), torch.tensor([0, 1]), torch.tensor([1, 0]), bank, bank)["total"]
    loss.backward()
    assert torch.isfinite(loss) and model.scene_queries.grad is not None


def test_vit_b32_full_size_forward_backward():
    start = time.perf_counter()
    forward_backward(build_preset("vit-b32"))
    assert time.perf_counter() - start < 60


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit-b16", "vit-l14"])
def test_large_presets_forward_backward(name):
    forward_backward(build_preset(name))
