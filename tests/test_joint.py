"""Stage 2 (SPEC §3): L_joint, gradient paths through the frozen diffusion model, emotion space."""

from __future__ import annotations

import pytest
import torch

from uniemo import joint
from uniemo.config import FusionConfig, UnderstandingConfig
from uniemo.errors import UniEmoError
from uniemo.fusion import CorrelationTable, UniEmoFusion, table_from_counts

SCENES = ["beach", "forest", "cemetery"]
OBJECTS = ["dog", "cake", "skull", "balloon"]


def build_joint(tiny_models, fusion_cfg: FusionConfig | None = None, seed: int = 0,
                checkpointing: bool = False) -> joint.JointModel:
    """A tiny stage-2 model: understanding on the fixture's CLIP vision tower + the fixture's SD."""
    from transformers import CLIPVisionModel

    from uniemo.loading import load_clip, load_sd
    from uniemo.understanding import AttributeBank, UniEmoUnderstanding

    torch.manual_seed(seed)
    clip, sd = load_clip(tiny_models[0]), load_sd(tiny_models[1])
    vision = CLIPVisionModel(clip.model.config.vision_config)
    vision.load_state_dict(clip.model.vision_model.state_dict())
    understanding = UniEmoUnderstanding(vision, UnderstandingConfig(query_len=4, head_hidden=32, head_dropout=0.0),
                                        text_dim=clip.model.config.projection_dim)
    scene_bank, object_bank = AttributeBank.encode(clip, SCENES), AttributeBank.encode(clip, OBJECTS)
    labels = torch.arange(8).repeat(3)
    table = CorrelationTable(
        understanding.class_names,
        scene_bank.names, table_from_counts(labels, labels % 3, 3, 8),
        object_bank.names, table_from_counts(labels, labels % 4, 4, 8), method="counts")
    fusion = UniEmoFusion(fusion_cfg or FusionConfig(), vision_dim=vision.config.hidden_size,
                          text_dims=[te.config.hidden_size for te in (sd.text_encoder, getattr(sd, "text_encoder_2", None))
                                     if te is not None], head_hidden=32)
    diffusion = joint.FrozenDiffusion(sd, FusionConfig(unet_gradient_checkpointing=checkpointing))
    return joint.JointModel(understanding, fusion, diffusion, scene_bank, object_bank, table)


def make_batch(size: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(size, 3, 64, 64, generator=g),
            "vae_pixels": torch.rand(size, 3, 64, 64, generator=g) * 2 - 1,
            "label": torch.randint(0, 8, (size,), generator=g),
            "scene": [SCENES[i % 3] for i in range(size - 1)] + [None],
            "object": [OBJECTS[i % 4] for i in range(size)]}


@pytest.fixture(scope="module")
def model(tiny_models):
    return build_joint(tiny_models)


def test_gradients_reach_mappers_and_queries_but_not_frozen_diffusion(model):
    model.train()
    model.zero_grad()
    loss, logs = model(make_batch(3))
    assert set(logs) >= {"loss_u", "loss_cond", "loss_diff", "alpha_scene", "alpha_object"}
    loss.backward()
    for name in ("cls", "scene", "object"):
        assert model.fusion.mappers[name][0].weight.grad.abs().sum() > 0, name
    assert model.understanding.scene_queries.grad.abs().sum() > 0
    assert model.understanding.object_queries.grad.abs().sum() > 0
    assert model.understanding.emotion_head[-1].weight.grad.abs().sum() > 0
    d = model.diffusion
    for part in (d.unet, d.vae, d.text_encoders):
        assert all(p.grad is None and not p.requires_grad for p in part.parameters())
    assert not d.unet.training and not d.text_encoders[0].training  # frozen parts stay in eval mode


def test_diffusion_loss_alone_sends_gradient_to_e(model):
    e = torch.randn(2, model.diffusion.text_encoders[0].config.hidden_size, requires_grad=True)
    torch.manual_seed(0)
    model.diffusion.loss(e, model.diffusion.posterior(make_batch(2))).backward()
    assert e.grad.abs().sum() > 0


def test_transfer_prompts_name_the_image_object_at_the_configured_rate(tiny_models):
    from uniemo.loading import load_sd

    sd = load_sd(tiny_models[1])
    objects = ["balloon", None, "cake"] * 100
    (plain,), named = joint.FrozenDiffusion(sd, FusionConfig()).prompt_ids_for(objects)
    assert (plain == plain[0]).all() and not named.any()
    for template, expected in [("{placeholder} {object}", ["<emo>balloon", "<emo>", "<emo>cake"]),
                               ("{placeholder} {article} {object}", ["<emo>aballoon", "<emo>", "<emo>acake"])]:
        always = joint.FrozenDiffusion(sd, FusionConfig(object_prompt_p=1.0, transfer_prompt=template))
        (ids,), named = always.prompt_ids_for(objects[:3])
        texts = sd.tokenizer.batch_decode(ids)
        assert [t.replace(" ", "").replace("<|endoftext|>", "").replace("<|startoftext|>", "") for t in texts] == expected
        assert named.tolist() == [True, False, True]
    torch.manual_seed(0)
    (half,), named = joint.FrozenDiffusion(sd, FusionConfig(object_prompt_p=0.5)).prompt_ids_for(objects)
    assert torch.equal((half != plain).any(dim=1), named)
    assert not named[1::3].any()  # an image without an object keeps the plain prompt
    assert 0.4 < named[0::3].float().mean() < 0.6


def test_a_named_object_leaves_the_object_term_out_of_e():
    cfg = FusionConfig(use_alpha=False)
    fusion = UniEmoFusion(cfg, vision_dim=8, text_dims=6, head_hidden=4)
    torch.manual_seed(0)
    feats = {k: torch.randn(2, 8) for k in ("cls", "scene", "object")}
    named = fusion(feats, None, torch.tensor([True, False]))
    without = UniEmoFusion(FusionConfig(use_alpha=False, features=["cls", "scene"]), 8, 6, 4)
    without.mappers.load_state_dict({k: v for k, v in fusion.mappers.state_dict().items() if not k.startswith("object")})
    assert torch.allclose(named[0], without(feats)[0], atol=1e-6)
    assert torch.allclose(named[1], fusion(feats)[1]) and not torch.allclose(named[1], without(feats)[1])


def test_partners_share_the_emotion_and_only_chosen_samples_get_one():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    chosen = torch.tensor([True, True, True, True, False, False, False])
    for seed in range(20):
        torch.manual_seed(seed)
        source = joint.same_emotion_partners(labels, chosen)
        assert torch.equal(labels[source], labels)
        assert (source[:3] != torch.arange(3)).all()  # each has another sample of its emotion
        assert source[3:].tolist() == [3, 4, 5, 6]  # no partner for emotion 2; the rest not chosen


def test_transfer_samples_take_their_partner_condition_when_configured(tiny_models):
    model = build_joint(tiny_models, FusionConfig(object_prompt_p=1.0, object_prompt_partner=True))
    model.diffusion.object_prompt_p = 1.0
    batch = make_batch(4)
    batch["label"] = torch.tensor([3, 3, 5, 5])
    conditions = []
    model.condition = lambda *args, **kw: conditions.append(args) or joint.JointModel.condition(model, *args, **kw)
    model(batch)
    out, labels, named, source = conditions[0]
    assert named.all() and sorted(source.tolist()) == [0, 1, 2, 3] and (source != torch.arange(4)).all()
    e, _ = joint.JointModel.condition(model, out, labels, named, source)
    own, _ = joint.JointModel.condition(model, out, labels, named)
    assert torch.allclose(e, own[source], atol=1e-6)


@pytest.mark.parametrize("override, message", [("object_prompt_p: 1.5", "object_prompt_p 1.5 is out of range"),
                                               ("cond_warmup_steps: -5", "cond_warmup_steps -5 is negative"),
                                               ("transfer_prompt: '{object}'", "transfer_prompt '{object}' is not a "
                                                "valid template (no {placeholder} or no {object})"),
                                               ("transfer_prompt: '{placeholder} {obj}'", "(KeyError: 'obj')")])
def test_fusion_setting_out_of_range_is_a_one_line_error(tiny_models, tiny_emoset, tmp_path, capsys, override,
                                                         message):
    from uniemo.cli import main

    run1 = write_run1(tiny_models, tiny_emoset, tmp_path / "run1")
    (tmp_path / "o.yaml").write_text(f"fusion: {{{override}}}\n")
    code = main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data",
                 str(tiny_emoset), "--out", str(tmp_path / "r2"), "--config", str(tmp_path / "o.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_a_stage1_run_without_queries_needs_fusion_features_without_experts(tiny_models, tiny_emoset, tmp_path,
                                                                              capsys):
    from uniemo.cli import main
    from uniemo.config import load_config, save_config

    run1 = write_run1(tiny_models, tiny_emoset, tmp_path / "run1")
    cfg = load_config(run1 / "config.yaml")
    cfg.understanding.queries = "none"
    save_config(cfg, run1 / "config.yaml")
    code = main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(tiny_emoset),
                 "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no expert queries (queries: none), so there are no object or scene features" in err
    assert "fusion: {features: [cls]}" in err and not (tmp_path / "r2").exists()


def test_mapper_lr_puts_the_mappers_alone_in_their_own_groups(model):
    from uniemo.config import OptimConfig
    from uniemo.training import param_groups

    backbone = {"backbone": 1e-4, "backbone_no_decay": 1e-4}
    shared = param_groups(model, OptimConfig(lr=1e-2, backbone_lr=1e-4), model.understanding.backbone,
                          model.fusion.mappers)
    assert {g["name"]: g["lr"] for g in shared} == {"new": 1e-2, "new_no_decay": 1e-2, **backbone}
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=1e-2, backbone_lr=1e-4, mapper_lr=1e-3),
                                                  model.understanding.backbone, model.fusion.mappers)}
    assert {n: g["lr"] for n, g in groups.items()} == {"new": 1e-2, "new_no_decay": 1e-2, "mappers": 1e-3,
                                                         "mappers_no_decay": 1e-3, **backbone}
    in_mappers = {id(p) for p in model.fusion.mappers.parameters()}
    assert {id(p) for n in ("mappers", "mappers_no_decay") for p in groups[n]["params"]} == in_mappers
    assert not in_mappers & {id(p) for n in ("new", "new_no_decay") for p in groups[n]["params"]}
    assert any(id(p) not in in_mappers for p in model.fusion.parameters())  # the back-projection stays at lr


def test_frozen_diffusion_is_outside_the_state_dict_but_moves_with_the_model(tiny_models):
    m = build_joint(tiny_models)
    assert not any(k.startswith("diffusion") for k in m.state_dict())
    assert all(not n.startswith("diffusion") for n, _ in m.named_parameters())
    m.to(torch.float64)
    assert next(m.diffusion.unet.parameters()).dtype == torch.float64


def test_alpha_switch_and_ce_ablation_run(tiny_models):
    m = build_joint(tiny_models, FusionConfig(features=["cls", "scene"], use_alpha=False, cond_loss="ce"))
    loss, logs = m(make_batch(2))
    assert torch.isfinite(loss) and "alpha_object" not in logs
    assert set(m.fusion.mappers) == {"cls", "scene"}


def test_a_few_joint_steps_reduce_the_joint_loss_on_a_fixed_batch(tiny_models):
    m = build_joint(tiny_models)
    batch = make_batch(4, seed=1)
    params = [p for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def evaluate():
        torch.manual_seed(123)  # the same noise and timesteps each time
        with torch.no_grad():
            return m(batch)

    before, before_logs = evaluate()
    m.train()
    for step in range(12):
        torch.manual_seed(step)
        loss, _ = m(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, after_logs = evaluate()
    assert after < 0.9 * before
    assert after_logs["loss_cond"] < before_logs["loss_cond"]


def test_unet_gradient_checkpointing_keeps_the_loss_and_the_gradients(tiny_models):
    """``fusion.unet_gradient_checkpointing`` trades time for memory; L_joint and its gradients stay."""
    results = []
    for checkpointing in (False, True):
        m = build_joint(tiny_models, checkpointing=checkpointing).train()
        torch.manual_seed(5)
        loss, _ = m(make_batch(2, seed=1))
        loss.backward()
        results.append((loss.detach(), [p.grad for p in m.fusion.parameters() if p.grad is not None]))
        assert m.diffusion.unet.is_gradient_checkpointing == checkpointing
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert plain_grads and torch.allclose(plain, checkpointed)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, checkpointed_grads))


def test_emotion_space_matches_direct_statistics_and_round_trips(model, tmp_path):
    batches = [make_batch(4, seed=s) for s in range(3)]
    space = joint.compute_emotion_space(model.understanding, batches, ["cls", "scene"], num_classes=8)
    with torch.no_grad():
        outs = [model.understanding(b["pixel_values"]) for b in batches]
    labels = torch.cat([b["label"] for b in batches])
    cls = torch.cat([o.cls for o in outs])
    for k in labels.unique().tolist():
        rows = cls[labels == k]
        assert torch.allclose(space.mean["cls"][k], rows.mean(0), atol=1e-5)
        assert torch.allclose(space.std["cls"][k], rows.std(0, unbiased=False), atol=1e-4)
    assert int(space.count.sum()) == 12
    space.save(tmp_path / "space.safetensors")
    back = joint.EmotionSpace.load(tmp_path / "space.safetensors")
    assert set(back.mean) == {"cls", "scene"} and torch.equal(back.count, space.count)
    k = int(labels[0])
    z = back.draw(torch.Generator().manual_seed(5))
    assert torch.equal(z["cls"], back.draw(torch.Generator().manual_seed(5))["cls"])
    assert torch.allclose(back.at(k, z)["cls"], space.mean["cls"][k] + space.std["cls"][k] * z["cls"])
    in_memory = joint.EmotionSpace({f: space.mean[f] for f in ("scene", "cls")},
                                   {f: space.std[f] for f in ("scene", "cls")}, space.count)
    assert all(torch.equal(in_memory.draw(torch.Generator().manual_seed(5))[f], z[f]) for f in z)  # as loaded
    empty = joint.EmotionSpace({"cls": torch.zeros(2, 3)}, {"cls": torch.ones(2, 3)}, torch.tensor([4, 0]))
    with pytest.raises(UniEmoError, match="no training images"):
        empty.at(1, {"cls": torch.zeros(3)})


def test_collate_gives_clip_and_vae_views():
    from PIL import Image
    from torchvision import transforms

    collate = joint.JointCollate(transforms.Compose([transforms.Resize(32), transforms.ToTensor()]), vae_size=16)
    samples = [{"pixel_values": Image.new("RGB", (40, 40), (255, 0, 0)), "label": 3, "scene": "beach", "object": None,
                "index": 7}]
    batch = collate(samples)
    assert batch["pixel_values"].shape == (1, 3, 32, 32) and batch["vae_pixels"].shape == (1, 3, 16, 16)
    assert batch["vae_pixels"][0, 0].min() == 1.0 and batch["vae_pixels"][0, 1].max() == -1.0
    assert batch["label"].tolist() == [3] and batch["object"] == [None] and batch["index"].tolist() == [7]
    vae_only = joint.JointCollate(vae_size=16)(samples)
    assert "pixel_values" not in vae_only and torch.equal(vae_only["vae_pixels"], batch["vae_pixels"])


def test_cached_posteriors_draw_the_latents_that_encoding_would(tiny_models, tiny_emoset):
    from uniemo.data import open_dataset
    from uniemo.loading import load_sd

    sd = load_sd(tiny_models[1])
    diffusion = joint.FrozenDiffusion(sd, FusionConfig())
    train_set = open_dataset(tiny_emoset, "emoset", "train")
    cached = joint.cache_posteriors(sd.vae, train_set, 64, batch_size=16, device="cpu")
    assert cached[0].shape[0] == len(train_set) and (cached[1] > 0).all()
    batch = joint.JointCollate(vae_size=64)([train_set[i] for i in (5, 0, 11)])
    encoded = diffusion.posterior(batch)
    diffusion.posteriors = cached
    for got, want in zip(diffusion.posterior(batch), encoded):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    e = torch.randn(3, sd.text_encoder.config.hidden_size)
    torch.manual_seed(1)
    from_cache = diffusion.loss(e, diffusion.posterior(batch))
    torch.manual_seed(1)
    assert diffusion.loss(e, encoded).item() == pytest.approx(from_cache.item(), rel=1e-5)


def test_stage2_losses_are_the_same_with_cached_latents(tiny_models, tiny_emoset, tmp_path):
    import json

    from uniemo.cli import main

    run1 = write_run1(tiny_models, tiny_emoset, tmp_path / "run1")
    curves = {}
    for on in (False, True):
        (tmp_path / f"{on}.yaml").write_text(f"fusion: {{cache_latents: {str(on).lower()}}}\n")
        out = tmp_path / f"r2-{on}"
        assert main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(tiny_emoset),
                     "--out", str(out), "--max-steps", "3", "--batch-size", "8", "--alpha-table", "counts",
                     "--config", str(tmp_path / f"{on}.yaml")]) == 0
        curves[on] = [json.loads(line)["train_loss_diff"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert curves[True] == pytest.approx(curves[False], rel=1e-5)


def write_run1(tiny_models, data_root, out, kind="emoset"):
    """A stage-1 run directory in the real layout (untrained understanding on the tiny CLIP)."""
    from transformers import CLIPVisionModel

    from uniemo.config import preset, save_config
    from uniemo.data import open_dataset
    from uniemo.loading import load_clip
    from uniemo.understanding import AttributeBank, UniEmoUnderstanding, save_attributes

    torch.manual_seed(0)
    clip = load_clip(tiny_models[0])
    cfg = preset("tiny")
    cfg.clip_path = str(tiny_models[0])
    cfg.understanding.query_len = 4
    cfg.stage2.num_workers = 0
    vision = CLIPVisionModel(clip.model.config.vision_config)
    vision.load_state_dict(clip.model.vision_model.state_dict())
    ds = open_dataset(data_root, kind, "train")
    cfg.understanding.num_classes = len(ds.class_names)
    UniEmoUnderstanding(vision, cfg.understanding, clip.model.config.projection_dim,
                        ds.class_names).save_pretrained(out)
    save_attributes(out, AttributeBank.encode(clip, ds.scene_vocab), AttributeBank.encode(clip, ds.object_vocab))
    save_config(cfg, out / "config.yaml")
    return out


def test_train_joint_command_writes_a_usable_stage2_run(tiny_models, tiny_emoset, tmp_path, capsys):
    import json

    from uniemo.cli import main
    from uniemo.pipeline import UniEmoPipeline

    run1 = write_run1(tiny_models, tiny_emoset, tmp_path / "run1")
    run2 = tmp_path / "run2"
    args = ["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(tiny_emoset),
            "--out", str(run2), "--max-steps", "2", "--batch-size", "8", "--alpha-table", "counts"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "val accuracy: stage 1" in printed and f"found Stable Diffusion 1.5 in {tiny_models[1]}" in printed
    for name in ("fusion.safetensors", "alpha_table.json", "emotion_space.safetensors", "model.safetensors",
                 "attributes.json", "config.yaml", "metrics.jsonl", "implicit_feedback.json",
                 "preprocessor_config.json"):  # the run preprocesses as its CLIP did, without it
        assert (run2 / name).is_file(), name
    assert json.loads((run2 / "preprocessor_config.json").read_text()) == json.loads(
        (tiny_models[0] / "preprocessor_config.json").read_text())
    feedback = json.loads((run2 / "implicit_feedback.json").read_text())
    assert set(feedback) == {"val", "test"} and 0 <= feedback["val"]["run2"] <= 1
    table = json.loads((run2 / "alpha_table.json").read_text())
    assert table["method"] == "counts"
    rows = list(table["scene"].values()) + list(table["object"].values())
    assert rows and all(abs(sum(r) - 1) < 1e-4 and len(r) == 8 for r in rows)
    assert json.loads((run2 / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    out = UniEmoPipeline.from_pretrained(run2)(emotion="anger", num_images=1, num_inference_steps=2, generator=0)
    assert out.metadata[0]["matched_scene"] in table["scene"]
    # a second run into the same directory must be asked for explicitly
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def write_folder_dataset(root, classes, per_class=4):
    """A folder dataset in FI's layout: one folder of JPEGs per emotion, no annotations."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(root / name / f"{name}_{k}.jpg")
    return root


def test_train_joint_on_a_folder_dataset_weighs_scenes_and_objects_by_one(tiny_models, tmp_path):
    import json

    import numpy as np

    from uniemo.cli import main
    from uniemo.pipeline import UniEmoPipeline
    from uniemo.vocab import EMOTIONS

    fi = write_folder_dataset(tmp_path / "FI", EMOTIONS)
    run1, run2 = write_run1(tiny_models, fi, tmp_path / "run1", kind="fi"), tmp_path / "run2"
    assert main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(fi),
                 "--dataset", "fi", "--out", str(run2), "--max-steps", "2", "--batch-size", "8"]) == 0
    table = json.loads((run2 / "alpha_table.json").read_text())
    assert table["scene"] == {} and table["object"] == {}
    pipe = UniEmoPipeline.from_pretrained(run2)
    awe = pipe(emotion="awe", num_images=1, num_inference_steps=2, generator=0)
    assert awe.metadata[0]["alpha_scene"] is None and awe.metadata[0]["matched_object"] is None
    mix = pipe(mix={"awe": 0.5, "fear": 0.5}, object="house", num_images=1, num_inference_steps=2, generator=0)
    assert mix.metadata[0]["prompt"].endswith("house")
    # α = 1: the fusion's e is its unweighted mapped features, as with α switched off
    pipe.fusion.cfg.use_alpha = False
    unweighted = pipe(emotion="awe", num_images=1, num_inference_steps=2, generator=0)
    assert np.asarray(unweighted.images[0]).tobytes() == np.asarray(awe.images[0]).tobytes()


def test_train_joint_refuses_other_emotions_and_counts_without_annotations(tiny_models, tiny_emoset, tmp_path,
                                                                           capsys):
    from uniemo.cli import main
    from uniemo.vocab import EMOTIONS

    run1 = write_run1(tiny_models, tiny_emoset, tmp_path / "run1")
    roi = write_folder_dataset(tmp_path / "roi", ["anger", "disgust", "fear", "joy", "sadness", "surprise"], 2)
    fi = write_folder_dataset(tmp_path / "fi", EMOTIONS, 2)
    for data, kind, extra, message in [
            (roi, "emotionroi", [], "was trained on amusement, awe, contentment, excitement, anger, disgust, fear, "
                                    "sadness but"),
            (fi, "fi", ["--alpha-table", "counts"], "this dataset annotates none: use --alpha-table classifier")]:
        out = tmp_path / f"run2-{kind}"
        assert main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(data),
                     "--dataset", kind, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and not out.exists()


def test_train_joint_epochs_sets_its_length(tiny_models, tiny_emoset, tmp_path):
    import json

    from uniemo.cli import main
    from uniemo.config import load_config
    from uniemo.data import open_dataset

    run1 = write_run1(tiny_models, tiny_emoset, tmp_path / "run1")
    run2 = tmp_path / "run2"
    assert main(["train", "joint", "--run", str(run1), "--sd", str(tiny_models[1]), "--data", str(tiny_emoset),
                 "--out", str(run2), "--epochs", "3", "--batch-size", "64", "--alpha-table", "counts"]) == 0
    per_epoch = -(-len(open_dataset(tiny_emoset, "emoset", "train")) // 64)
    lines = [json.loads(line) for line in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert load_config(run2 / "config.yaml").stage2.epochs == 3


def test_classifier_table_from_clip_features(tiny_models, tiny_emoset):
    from torch.utils.data import DataLoader

    from uniemo.data import clip_transforms, open_dataset
    from uniemo.loading import load_clip
    from uniemo.understanding import AttributeBank

    clip = load_clip(tiny_models[0])
    ds = open_dataset(tiny_emoset, "emoset", "train")
    banks = AttributeBank.encode(clip, ds.scene_vocab), AttributeBank.encode(clip, ds.object_vocab)
    loader = DataLoader(ds, batch_size=64, collate_fn=joint.JointCollate(clip_transforms(clip.image_processor, False)))
    table = joint.build_table("classifier", ds, *banks, clip, loader, seed=0)
    assert table.scene.shape == (len(banks[0].names), 8) and table.object.shape == (len(banks[1].names), 8)
    assert torch.allclose(table.scene.sum(1), torch.ones(len(banks[0].names)), atol=1e-5)
    assert torch.allclose(table.object.sum(1), torch.ones(len(banks[1].names)), atol=1e-5)


def test_patch_feature_ablation_trains_m_patch(tiny_models):
    m = build_joint(tiny_models, FusionConfig(features=["cls", "patch", "scene", "object"]))
    loss, _ = m(make_batch(2))
    loss.backward()
    assert m.fusion.mappers["patch"][0].weight.grad.abs().sum() > 0
