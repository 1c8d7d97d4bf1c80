"""Fusion (SPEC §2): the correlation table P, α, the fused condition, injection, L_cond."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uniemo import fusion
from uniemo.config import FusionConfig
from uniemo.errors import UniEmoError


@pytest.fixture(scope="module")
def sd(tiny_models):
    from uniemo.loading import load_sd

    pipe = load_sd(tiny_models[1])
    placeholder_id = fusion.add_placeholder(pipe.tokenizer, "<emo>")
    return pipe, placeholder_id


def test_counts_table_rows_are_smoothed_distributions():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    attr = torch.tensor([0, 0, 0, 1, 1, -1])
    table = fusion.table_from_counts(labels, attr, vocab_size=3, num_classes=4, smoothing=1.0)
    assert torch.allclose(table.sum(1), torch.ones(3))
    assert torch.allclose(table[0], torch.tensor([3, 2, 1, 1]) / 7.0)  # two of 0, one of 1, plus 1 each
    assert torch.allclose(table[1], torch.tensor([1, 1, 3, 1]) / 6.0)  # the unlabelled image is not counted
    assert torch.allclose(table[2], torch.full((4,), 0.25))  # never seen: uniform


def test_classifier_table_follows_the_image_classes_in_the_shared_space():
    torch.manual_seed(0)
    directions = F.normalize(torch.randn(3, 16), dim=-1)
    labels = torch.arange(3).repeat(40)
    images = directions[labels] + 0.05 * torch.randn(120, 16)
    # an attribute whose text embedding sits on class 2's direction, one on class 0's
    text = {"scene": directions[[2, 0]], "object": torch.zeros(0, 16)}
    tables = fusion.table_from_classifier(images, labels, text, num_classes=3, hidden=32, steps=150, seed=0)
    assert torch.allclose(tables["scene"].sum(1), torch.ones(2), atol=1e-5)
    assert (tables["scene"] >= 0).all()
    assert tables["scene"].argmax(1).tolist() == [2, 0]
    assert tables["object"].shape == (0, 3)
    again = fusion.table_from_classifier(images, labels, text, num_classes=3, hidden=32, steps=150, seed=0)
    assert torch.equal(again["scene"], tables["scene"])  # seeded


def test_alpha_is_the_table_entry_of_the_nearest_attribute():
    bank = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=-1)
    table = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    # sample 0 is nearest attribute 1 (by cosine, despite a larger norm along attribute 0 for sample 1)
    embed = torch.tensor([[0.1, 0.9, 0.2], [5.0, 0.1, 4.0]])
    alpha, best = fusion.match_alpha(embed, bank, table, torch.tensor([1, 0]))
    assert best.tolist() == [1, 0]
    assert torch.allclose(alpha, torch.tensor([0.8, 0.7]))
    assert not alpha.requires_grad


def test_table_json_round_trip_and_top():
    table = fusion.CorrelationTable(("a", "b"), ["beach", "cave"], torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
                                    ["dog"], torch.tensor([[0.4, 0.6]]), method="counts")
    back = fusion.CorrelationTable.from_json(table.to_json(), "t.json")
    assert back.scene_names == ["beach", "cave"] and torch.allclose(back.scene, table.scene)
    assert back.top("scene", 1, 1) == [("cave", pytest.approx(0.8))]
    with pytest.raises(UniEmoError, match="malformed alpha table"):
        fusion.CorrelationTable.from_json({"emotions": ["a"]}, "t.json")


def _fusion(token_norm=1.0, **kw):
    torch.manual_seed(0)
    return fusion.UniEmoFusion(FusionConfig(**kw), vision_dim=8, text_dims=6, head_hidden=5, token_norms=token_norm)


def test_fused_condition_weights_scene_and_object_by_alpha_at_the_token_scale():
    m = _fusion(token_norm=0.2)
    feats = {k: torch.randn(2, 8) for k in ("cls", "scene", "object")}
    alphas = {"scene": torch.tensor([0.0, 1.0]), "object": torch.tensor([0.0, 0.5])}
    e = m(feats, alphas)
    expected = m.mappers["cls"](feats["cls"]) + m.mappers["scene"](feats["scene"]) * torch.tensor([[0.0], [1.0]]) \
        + m.mappers["object"](feats["object"]) * torch.tensor([[0.0], [0.5]])
    assert torch.allclose(e, 0.2 * F.normalize(expected, dim=-1), atol=1e-6)
    assert torch.allclose(e.norm(dim=-1), torch.full((2,), 0.2))
    no_alpha = _fusion(use_alpha=False)
    summed = sum(no_alpha.mappers[k](feats[k]) for k in feats)
    assert torch.allclose(no_alpha(feats, alphas), F.normalize(summed, dim=-1), atol=1e-6)


def test_fusion_rejects_bad_feature_lists():
    with pytest.raises(UniEmoError, match="fusion.features"):
        _fusion(features=["scene", "colour"])
    with pytest.raises(UniEmoError, match="cond_loss"):
        _fusion(cond_loss="mse")


def test_condition_loss_margin_pulls_e_toward_its_anchor():
    m = _fusion()
    classifier = torch.nn.Linear(5, 4)
    e = torch.randn(3, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    understanding = torch.randn(3, 4)
    cond = m.condition_loss(e, labels, classifier, understanding)
    assert cond["cond"] >= cond["cond_ce"]
    assert torch.allclose(cond["cond"], cond["cond_ce"] + cond["cond_margin"])
    cond["cond"].backward()
    assert e.grad.abs().sum() > 0 and m.cond_proj.weight.grad.abs().sum() > 0
    ce = _fusion(cond_loss="ce").condition_loss(e, labels, classifier, understanding)
    assert set(ce) == {"cond", "cond_ce"}
    # an e' exactly on its own anchor and orthogonal to the others: margin term is 0
    ident = _fusion()
    with torch.no_grad():
        ident.cond_proj.weight.zero_()
        ident.cond_proj.bias.zero_()
        ident.cond_proj.weight[:4, :4] = torch.eye(4)
        classifier.weight.copy_(torch.eye(4, 5))
    onehot = F.pad(torch.eye(4)[labels], (0, 2))
    assert ident.condition_loss(onehot, labels, classifier, understanding)["cond_margin"] == 0


def test_injection_changes_the_placeholder_and_what_attends_to_it(sd):
    pipe, pid = sd
    te = pipe.text_encoder
    ids = fusion.tokenize(pipe.tokenizer, ["<emo> bench", "<emo> bench"])
    with torch.no_grad():
        a, b = (fusion.inject(te, ids, pid, torch.randn(2, te.config.hidden_size)).last_hidden_state for _ in range(2))
    differs = (a != b).any(-1)
    # causal attention: the start token comes before the placeholder, every later position sees it
    assert not differs[:, 0].any() and differs[:, 1:].all()


def test_injecting_a_words_row_matches_the_text_encoder_on_that_word(sd):
    pipe, pid = sd
    te = pipe.text_encoder
    word_ids = fusion.tokenize(pipe.tokenizer, ["a bench", "a cup"])
    with torch.no_grad():
        e = te.embeddings.token_embedding(word_ids[:, 1])
        expected = te(word_ids).last_hidden_state
        got = fusion.inject(te, fusion.tokenize(pipe.tokenizer, ["<emo> bench", "<emo> cup"]), pid, e).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)


def test_condition_is_differentiable_through_the_frozen_text_encoder(sd):
    pipe, pid = sd
    te = pipe.text_encoder.requires_grad_(False)
    e = torch.randn(3, te.config.hidden_size, requires_grad=True)
    out = fusion.inject(te, fusion.tokenize(pipe.tokenizer, ["<emo>"]), pid, e).last_hidden_state
    assert out.shape[0] == 3
    # a random readout: sum(LayerNorm(x)) alone is constant in x when the norm's weights are uniform
    (out[1] * torch.randn_like(out[1])).sum().backward()
    assert e.grad[1].abs().sum() > 0 and e.grad[0].abs().sum() == 0  # samples stay independent
    assert all(p.grad is None for p in te.parameters())


def test_prompts_without_placeholder_and_bad_words_are_refused(sd):
    pipe, pid = sd
    te = pipe.text_encoder
    with pytest.raises(UniEmoError, match="placeholder"):
        fusion.inject(te, fusion.tokenize(pipe.tokenizer, ["a bench"]), pid,
                      torch.zeros(1, te.config.hidden_size))
    fusion.check_word(pipe.tokenizer, "bench", pid)
    for word in ("", "bench!", "<emo>"):
        with pytest.raises(UniEmoError, match="cannot be encoded"):
            fusion.check_word(pipe.tokenizer, word, pid)
