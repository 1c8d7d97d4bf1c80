"""Stable Diffusion XL (paper Table IV): the layout is recognised, e reaches both text encoders
as diffusers' SD XL pipeline encodes prompts, and stage 2, generation, transfer, mixes and
editing run through the same commands as for SD 1.5, on a tiny SD XL built with the real
diffusers and transformers classes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from uniemo.cli import main
from uniemo.errors import UniEmoError
from uniemo.fusion import PromptEncoder
from uniemo.loading import load_sd, sd_layout


@pytest.fixture(scope="module")
def xl(tiny_xl_models):
    return load_sd(tiny_xl_models[1])


def word_rows(encoder: PromptEncoder, word: str) -> torch.Tensor:
    """e that makes the placeholder read as ``word``: its token-embedding rows in every encoder."""
    rows = []
    for tokenizer, text_encoder in zip(encoder.tokenizers, encoder.text_encoders):
        (token,) = tokenizer(word, add_special_tokens=False).input_ids
        rows.append(text_encoder.get_input_embeddings().weight[token])
    return torch.cat(rows)[None]


def test_both_layouts_are_recognised_and_named(tiny_models, xl):
    from diffusers import StableDiffusionXLPipeline

    assert isinstance(xl, StableDiffusionXLPipeline) and sd_layout(xl) == "sdxl"
    assert sd_layout(load_sd(tiny_models[1])) == "sd15"


def test_a_broken_or_foreign_sd_directory_is_one_line(tiny_xl_models, tmp_path):
    broken = tmp_path / "xl"
    shutil.copytree(tiny_xl_models[1], broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(UniEmoError, match="no text_encoder_2/ in .*SD XL also text_encoder_2/"):
        load_sd(broken)
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(UniEmoError, match="names 'StableDiffusion3Pipeline': expected a diffusers Stable Diffusion"):
        load_sd(broken)


def test_e_reaches_both_encoders_as_diffusers_encodes_the_word(xl):
    encoder = PromptEncoder.of(xl, "<emo>")
    assert encoder.xl and encoder.widths == [64, 48]
    with torch.no_grad():
        got = encoder(encoder.ids(["a <emo>"]), word_rows(encoder, "bench"))
        embeds, _, pooled, _ = xl.encode_prompt("a bench", device="cpu", do_classifier_free_guidance=False)
    assert got["prompt_embeds"].shape == (1, 32, 112)
    assert torch.allclose(got["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(got["pooled_prompt_embeds"], pooled, atol=1e-5)


def test_the_pooled_embedding_depends_on_e_through_the_second_encoder_only(xl):
    encoder = PromptEncoder.of(xl, "<emo>")
    e, change = torch.randn(2, 112, generator=torch.Generator().manual_seed(0))
    # a random change: the encoders' layer norms cancel a shift of every component by the same amount
    first, second = e.clone(), e.clone()
    first[:64] += change[:64]
    second[64:] += change[64:]
    with torch.no_grad():
        base, a, b = (encoder(encoder.ids(["<emo>"]), x[None]) for x in (e, first, second))
    assert torch.equal(a["pooled_prompt_embeds"], base["pooled_prompt_embeds"])
    assert (b["pooled_prompt_embeds"] - base["pooled_prompt_embeds"]).abs().max() > 1e-3
    assert (a["prompt_embeds"][..., :64] - base["prompt_embeds"][..., :64]).abs().max() > 1e-3
    assert torch.equal(a["prompt_embeds"][..., 64:], base["prompt_embeds"][..., 64:])


@pytest.mark.parametrize("zeros", [True, False])
def test_guidance_is_against_what_diffusers_uses_for_an_empty_negative_prompt(xl, zeros):
    encoder = PromptEncoder.of(xl, "<emo>")
    encoder.zero_negative = zeros
    xl.register_to_config(force_zeros_for_empty_prompt=zeros)
    with torch.no_grad():
        got = encoder.negative(encoder(encoder.ids(["<emo>", "<emo>"]), torch.randn(2, 112)))
        _, negative, _, negative_pooled = xl.encode_prompt("a bench", device="cpu", num_images_per_prompt=2)
    assert torch.allclose(got["negative_prompt_embeds"], negative, atol=1e-6)
    assert torch.allclose(got["negative_pooled_prompt_embeds"], negative_pooled, atol=1e-6)
    assert bool((negative == 0).all()) == zeros


def test_joint_steps_with_sdxl_reduce_the_loss_and_feed_e_through_the_added_conditions(tiny_xl_models):
    from test_joint import build_joint, make_batch

    model = build_joint(tiny_xl_models)
    assert model.fusion.widths == [64, 48] and model.fusion.mappers["cls"][-1].out_features == 112
    calls = []
    hook = model.diffusion.unet.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["added_cond_kwargs"]),
                                                         with_kwargs=True)
    e = torch.randn(2, 112, requires_grad=True)
    torch.manual_seed(0)
    model.diffusion.loss(e, model.diffusion.posterior(make_batch(2))).backward()
    hook.remove()
    assert calls[0]["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    assert e.grad[:, 64:].abs().sum() > 0 and e.grad[:, :64].abs().sum() > 0
    batch = make_batch(4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(8):
        torch.manual_seed(step % 2)  # the same noise and timesteps at every other step
        loss, _ = model(batch)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-2] < losses[0] and losses[-1] < losses[1]


@pytest.fixture(scope="module")
def xl_run2(tiny_xl_models, tiny_emoset, tmp_path_factory):
    from test_joint import write_run1

    root = tmp_path_factory.mktemp("xl_runs")
    run1 = write_run1(tiny_xl_models, tiny_emoset, root / "run1")
    run2 = root / "run2"
    code = main(["train", "joint", "--run", str(run1), "--sd", str(tiny_xl_models[1]), "--data", str(tiny_emoset),
                 "--out", str(run2), "--max-steps", "2", "--batch-size", "3", "--alpha-table", "counts"])
    assert code == 0
    return run2


@pytest.mark.e2e
def test_train_joint_records_the_layout_and_generate_uses_the_native_size(xl_run2, tmp_path):
    from uniemo.config import load_config

    assert load_config(xl_run2 / "config.yaml").sd_layout == "sdxl"
    out = tmp_path / "gen"
    assert main(["generate", "--run", str(xl_run2), "--emotion", "awe", "-n", "2", "--steps", "2", "--out", str(out)]) == 0
    images = sorted(out.rglob("*.png"))
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    from PIL import Image

    sizes = {Image.open(p).size for p in images if "grid" not in p.name}
    assert sizes == {(64, 64)}  # the tiny SD XL's native size: 16 latents x 4
    assert [m["seed"] for m in meta] == [0, 1] and all(m["emotion"] == "awe" for m in meta)


@pytest.mark.e2e
def test_sdxl_transfer_mix_and_edit_run_and_repeat(xl_run2, tiny_emoset):
    from PIL import Image

    from uniemo.pipeline import UniEmoPipeline

    pipe = UniEmoPipeline.from_pretrained(xl_run2)
    assert pipe.layout == "sdxl" and pipe.config.force_zeros_for_empty_prompt
    transfer = pipe(emotion="fear", object="bench", num_images=2, num_inference_steps=2, generator=5)
    again = pipe(emotion="fear", object="bench", num_images=2, num_inference_steps=2, generator=5, batch_size=1)
    assert np.allclose(np.stack(transfer.images).astype(int), np.stack(again.images).astype(int), atol=2)
    assert transfer.metadata[0]["prompt"] == "<emo> a bench"  # the tiny preset's transfer prompt
    mix = pipe(mix={"awe": 1, "fear": 1}, num_images=1, num_inference_steps=2, generator=0)
    assert mix.metadata[0]["mix"] == {"awe": 0.5, "fear": 0.5}
    source = Image.open(next(tiny_emoset.rglob("*.jpg")))
    edited = pipe.edit(source, emotion="anger", strength=0.5, num_inference_steps=4, generator=1)
    assert edited.images[0].size == pipe.fit(source).size and edited.metadata[0]["strength"] == 0.5
    assert pipe.read(edited.images).shape == (1, 8)
    kept = pipe.edit([source, source], emotion="anger", object=["bench", None], strength=0.5, num_inference_steps=4,
                     generator=1)  # one prompt per image through both text encoders
    assert [m["prompt"] for m in kept.metadata] == ["<emo> a bench", "<emo>"]
    assert np.abs(np.asarray(kept.images[1], dtype=int) - np.asarray(edited.images[0], dtype=int)).max() <= 2
    with pytest.raises(UniEmoError, match="inverted edits need Stable Diffusion 1.5"):
        pipe.edit(source, emotion="anger", invert=True)


@pytest.mark.e2e
def test_a_run_refuses_the_other_layout(xl_run2, tiny_models):
    from uniemo.pipeline import UniEmoPipeline

    with pytest.raises(UniEmoError, match="trained with Stable Diffusion XL but .* holds Stable Diffusion 1.5"):
        UniEmoPipeline.from_pretrained(xl_run2, sd_path=tiny_models[1])


@pytest.mark.slow
def test_full_size_sdxl_unet_forward_in_bf16():
    """SD XL's UNet at full size (2.6 B parameters), random weights, one forward at its native
    1024 px; peak memory and time: benchmarks/bench_pipeline.py --full-xl, docs/BENCHMARKS.md."""
    from diffusers import UNet2DConditionModel

    from uniemo.config import SDXL_UNET

    torch.set_default_dtype(torch.bfloat16)
    try:
        unet = UNet2DConditionModel(**SDXL_UNET).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    assert 2.5e9 < sum(p.numel() for p in unet.parameters()) < 2.6e9
    added = {"text_embeds": torch.randn(1, 1280, dtype=torch.bfloat16),
             "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], dtype=torch.bfloat16)}
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 128, 128, dtype=torch.bfloat16), torch.tensor([500]),
                   encoder_hidden_states=torch.randn(1, 77, 2048, dtype=torch.bfloat16), added_cond_kwargs=added).sample
    assert out.shape == (1, 4, 128, 128) and torch.isfinite(out).all()
