"""uniemo pretrain-base: the tiny CLIP and SD it trains load like real weights, the report
holds the zero-shot figures, results are cached by config and data, and CLIP training learns."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import pytest
import torch

from uniemo.demo import pretrain_base as pb
from uniemo.cli import main
from uniemo.demo import synth
from uniemo.demo.synth import WORLD_VERSION
from uniemo.vocab import EMOTIONS, normalise_attribute

# Small enough for a test on two shared cores, large enough to exercise every step.
TINY = pb.PretrainConfig(
    clip_width=32, clip_layers=3, clip_text_layers=2, clip_heads=2, clip_steps=3, judge_steps=4, clip_batch=16,
    vae_channels=[8, 16, 16], vae_steps=2, vae_batch=4, unet_channels=[16, 32], unet_steps=2, unet_batch=4,
    eval_images=2, eval_steps=2)


@pytest.fixture(scope="module")
def trained(tiny_emoset, tmp_path_factory):
    """(out, report, log lines) of one tiny pretrain-base run."""
    out = tmp_path_factory.mktemp("pretrain") / "base"
    lines: list[str] = []
    report = pb.pretrain_base(out, tiny_emoset, TINY, log=lines.append)
    return out, report, lines


@pytest.fixture(scope="module")
def world(tiny_emoset):
    return pb.load_world(tiny_emoset, "train", 64)


def test_outputs_load_with_transformers_and_diffusers(trained):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out, report, _ = trained
    clip = CLIPModel.from_pretrained(out / "clip", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(out / "clip", local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(out / "clip", local_files_only=True)
    pipe = StableDiffusionPipeline.from_pretrained(out / "sd", local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False, feature_extractor=None)
    assert clip.config.vision_config.image_size == 64 and processor.crop_size == {"height": 64, "width": 64}
    assert len(tokenizer) == clip.config.text_config.vocab_size
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.config.cross_attention_dim == clip.config.text_config.hidden_size
    assert pipe.vae.config.scaling_factor == pytest.approx(report["vae_scaling_factor"])
    # The SD text encoder is the CLIP text tower, weight for weight.
    for name, value in pipe.text_encoder.state_dict().items():
        torch.testing.assert_close(value, clip.text_model.state_dict()[name])
    image = pipe("a photo of a cake", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 64, 64)
    judge = CLIPModel.from_pretrained(out / "judge", local_files_only=True)
    assert {k: v.shape for k, v in judge.state_dict().items()} == {k: v.shape for k, v in clip.state_dict().items()}
    assert (out / "judge" / "tokenizer.json").read_bytes() == (out / "clip" / "tokenizer.json").read_bytes()
    assert not torch.equal(judge.visual_projection.weight, clip.visual_projection.weight), "the judge is a model of its own"
    assert not list(out.parent.glob(".base*")), "no temporary directory is left beside OUT"


def test_outputs_load_through_uniemo_loading(trained):
    from uniemo.loading import load_clip, load_sd

    out, _, _ = trained
    bundle = load_clip(out / "clip")
    pipe = load_sd(out / "sd")
    assert bundle.tokenizer.model_max_length == pipe.tokenizer.model_max_length


def test_report_holds_accuracies_times_and_hash(trained, tiny_emoset):
    out, report, lines = trained
    saved = json.loads((out / pb.REPORT).read_text())
    assert saved == json.loads(json.dumps(report))
    for figures in (saved["zero_shot"], saved["zero_shot"]["judge"]):
        for kind in ("real", "generated"):
            for attribute in ("scene", "object"):
                assert 0.0 <= figures[kind][attribute] <= 1.0
    assert saved["zero_shot"]["generated"]["images"] == TINY.eval_images
    assert saved["data_hash"] == pb.data_hash(tiny_emoset)
    assert saved["world"]["version"] == WORLD_VERSION and saved["world"]["num_images"] == 240  # uniemo synth's
    assert saved["config"]["clip_steps"] == TINY.clip_steps
    assert saved["loss"]["judge"]["steps"] == TINY.judge_steps and saved["times_s"]["judge"] > 0
    assert saved["times_s"]["training"] > 0
    assert any(line.startswith("zero-shot on") for line in lines)


def test_rerun_is_cached_and_changed_config_retrains(trained, tiny_emoset, monkeypatch):
    out, report, _ = trained
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached run must not train")

    monkeypatch.setattr(pb, "train_clip", must_not_train)
    lines: list[str] = []
    assert pb.pretrain_base(out, tiny_emoset, TINY, log=lines.append) == report
    assert lines and lines[0].startswith("cached")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    class Retrained(Exception):
        pass

    def fails(*args, **kwargs):
        raise Retrained

    monkeypatch.setattr(pb, "train_clip", fails)
    with pytest.raises(Retrained):
        pb.pretrain_base(out, tiny_emoset, dataclasses.replace(TINY, clip_steps=4), log=lines.append)
    # A run that fails leaves the previous output whole.
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_same_seed_same_weights_though_models_train_side_by_side(trained, tiny_emoset, tmp_path):
    from safetensors.torch import load_file

    out, _, _ = trained
    pb.pretrain_base(tmp_path / "again", tiny_emoset, TINY, log=lambda line: None)
    for weights in ("clip/model.safetensors", "judge/model.safetensors", "sd/vae/diffusion_pytorch_model.safetensors",
                    "sd/unet/diffusion_pytorch_model.safetensors"):
        first, second = load_file(out / weights), load_file(tmp_path / "again" / weights)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), weights


def test_a_failing_job_stops_the_job_beside_it(tiny_emoset, tmp_path, monkeypatch):
    """When the VAE fails, its error comes out at once and the CLIP beside it stops at its next
    step, rather than training on to its last step first."""
    clip_steps: list[int] = []
    optimise = pb.optimise

    def counting(params, steps, lr, gradients, desc, stop=None):
        def counted(step):
            if desc == "clip":
                clip_steps.append(step)
            return gradients(step)
        return optimise(params, steps, lr, counted, desc, stop)

    def vae_fails(*args, **kwargs):
        for _ in range(500):  # until the CLIP has started
            if len(clip_steps) >= 3:
                break
            time.sleep(0.01)
        raise ValueError("vae failed")

    monkeypatch.setattr(pb, "optimise", counting)
    monkeypatch.setattr(pb, "train_vae", vae_fails)
    with pytest.raises(ValueError, match="vae failed"):
        pb.pretrain_base(tmp_path / "out", tiny_emoset, dataclasses.replace(TINY, clip_steps=100_000), log=print)
    assert 3 <= len(clip_steps) < 1000
    assert not (tmp_path / "out").exists()


def test_unet_batch_split_across_workers_matches_the_whole_batch(world):
    """Each worker's share of the loss is scaled so the shares add up to the whole batch's mean:
    one worker and two report the same losses step after step (a lost or mis-scaled share would
    change them). Adam turns float-rounding differences of near-zero gradients into steps of up
    to lr, hence the weights' tolerance."""
    captions = pb.Captions.build(world.scene_names, world.object_names)
    n = len(world.images)
    latents = (torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.full((n, 4, 16, 16), 0.1))
    states = torch.randn(len(captions.texts) + 1, 4, 32, generator=torch.Generator().manual_seed(2))
    runs = []
    for workers in (1, 2):
        cfg = dataclasses.replace(TINY, unet_steps=4, unet_batch=6, workers=workers)
        torch.manual_seed(0)
        unet, losses = pb.train_unet(world, latents, 1.0, captions, states, cfg, torch.Generator().manual_seed(0))
        runs.append((losses, unet.state_dict()))
    (losses_1, weights_1), (losses_2, weights_2) = runs
    assert losses_2 == pytest.approx(losses_1, rel=1e-4)
    for name, value in weights_1.items():
        torch.testing.assert_close(weights_2[name], value, rtol=0, atol=cfg.unet_lr)


def test_data_hash_follows_annotations_and_images(tiny_emoset, tmp_path):
    copy = shutil.copytree(tiny_emoset, tmp_path / "copy")
    assert pb.data_hash(copy) == pb.data_hash(tiny_emoset)
    entry = json.loads((copy / "train.json").read_text())[0]
    annotation = copy / entry[-1]
    data = json.loads(annotation.read_text())
    annotation.write_text(json.dumps(dict(data, scene="desert" if data["scene"] != "desert" else "beach")))
    changed = pb.data_hash(copy)
    assert changed != pb.data_hash(tiny_emoset)
    (copy / entry[-2]).write_bytes((copy / entry[-2]).read_bytes() + b"\0")
    assert pb.data_hash(copy) != changed


def test_clip_contrastive_loss_falls(world):
    captions = pb.Captions.build(world.scene_names, world.object_names)
    cfg = dataclasses.replace(TINY, clip_steps=40, clip_batch=32, clip_lr=2e-3)
    tokenizer = pb.train_tokenizer(captions, cfg)
    torch.manual_seed(0)
    clip = pb.build_clip(cfg, len(tokenizer), tokenizer.model_max_length)
    _, losses = pb.train_clip(clip, world, captions, tokenizer, cfg, torch.Generator().manual_seed(0))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.3, (first, last)


def test_tokenizer_encodes_every_caption_word(world):
    captions = pb.Captions.build(world.scene_names, world.object_names)
    tokenizer = pb.train_tokenizer(captions, TINY)
    words = {w for text in captions.texts for w in text.split()}
    for word in words:
        ids = tokenizer(word).input_ids[1:-1]  # without start and end of text
        assert tokenizer.unk_token_id not in ids, word
        assert tokenizer.decode(ids).strip() == word
    longest = max(len(tokenizer(t).input_ids) for t in captions.texts)
    assert tokenizer.model_max_length >= longest


def test_tokenizer_ids_are_the_same_in_every_process():
    """The BPE trainer numbers tokens, and orders merges of equal count, in hash-map order, which
    changes between processes; the demo's captions must still give the same ids, and so must the
    emotion words no caption holds (the baseline's prompts), or the same seed gives other figures."""
    script = ("import json; from uniemo.demo import pretrain_base as pb; from uniemo.demo.synth import SCENES, OBJECTS; "
              "from uniemo.vocab import EMOTIONS; "
              "t = pb.train_tokenizer(pb.Captions.build(list(SCENES), list(OBJECTS)), pb.PretrainConfig()); "
              "print(json.dumps([t.get_vocab(), [t(e).input_ids for e in EMOTIONS]], sort_keys=True))")
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = {run.communicate(timeout=120)[0] for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert len(outputs) == 1


def test_captions_name_only_style_scene_and_object():
    captions = pb.Captions.build(["ice skating rink", "beach"], ["balloon", "cake"])
    assert captions.texts[int(captions.full[0, 0, 0, 0])] == "a bright colorful warm striped photo of a balloon in an ice skating rink"
    assert captions.texts[int(captions.full[7, 1, 1, 1])] == "a dark muted cool banded picture of a cake in a beach"
    assert "an ice skating rink" in captions.texts and "a cake" in captions.texts and "a dark colorful warm falling photo" in captions.texts
    world = pb.Captions.build([normalise_attribute(n) for n in synth.SCENES], [normalise_attribute(n) for n in synth.OBJECTS])
    assert not {w for t in world.texts for w in t.split()} & set(EMOTIONS)  # not even "amusement park"
    g = torch.Generator().manual_seed(0)
    style, scene, obj = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, -1, 0]), torch.tensor([1, 0, 1, -1])
    rows = captions.sample(style.repeat(50), scene.repeat(50), obj.repeat(50), g)
    for named, actual in ((captions.style, style), (captions.scene, scene), (captions.object, obj)):
        assert ((named[rows] == actual.repeat(50)) | (named[rows] < 0)).all()
    assert (captions.scene[rows][2::4] < 0).all() and (captions.object[rows][3::4] < 0).all()  # missing: never named
    assert set(captions.style[rows][0::4].tolist()) == {-1, 0}  # full and style-only captions both occur
    full = captions.sample(style, scene.clamp(min=0), obj.clamp(min=0), g, full_only=True)
    assert (captions.style[full] == style).all() and (captions.object[full] >= 0).all()


def test_contrastive_targets_count_partial_captions_as_matches():
    captions = pb.Captions.build(["beach", "desert"], ["balloon", "cake"])
    rows = torch.tensor([int(captions.full[0, 0, 0, 0]), int(captions.scenes[0, 0]), int(captions.objects[1, 0]),
                         int(captions.styles[2, 0])])
    # bright colorful beach+balloon, dark colorful beach+cake, dark colorful desert+cake, bright colorful desert+cake
    style, scene, obj = torch.tensor([0, 2, 2, 0]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    expected = torch.tensor([[True, True, False, False], [False, True, True, True],
                             [False, False, True, True], [False, False, True, False]])
    assert torch.equal(captions.positives(rows, style, scene, obj), expected)
    perfect = torch.where(expected, 10.0, -10.0)
    assert pb.contrastive_loss(perfect, expected) < pb.contrastive_loss(-perfect, expected)


def test_cli_errors_are_one_line(tmp_path, tiny_emoset, capsys):
    assert main(["pretrain-base", str(tmp_path / "out"), "--data", str(tmp_path / "missing")]) == 2
    assert "--data must be an EmoSet-format dataset" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["pretrain-base", str(taken), "--data", str(tiny_emoset)]) == 2
    err = capsys.readouterr().err
    assert "is not a pretrain-base output" in err and len(err.strip().splitlines()) == 1
    assert main(["pretrain-base", str(tmp_path / "o"), "--data", str(tiny_emoset), "--steps-scale", "0"]) == 2
    capsys.readouterr()
    assert main(["pretrain-base", str(tmp_path / "o"), "--data", str(tiny_emoset), "--judge-steps", "0"]) == 2
    assert "--judge-steps 0 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_steps_scale_scales_every_step_count():
    half = pb.PretrainConfig().scaled(0.5)
    full = pb.PretrainConfig()
    for name in ("clip_steps", "judge_steps", "vae_steps", "unet_steps"):
        assert getattr(half, name) == round(getattr(full, name) / 2)
    assert pb.PretrainConfig().scaled(1e-6).clip_steps == 1


def test_vae_crops_and_mirrored_world(world):
    g = torch.Generator().manual_seed(0)
    crop = pb.random_crop(world.images[:4], 32, g)
    assert crop.shape == (4, 3, 32, 32)
    both = pb.mirrored(world)
    n = len(world.images)
    assert torch.equal(both.images[n:], world.images.flip(-1)) and torch.equal(both.scene[n:], world.scene)
    assert torch.equal(both.style[n:], world.style)


def test_unet_attention_levels():
    from uniemo.demo.foundation import unet_config

    assert unet_config(32)["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    low = unet_config(32, attention_at=pb.PretrainConfig().unet_attention)
    assert low["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert low["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D"]


def test_unet_without_middle_block_still_denoises_at_full_size():
    from diffusers import UNet2DConditionModel

    from uniemo.demo.foundation import unet_config

    unet = UNet2DConditionModel(**unet_config(32, channels=[8, 16], attention_at=[False, True], mid_block=False))
    assert unet.mid_block is None
    out = unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 5, 32)).sample
    assert out.shape == (2, 4, 16, 16)


def test_min_snr_weight_caps_only_the_easy_low_noise_steps():
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler(**pb.SD_SCHEDULE)
    t = torch.arange(0, 1000, 37)
    alpha_bar = schedule.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    w = pb.min_snr_weight(schedule, t, 5.0)
    assert torch.allclose(w[snr <= 5], torch.ones(int((snr <= 5).sum())))
    assert (snr > 5).any() and torch.allclose(w[snr > 5], 5 / snr[snr > 5])
    assert bool((w[:-1] <= w[1:] + 1e-6).all())  # more noise, more weight, up to 1
    assert torch.equal(pb.min_snr_weight(schedule, t, 0.0), torch.ones(len(t)))
