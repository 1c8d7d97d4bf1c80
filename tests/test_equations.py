"""The method's equations on inputs small enough to compute by hand: each test pins numbers (a
loss, a weight, a bound), so that a changed constant, operator or term fails it. These are the
tests `make mutation` relies on first (docs/TESTING.md); every expected value is derived in the
comment beside it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uniemo.config import FusionConfig
from uniemo.feedback import descending_ranks, filter_images, mix_count, mix_plan, rank_window, window_bounds
from uniemo.fusion import UniEmoFusion, match_alpha, table_from_counts
from uniemo.joint import EmotionSpace
from uniemo.metrics import (binary_accuracy, confusion_matrix, frechet_distance, per_class_accuracy,
                            semantic_clarity, semantic_diversity, target_probability, top1_accuracy)
from uniemo.understanding import AttributeBank, attribute_contrastive_loss


# ---------------------------------------------------------------------------- eq. 4 and α


def test_attribute_contrastive_loss_by_hand():
    # two images carry names 0 and 2 of the bank; the candidates are those two names only.
    # logits = embed @ text.T / 0.5 = [[2, 0], [0, 2]] -> CE = log(1 + e^-2) for each image
    bank = AttributeBank(["a", "b", "c"], torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    embed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    loss = attribute_contrastive_loss(embed, torch.tensor([0, 2, -1]), bank, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    # a shared name is one candidate, not a negative: both images carry name 0 -> one logit each, CE 0
    assert attribute_contrastive_loss(embed[:2], torch.tensor([0, 0]), bank, 0.5).item() == pytest.approx(0.0)
    in_float64 = attribute_contrastive_loss(embed.double(), torch.tensor([0, 2, -1]), bank, temperature=0.5)
    assert in_float64.dtype == torch.float64 and in_float64.item() == pytest.approx(loss.item())
    none = attribute_contrastive_loss(embed, torch.tensor([-1, -1, -1]), bank, 0.5)
    assert none.item() == 0.0 and none.requires_grad is embed.requires_grad


def test_counts_table_is_laplace_smoothed():
    # attribute 0 on images of emotions 0, 0, 2; attribute 1 unseen; 3 emotions, smoothing 1:
    # row 0 = ([2, 0, 1] + 1) / 6, row 1 = uniform
    table = table_from_counts(torch.tensor([0, 0, 2, 1]), torch.tensor([0, 0, 0, -1]), vocab_size=2, num_classes=3)
    assert torch.allclose(table, torch.tensor([[3 / 6, 1 / 6, 2 / 6], [1 / 3, 1 / 3, 1 / 3]]))
    half = table_from_counts(torch.tensor([0]), torch.tensor([0]), 1, 2, smoothing=0.5)  # ([1, 0] + .5) / 2
    assert torch.allclose(half, torch.tensor([[0.75, 0.25]]))


def test_alpha_is_p_of_the_nearest_attribute_for_the_target_emotion():
    # cosines: sample 0 is nearest to attribute 1 (0.6 vs 0.8), sample 1 to attribute 0 (0.98 vs 0.20)
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # unnormalised on purpose
    table = torch.tensor([[0.1, 0.9], [0.7, 0.3]])
    alpha, best = match_alpha(torch.tensor([[0.3, 0.4], [5.0, 1.0]]), bank, table, torch.tensor([0, 1]))
    assert best.tolist() == [1, 0]
    assert alpha.tolist() == pytest.approx([0.7, 0.9])
    # cosine, not dot product: [0.8, 0.6] is nearer in angle to [0.6, 0.8] (0.96) than to [5, 0] (0.8),
    # though its dot product with [5, 0] is larger (4 vs 0.96)
    long_row = torch.tensor([[5.0, 0.0], [0.6, 0.8]])
    assert match_alpha(torch.tensor([[0.8, 0.6]]), long_row, table, torch.tensor([0]))[1].tolist() == [1]


def test_understanding_loss_is_the_weighted_sum_of_its_terms():
    # L_U = w_S L_S + w_O L_O + w_cls L_cls, weights (0.2, 0.3, 0.5), temperature 1. L_S: scene
    # embeddings equal to their names' -> logits [1, 0] -> log(1 + e^-1); L_O: zero embeddings ->
    # equal logits -> log 2; L_cls: zero logits over 2 classes -> log 2
    from types import SimpleNamespace

    from uniemo.config import UnderstandingConfig
    from uniemo.understanding import UniEmoUnderstanding, UnderstandingOutput

    bank = AttributeBank(["x", "y"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    cfg = UnderstandingConfig(loss_weights=[0.2, 0.3, 0.5], temperature=1.0)
    out = UnderstandingOutput(logits=torch.zeros(2, 2), cls=None, scene=None, object=None,
                              scene_embed=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                              object_embed=torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    terms = UniEmoUnderstanding.loss(SimpleNamespace(cfg=cfg), out, torch.tensor([0, 1]), torch.tensor([0, 1]),
                                     torch.tensor([0, 1]), bank, bank)
    scene = math.log(1 + math.exp(-1))  # logits [1, 0] for the right name
    assert terms["scene"].item() == pytest.approx(scene) and terms["object"].item() == pytest.approx(math.log(2))
    assert terms["total"].item() == pytest.approx(0.2 * scene + 0.3 * math.log(2) + 0.5 * math.log(2))


def frozen_layer(dim: int, attended: float, ffn: float):
    """An InteractiveLayer whose attention adds ``attended`` and whose FFN adds ``ffn`` to every channel."""
    from uniemo.understanding import InteractiveLayer

    layer = InteractiveLayer(dim, heads=1)
    with torch.no_grad():
        layer.attn.out_proj.weight.zero_()
        layer.attn.out_proj.bias.fill_(attended)
        layer.ffn[2].weight.zero_()
        layer.ffn[2].bias.fill_(ffn)
    return layer


def test_interactive_layer_and_block_are_residual_with_beta_by_hand():
    from uniemo.understanding import InteractiveBlock

    queries, patches = torch.randn(3, 2, 4), torch.randn(3, 5, 4)
    # eq. 2, one layer: Q + A(LN Q, LN T) + F(LN(Q + A)) with A ≡ 0.5, F ≡ 0.25
    out, weights = frozen_layer(4, 0.5, 0.25)(queries, patches)
    assert torch.allclose(out, queries + 0.75) and weights is None
    # eq. 3 over two such layers: Q^ = Q + β (Q + 2 · 0.75), β = 0.1 per channel
    block = InteractiveBlock(4, heads=1, layers=2, beta_init=0.1)
    block.layers = nn.ModuleList([frozen_layer(4, 0.5, 0.25), frozen_layer(4, 0.5, 0.25)])
    refined, attention = block(queries, patches)
    assert torch.allclose(refined, queries + 0.1 * (queries + 1.5)) and attention is None
    # the attention returned is the mean over layers of each layer's map, per image (3 images, 2 layers);
    # layer 2 reads Q + 0.75, whose LayerNorm (hence map) equals Q's
    _, attention = block(queries, patches, return_weights=True)
    maps = [layer(queries, patches, True)[1].mean(dim=(1, 2)) for layer in block.layers]
    assert attention.shape == (3, 5) and torch.allclose(attention, (maps[0] + maps[1]) / 2)


# ---------------------------------------------------------------------------- e and L_cond


def identity_fusion(use_alpha=True, cond_loss="cond", token=2.0, margin=0.5) -> UniEmoFusion:
    """Mappers M(x) = ReLU(x) (both layers identity), R = identity: e is computable by hand."""
    cfg = FusionConfig(features=["cls", "scene", "object"], use_alpha=use_alpha, cond_loss=cond_loss, margin=margin,
                       mapper_hidden=2)
    fusion = UniEmoFusion(cfg, vision_dim=2, text_dims=2, head_hidden=2, token_norms=token)
    with torch.no_grad():
        for layer in [*(m[0] for m in fusion.mappers.values()), *(m[2] for m in fusion.mappers.values()),
                      fusion.cond_proj]:
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    return fusion


FEATURES = {"cls": torch.tensor([[1.0, 0.0]]), "scene": torch.tensor([[0.0, 1.0]]), "object": torch.tensor([[1.0, 1.0]])}
ALPHAS = {"scene": torch.tensor([0.5]), "object": torch.tensor([0.25])}


def test_fused_condition_by_hand():
    # e = 2 · normalise(cls + 0.5 scene + 0.25 object) = 2 · normalise([1.25, 0.75])
    e = identity_fusion()(FEATURES, ALPHAS)
    assert e[0].tolist() == pytest.approx([2 * 1.25 / math.hypot(1.25, 0.75), 2 * 0.75 / math.hypot(1.25, 0.75)])
    # the object named in the prompt: its term leaves e -> 2 · normalise([1, 0.5])
    named = identity_fusion()(FEATURES, ALPHAS, torch.tensor([True]))
    assert named[0].tolist() == pytest.approx([2 / math.hypot(1, 0.5), 1 / math.hypot(1, 0.5)])
    # α off: every term weighs 1 -> 2 · normalise([2, 2])
    plain = identity_fusion(use_alpha=False)(FEATURES, ALPHAS)
    assert plain[0].tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])


def test_sdxl_condition_is_split_and_scaled_per_text_encoder_by_hand():
    # widths [1, 1] (a tiny SD XL: two encoders), token norms 3 and 5; mapped sum [1.25, -0.75]:
    # each part normalised on its own: [3 · 1.25/|1.25|, 5 · -0.75/|-0.75|] = [3, -5]
    cfg = FusionConfig(features=["cls", "scene", "object"], mapper_hidden=2)
    fusion = UniEmoFusion(cfg, vision_dim=2, text_dims=[1, 1], head_hidden=2, token_norms=[3.0, 5.0])
    assert fusion.widths == [1, 1] and fusion.cond_proj.in_features == 2
    with torch.no_grad():
        for mapper in fusion.mappers.values():
            mapper[0].weight.copy_(torch.eye(2))
            mapper[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
            mapper[0].bias.zero_()
            mapper[2].bias.zero_()
    e = fusion(FEATURES, ALPHAS)
    assert e[0].tolist() == pytest.approx([3.0, -5.0])


def test_mix_is_brought_back_to_the_token_norm_by_hand():
    # e_1 = 2 · [1, 0], e_2 = 2 · [0, 1] at token norm 2: 0.25 e_1 + 0.75 e_2 = [0.5, 1.5], norm 1.58,
    # rescaled: 2 · [1, 3] / √10; SD XL (widths [2, 1], token norms 2 and 5): each part to its own norm
    mix = 0.25 * torch.tensor([[2.0, 0.0]]) + 0.75 * torch.tensor([[0.0, 2.0]])
    assert identity_fusion().at_token_norm(mix)[0].tolist() == pytest.approx([2 / math.sqrt(10), 6 / math.sqrt(10)])
    xl = UniEmoFusion(FusionConfig(features=["cls"]), vision_dim=2, text_dims=[2, 1], head_hidden=2,
                      token_norms=[2.0, 5.0])
    e = xl.at_token_norm(torch.tensor([[0.5, 1.5, -0.3]]))
    assert e[0].tolist() == pytest.approx([2 / math.sqrt(10), 6 / math.sqrt(10), -5.0])


def test_fusion_checks_its_features_and_keeps_the_token_scale_out_of_its_weights():
    # without token_norms, e has unit norm per encoder; the scale is the SD's, never saved with the mappers
    cfg = FusionConfig(features=["cls", "scene", "object"], mapper_hidden=2)
    fusion = UniEmoFusion(cfg, vision_dim=2, text_dims=2, head_hidden=2)
    assert fusion(FEATURES, ALPHAS).norm(dim=-1).tolist() == pytest.approx([1.0])
    assert "token_norms" not in fusion.state_dict() and fusion.token_norms.dtype == torch.float32
    for features in (["cls", "colour"], ["scene", "object"]):
        with pytest.raises(Exception, match=r"fusion.features .* is invalid: use 'cls' plus any of scene, object, patch"):
            UniEmoFusion(FusionConfig(features=features), vision_dim=2, text_dims=2, head_hidden=2)


def classifier() -> nn.Linear:
    head = nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.bias.zero_()
    return head


def test_condition_loss_by_hand():
    # sample 0: e' = ReLU(R e) = [1, 0]; logits [2, 0, 1]; label 0: CE = log(1 + e^-2 + e^-1);
    # hardest wrong emotion by the understanding logits [0, 1, 3]: 2; anchors w_0 = [1, 0],
    # w_2 = [1, 1]/√2: margin ReLU(0.5 − 1 + 1/√2).
    # sample 1: e' = [2, 2]; logits [4, 2, 4]; label 1: CE = log(1 + 2e^2); wrong by [5, 0, 1]: 0;
    # cos(e', w_1) = cos(e', w_0) = 1/√2: margin ReLU(0.5 − 1/√2 + 1/√2) = 0.5
    e, labels = torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([0, 1])
    logits = torch.tensor([[0.0, 1.0, 3.0], [5.0, 0.0, 1.0]])
    ce = (math.log(1 + math.exp(-2) + math.exp(-1)) + math.log(1 + 2 * math.exp(2))) / 2
    margin = (0.5 - 1 + 1 / math.sqrt(2) + 0.5) / 2
    out = identity_fusion().condition_loss(e, labels, classifier(), logits)
    assert out["cond"].item() == pytest.approx(ce + margin, abs=1e-6)
    assert out["cond_margin"].item() == pytest.approx(margin, abs=1e-6)
    assert identity_fusion(cond_loss="ce").condition_loss(e, labels, classifier(), logits)["cond"].item() == \
        pytest.approx(ce, abs=1e-6)
    # with margin 0 the right anchor wins or ties for both samples, so the hinge is 0
    assert identity_fusion(margin=0.0).condition_loss(e, labels, classifier(), logits)["cond_margin"].item() == 0.0


def test_fused_condition_per_sample_and_in_the_features_dtype():
    # three samples (more than the width 2, so a wrong broadcast cannot pass): only sample 1 names
    # its object; α arrives in float64 and e must stay in the features' float32
    features = {k: v.repeat(3, 1) for k, v in FEATURES.items()}
    alphas = {k: v.double().repeat(3) for k, v in ALPHAS.items()}
    e = identity_fusion()(features, alphas, torch.tensor([False, True, False]))
    assert e.dtype == torch.float32
    full, named = torch.tensor([1.25, 0.75]), torch.tensor([1.0, 0.5])
    assert torch.allclose(e, 2 * torch.stack([full / full.norm(), named / named.norm(), full / full.norm()]))


# ---------------------------------------------------------------------------- the emotion space


def test_emotion_space_mean_std_and_sampling_by_hand():
    # emotion 0 saw the values 1 and 5: mean 3, population std sqrt(13 − 9) = 2; emotion 1 saw
    # only 4: mean 4, std 0; emotion 2 saw nothing
    space = EmotionSpace.from_sums({"cls": torch.tensor([[6.0], [4.0], [0.0]], dtype=torch.float64)},
                                   {"cls": torch.tensor([[26.0], [16.0], [0.0]], dtype=torch.float64)},
                                   torch.tensor([2, 1, 0]))
    assert space.mean["cls"].tolist() == [[3.0], [4.0], [0.0]] and space.std["cls"].tolist() == [[2.0], [0.0], [0.0]]
    assert space.at(0, {"cls": torch.tensor([1.5])})["cls"].tolist() == [6.0]  # 3 + 2 · 1.5
    with pytest.raises(Exception, match="emotion 2 had no training images, so it has no emotion space; "
                                        "train on data that covers it"):
        space.at(2, {"cls": torch.tensor([0.0])})
    # draws are standard normal with the feature's width, and a seed gives the same draw
    z = torch.stack([space.draw(torch.Generator().manual_seed(s))["cls"] for s in range(4000)])
    assert z.shape == (4000, 1) and abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    torch.manual_seed(123)
    assert space.draw(torch.Generator().manual_seed(7))["cls"].item() == torch.randn(1, generator=torch.Generator()
                                                                                      .manual_seed(7)).item()
    assert space.draw(torch.Generator().manual_seed(7))["cls"].item() == space.draw(torch.Generator().manual_seed(7))["cls"].item()


def test_emotion_space_is_accumulated_per_emotion_over_batches_by_hand():
    """compute_emotion_space over two batches of a stand-in understanding model that returns the
    pixels as features: emotion 0 sees cls 1 and 5 (mean 3, population std 2), emotion 2 sees
    4 and 4 and 7 (mean 5, std sqrt(27 − 25)), emotions 1 and 3 nothing."""
    from types import SimpleNamespace

    from uniemo.joint import compute_emotion_space

    class Echo(nn.Module):
        def forward(self, pixels):
            return SimpleNamespace(cls=pixels, scene=-2 * pixels, object=None)

    echo = Echo().train()
    batches = [{"pixel_values": torch.tensor([[1.0], [4.0]]), "label": torch.tensor([0, 2])},
               {"pixel_values": torch.tensor([[5.0], [4.0], [7.0]]), "label": torch.tensor([0, 2, 2])}]
    space = compute_emotion_space(echo, batches, ("cls", "scene"), 4)
    assert not echo.training  # read in eval mode
    assert space.count.tolist() == [2, 0, 3, 0] and space.count.dtype == torch.long
    assert space.mean["cls"].tolist() == [[3.0], [0.0], [5.0], [0.0]]
    assert space.mean["scene"].tolist() == [[-6.0], [0.0], [-10.0], [0.0]]
    assert torch.allclose(space.std["cls"], torch.tensor([[2.0], [0.0], [math.sqrt(2)], [0.0]]))
    assert torch.allclose(space.std["scene"], torch.tensor([[4.0], [0.0], [2 * math.sqrt(2)], [0.0]]))
    assert space.mean["cls"].dtype == torch.float32 and set(space.mean) == {"cls", "scene"}
    with pytest.raises(Exception, match="gives no object feature"):
        compute_emotion_space(echo, batches, ("cls", "object"), 4)


# ---------------------------------------------------------------------------- Algorithm 1


def test_rank_window_bounds_and_ties_by_hand():
    assert window_bounds(10, 20, 80) == (2, 8) and window_bounds(10, 10, 90) == (1, 9)
    assert window_bounds(7, 50, 100) == (3, 7)  # floor(3.5), floor(7)
    assert window_bounds(10, 0, 70) == (0, 7)  # an exact multiple stays: floor(7 − tiny) would give 6
    assert descending_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [0, 3, 1, 2]  # equal scores: first one first
    assert rank_window([5, 4, 3, 2, 1], 20, 80).tolist() == [False, True, True, True, False]


def test_the_default_window_is_20_to_80_percent_and_ties_keep_their_order():
    scores = torch.arange(100, 0, -1).tolist()  # rank i for item i
    assert rank_window(scores).nonzero().flatten().tolist() == list(range(20, 80))
    assert filter_images({"emo-a": scores}, ["emo-a"]).nonzero().flatten().tolist() == list(range(20, 80))
    assert filter_images({"emo-a": scores}, ["emo-a"], 10, 50).nonzero().flatten().tolist() == list(range(10, 50))
    # scores are ranked in float64: a difference of 1e-12 (lost in float32) decides the order
    assert filter_images({"emo-a": [1.0, 1.0 + 1e-12]}, ["emo-a"], 0, 50).tolist() == [False, True]
    ties = [1.0, 2.0, 1.0, 2.0, 1.0, 3.0, 1.0] * 3000  # large enough that an unstable sort reorders ties
    ranks = descending_ranks(ties)
    for value in (3.0, 2.0, 1.0):
        positions = [i for i, v in enumerate(ties) if v == value]
        assert ranks[positions].tolist() == sorted(ranks[positions].tolist())


def test_filter_refuses_no_criterion_and_an_unknown_one_in_words():
    from uniemo.errors import UniEmoError

    with pytest.raises(UniEmoError) as caught:
        filter_images({"emo-a": [1.0]}, [])
    assert str(caught.value) == "no filter criteria: choose one or more of emo-a, sem-c"
    with pytest.raises(UniEmoError) as caught:
        filter_images({"emo-a": [1.0], "sem-c": [1.0]}, ["clarity"])
    assert str(caught.value) == "no 'clarity' scores to filter by: choose from emo-a, sem-c"


def test_filter_ranks_within_groups_and_intersects_criteria():
    scores = {"emo-a": [4, 3, 2, 1, 40, 30, 20, 10], "sem-c": [1, 4, 3, 2, 10, 40, 30, 20]}
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    # each group of 4, window [25%, 75%) keeps ranks 1..2: emo-a keeps items 1, 2 and 5, 6;
    # sem-c keeps items 2, 3 and 6, 7; both: 2 and 6
    keep = filter_images(scores, ["emo-a", "sem-c"], 25, 75, groups)
    assert keep.nonzero().flatten().tolist() == [2, 6]
    assert filter_images(scores, ["emo-a"], 25, 75, groups).nonzero().flatten().tolist() == [1, 2, 5, 6]


def test_mix_count_and_plan_by_hand():
    assert mix_count(100, 0.2) == 25  # 0.2 · 100 / 0.8
    assert mix_count(90, 0.1) == 10 and mix_count(100, 0.0) == 0
    assert mix_plan(100, 10, 0.2) == (10, pytest.approx(10 / 110))  # fewer kept than asked: all of them
    assert mix_plan(100, 40, 0.2) == (25, pytest.approx(0.2))
    assert mix_plan(0, 0, 0.2) == (0, 0.0)
    assert mix_plan(5, 10, 0.5) == (5, 0.5)  # as many generated as real images


# ---------------------------------------------------------------------------- metrics


def test_accuracy_figures_by_hand():
    preds, labels = torch.tensor([0, 1, 5, 4, 2, 6]), torch.tensor([0, 2, 5, 7, 2, 6])
    assert top1_accuracy(preds, labels) == pytest.approx(4 / 6)
    # 8 -> 2: (0,0) pos-pos, (1,2) pos-pos, (5,5), (4,7) neg-neg, (2,2), (6,6): all right
    assert binary_accuracy(preds, labels) == 1.0
    assert binary_accuracy(torch.tensor([0, 4]), torch.tensor([4, 4])) == 0.5
    matrix = confusion_matrix(preds, labels, 8)
    assert matrix[2].tolist() == [0, 1, 1, 0, 0, 0, 0, 0] and int(matrix.sum()) == 6  # rows: true class
    recall = per_class_accuracy(preds, labels, 8)
    assert recall[2] == 0.5 and recall[7] == 0.0 and recall[1] is None
    assert math.isnan(top1_accuracy(torch.tensor([]), torch.tensor([]))) and top1_accuracy([3], [3]) == 1.0


def test_frechet_distance_of_hand_made_sets():
    # a = {(0,0), (2,0)}, b = {(0,1), (0,3)}: means (1,0) and (0,2) -> ‖Δμ‖² = 5; covariances
    # S_a = diag(2, 0), S_b = diag(0, 2): traces 2 + 2, (S_a S_b)^½ = 0 -> FID = 9
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    assert frechet_distance(a, b) == pytest.approx(9.0, abs=1e-9)
    # same spread along one axis: Tr S_a + Tr S_b − 2 Tr (S_a S_a)^½ = 0, only the means differ
    assert frechet_distance(a, a + torch.tensor([0.0, 3.0])) == pytest.approx(9.0, abs=1e-9)
    assert math.isnan(frechet_distance(a[:1], b))


def test_semantic_metrics_by_hand():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    # pairs (0,1): (4 + 0)/2 = 2; (0,2): (0 + 16)/2 = 8 -> Sem-D = 5
    assert semantic_diversity(features, [(0, 1), (0, 2)]) == pytest.approx(5.0)
    assert math.isnan(semantic_diversity(features, []))
    # Sem-C: per image, the max over classifiers of their top-1 probability
    clarity = semantic_clarity([torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]]),
                                torch.tensor([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])])
    assert clarity.tolist() == pytest.approx([0.6, 0.9, 0.7])
    probs = torch.tensor([[0.1, 0.9], [0.7, 0.3]])
    assert target_probability(probs, [1, 1]).tolist() == pytest.approx([0.9, 0.3])


def test_pairs_for_sem_d_are_all_pairs_or_exactly_the_number_asked():
    from uniemo.metrics import sample_pairs

    labels = [0, 0, 0, 0, 1, 1]  # emotion 0: 4 images, 6 pairs; emotion 1: 2 images, 1 pair
    every = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert sample_pairs(labels, 7, seed=0) == {0: every, 1: [(4, 5)]}
    assert sample_pairs(labels, 6, seed=0)[0] == every
    five = sample_pairs(labels, 5, seed=0)[0]
    assert len(five) == 5 and set(five) < set(every)


# ---------------------------------------------------------------------------- the weights of a mix


def test_mix_weights_are_normalised_and_checked():
    from uniemo.errors import UniEmoError
    from uniemo.pipeline import normalise_weights
    from uniemo.vocab import EMOTIONS

    assert normalise_weights({" AWE ": 3, "fear": 1, "anger": 0}, EMOTIONS) == {"awe": 0.75, "fear": 0.25}
    assert normalise_weights({"sadness": 2.5}, EMOTIONS) == {"sadness": 1.0}
    assert normalise_weights({"awe": 0.5}, EMOTIONS) == {"awe": 1.0}  # a total under 1 is scaled up
    for mix, message in [
        ({}, "mix must be a non-empty mapping emotion -> weight, e.g. {'awe': 0.7, 'fear': 0.3}"),
        ([("awe", 1)], "mix must be a non-empty mapping emotion -> weight, e.g. {'awe': 0.7, 'fear': 0.3}"),
        ({"awe": -1}, "weight -1 for 'awe' is invalid: weights must be finite and >= 0"),
        ({"awe": True}, "weight True for 'awe' is invalid: weights must be finite and >= 0"),
        ({"awe": "1"}, "weight '1' for 'awe' is invalid: weights must be finite and >= 0"),
        ({"awe": math.inf}, "weight inf for 'awe' is invalid: weights must be finite and >= 0"),
        ({"awe": 1e308, "fear": 1e308}, "mix weights {'awe': 1e+308, 'fear': 1e+308} are too large to add up: "
                                        "use weights like awe=0.7,fear=0.3"),
        ({"awe": 0, "fear": 0.0}, "all mix weights are zero: give at least one emotion a positive weight"),
        ({"joy": 1}, "unknown emotion 'joy': choose one of " + ", ".join(EMOTIONS)),
    ]:
        with pytest.raises(UniEmoError) as caught:
            normalise_weights(mix, EMOTIONS)
        assert str(caught.value) == message


# ---------------------------------------------------------------------------- eq. 1-3 as a chain


def test_default_stages_split_the_layers_in_thirds():
    from uniemo.understanding import default_stages

    assert [default_stages(n, None) for n in (2, 3, 12, 24)] == [(1, 2), (1, 2), (4, 8), (8, 16)]
    assert default_stages(12, [4, 12]) == (4, 12)  # the object stage may end at the last layer
    with pytest.raises(Exception, match=r"need 1 <= L1 < L2 <= 12"):
        default_stages(12, [8, 8])


def test_without_queries_the_chain_is_clips_own_vision_tower():
    # queries "none": CLS and the patch mean are exactly what CLIPVisionModel computes itself
    from test_understanding import make_model

    model = make_model("none")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, reference = model(pixels), model.vision(pixel_values=pixels)
    assert torch.allclose(out.cls, reference.pooler_output, atol=1e-5)
    assert torch.allclose(out.patch, reference.last_hidden_state[:, 1:].mean(dim=1), atol=1e-5)
    assert out.attentions is None and model(pixels, output_attentions=True).attentions is None


@pytest.mark.parametrize("queries, object_enters_raw", [("multi-stage", True), ("single-step", False)])
def test_object_queries_join_at_l1_raw_or_after_the_first_layers(queries, object_enters_raw):
    # Fig. 6: multi-stage inserts the learned object queries at layer L1; single-step carries the
    # ones that entered with the scene queries at layer 0 through layers 0..L1
    from test_understanding import NUM_PATCHES, Q, make_model

    model = make_model(queries)
    seen = []
    layer = model.vision.encoder.layers[model.stages[0]]
    hook = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    hook.remove()
    entering = seen[0][0, 1 + NUM_PATCHES + Q:]
    assert torch.allclose(entering, model.object_queries) is object_enters_raw


def test_cross_attention_returns_weights_only_when_asked():
    from uniemo.understanding import CrossAttention

    attention = CrossAttention(8, heads=2)
    x, context = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    out, weights = attention(x, context)
    explicit, weights_asked = attention(x, context, return_weights=True)
    assert weights is None and weights_asked.shape == (1, 2, 3, 5)
    assert torch.allclose(out, explicit, atol=1e-6)
    assert torch.allclose(weights_asked.sum(-1), torch.ones(1, 2, 3))


def test_mix_mass_by_hand():
    # an evaluator whose probabilities are the features themselves, over 3 emotions; folder 1 is a
    # 50/50 mix of a and b: mass = mean over its 2 images of p_a + p_b = (0.9 + 0.5) / 2 = 0.7;
    # folder 2 is a sweep point with b at weight 0: mass = mean p_a = (0.2 + 0.6) / 2 = 0.4;
    # folder 3 holds one image of b alone: mass 0.8
    from pathlib import Path
    from types import SimpleNamespace

    from uniemo.metrics import Generated, GeneratedSet, mix_mass

    evaluator = SimpleNamespace(class_names=("a", "b", "c"), name="identity", proba_from_features=lambda f: f)
    half, sweep = {"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 0.0}
    images = [Generated(Path("mix_a-0.5_b-0.5/0.png"), None, half), Generated(Path("mix_a-1_b-0/0.png"), None, sweep),
              Generated(Path("mix_a-0.5_b-0.5/1.png"), None, half), Generated(Path("mix_a-1_b-0/1.png"), None, sweep),
              Generated(Path("mix_b-1/0.png"), None, {"b": 1.0})]
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.4, 0.5], [0.6, 0.1, 0.3], [0.1, 0.8, 0.1]])
    result = mix_mass(GeneratedSet(images, evaluator=probs), evaluator)
    first, second = result["per_mix"]["mix_a-0.5_b-0.5"], result["per_mix"]["mix_a-1_b-0"]
    assert first["mass"] == pytest.approx(0.7) and second["mass"] == pytest.approx(0.4)
    assert first["mean_probability"] == pytest.approx({"a": 0.35, "b": 0.35, "c": 0.3})
    assert second["mean_probability"] == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})
    assert first["weights"] == half and first["images"] == second["images"] == 2
    assert result["per_mix"]["mix_b-1"]["mass"] == pytest.approx(0.8)
    assert result["all"] == pytest.approx((0.7 + 0.4 + 0.8) / 3) and result["network"] == "identity"


# ---------------------------------------------------------------------------- L_diff and L_joint (eq. 10)


@pytest.fixture(scope="module")
def joint_model(tiny_models):
    from test_joint import build_joint

    return build_joint(tiny_models)


def test_joint_loss_is_the_weighted_sum_of_its_three_terms(joint_model):
    # eq. 10 with weights that tell the terms apart: L = 0.1 L_U + 0.2 L_cond + 0.7 L_diff
    from test_joint import make_batch

    weights = joint_model.fusion.cfg.joint_weights
    joint_model.fusion.cfg.joint_weights = [0.1, 0.2, 0.7]
    try:
        torch.manual_seed(0)
        loss, logs = joint_model.eval()(make_batch(3))
    finally:
        joint_model.fusion.cfg.joint_weights = weights
    expected = 0.1 * logs["loss_u"] + 0.2 * logs["loss_cond"] + 0.7 * logs["loss_diff"]
    assert min(logs["loss_u"], logs["loss_cond"], logs["loss_diff"]) > 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("step, ramp", [(0, 0.0), (5, 0.25), (20, 1.0), (40, 1.0), (None, 1.0)])
def test_cond_warmup_ramps_the_weight_of_l_cond_linearly(joint_model, step, ramp):
    from test_joint import make_batch

    fusion = joint_model.fusion.cfg
    weights, warmup = fusion.joint_weights, fusion.cond_warmup_steps
    fusion.joint_weights, fusion.cond_warmup_steps = [0.1, 0.2, 0.7], 20
    try:
        torch.manual_seed(0)
        loss, logs = joint_model.eval()(make_batch(3), step)
    finally:
        fusion.joint_weights, fusion.cond_warmup_steps = weights, warmup
    expected = 0.1 * logs["loss_u"] + 0.2 * ramp * logs["loss_cond"] + 0.7 * logs["loss_diff"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_joint_step_with_transfer_prompts_names_the_object_in_the_prompt_and_leaves_it_out_of_e(joint_model):
    """With object_prompt_p = 1 every sample is prompted "<emo> <its object>" and e leaves out the
    object term: L_diff is the loss of that e under those ids, in the forward's order of draws."""
    from test_joint import make_batch

    batch, diffusion = make_batch(3), joint_model.diffusion
    p = diffusion.object_prompt_p
    diffusion.object_prompt_p = 1.0
    try:
        torch.manual_seed(0)
        _, logs = joint_model.eval()(batch)
        torch.manual_seed(0)
        with torch.no_grad():
            out = joint_model.understanding(batch["pixel_values"])
            ids, named = diffusion.prompt_ids_for(batch["object"])
            e, _ = joint_model.condition(out, batch["label"], named)
            l_diff = diffusion.loss(e, diffusion.posterior(batch), ids)
    finally:
        diffusion.object_prompt_p = p
    assert named.all() and torch.equal(ids[0], diffusion.prompts.ids([f"<emo> {o}" for o in batch["object"]])[0])
    assert logs["loss_diff"] == pytest.approx(l_diff.item(), rel=1e-6)
    with torch.no_grad():
        e_plain, _ = joint_model.condition(out, batch["label"])
    assert not torch.allclose(e, e_plain)
    torch.manual_seed(0)
    diffusion.prompt_ids_for(batch["object"])
    with torch.no_grad():
        assert diffusion.loss(e, diffusion.posterior(batch)).item() != pytest.approx(l_diff.item(), rel=1e-6)  # ids matter


def test_joint_condition_weighs_scene_and_object_by_their_alpha(joint_model):
    """Stage 2's e: α of each image's nearest scene and object for its emotion (the table's rows
    of that kind); a bank with no names (data without attribute annotations) gives α = 1."""
    from test_joint import make_batch

    from uniemo.joint import features_of
    from uniemo.understanding import AttributeBank

    batch, m = make_batch(3), joint_model
    with torch.no_grad():
        out = m.understanding.eval()(batch["pixel_values"])
        e, alphas = m.condition(out, batch["label"])
        expected = {kind: match_alpha(embed, bank.embeds, m.table.rows(kind)[1], batch["label"])[0]
                    for kind, bank, embed in (("scene", m.scene_bank, out.scene_embed),
                                              ("object", m.object_bank, out.object_embed))}
        features = features_of(out, m.fusion.cfg.features)
        assert alphas.keys() == expected.keys() and all(torch.equal(alphas[k], expected[k]) for k in alphas)
        assert torch.allclose(e, m.fusion(features, expected)) and not torch.allclose(e, m.fusion(features))
        scenes = m.scene_bank
        m.scene_bank = AttributeBank([], torch.empty(0, scenes.embeds.shape[1]))
        try:
            _, without = m.condition(out, batch["label"])
        finally:
            m.scene_bank = scenes
    assert without["scene"].tolist() == [1.0, 1.0, 1.0] and without["scene"].dtype == out.scene_embed.dtype
    assert torch.equal(without["object"], expected["object"])


def test_sdxl_diffusion_loss_by_hand(tiny_xl_models):
    # SD XL's UNet also reads the pooled embedding of encoder 2 and the size conditioning
    # (original size, crop top-left, target size) = (64, 64, 0, 0, 64, 64) for 64-px images
    from uniemo.joint import FrozenDiffusion, encode_posterior
    from uniemo.loading import load_sd

    sd = load_sd(tiny_xl_models[1])
    diffusion = FrozenDiffusion(sd, FusionConfig())
    e = torch.randn(2, sum(diffusion.prompts.widths))
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.manual_seed(3)
    got = diffusion.loss(e, encode_posterior(sd.vae, pixels))
    torch.manual_seed(3)
    with torch.no_grad():
        z0 = sd.vae.encode(pixels).latent_dist.sample() * sd.vae.config.scaling_factor
        noise = torch.randn_like(z0)
        t = torch.randint(0, 1000, (2,))
        abar = diffusion.noise_scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
        zt = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
        cond = diffusion.prompts(diffusion.prompts.ids(["<emo>"]), e)
        added = {"text_embeds": cond["pooled_prompt_embeds"],
                 "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).expand(2, -1)}
        pred = sd.unet(zt, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added).sample
    assert got.item() == pytest.approx(((pred - noise) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diffusion_loss_by_hand(tiny_models, prediction):
    # L_diff = mean (ε_θ(z_t, t, c(e)) − target)², z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, t ~ U{0, …, T−1};
    # target ε, or v = √ᾱ_t ε − √(1 − ᾱ_t) z_0; the draws in the loss's order: z_0, ε, t
    from diffusers import DDIMScheduler

    from uniemo.joint import FrozenDiffusion, encode_posterior
    from uniemo.loading import load_sd

    sd = load_sd(tiny_models[1])
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config, prediction_type=prediction)
    diffusion = FrozenDiffusion(sd, FusionConfig())
    e = torch.randn(2, sd.text_encoder.config.hidden_size)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.manual_seed(3)
    got = diffusion.loss(e, encode_posterior(sd.vae, pixels))
    torch.manual_seed(3)
    with torch.no_grad():
        z0 = sd.vae.encode(pixels).latent_dist.sample() * sd.vae.config.scaling_factor
        noise = torch.randn_like(z0)
        t = torch.randint(0, 1000, (2,))
        abar = diffusion.noise_scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
        zt = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
        cond = diffusion.prompts(diffusion.prompts.ids(["<emo>"]), e)["prompt_embeds"]
        pred = sd.unet(zt, t, encoder_hidden_states=cond).sample
        target = noise if prediction == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * z0
    assert got.item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-5)
