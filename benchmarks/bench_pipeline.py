"""Benchmark the generation overhead of UniEmoPipeline and check stage 2 at full size.

1. Speed: UniEmoPipeline vs a plain StableDiffusionPipeline (``--xl``: StableDiffusionXLPipeline)
   with the same components, steps, batch and guidance (tiny random models): median wall time
   and the ratio (target <= 1.05).
2. Full size (``--full``): an SD-1.5-size UNet and VAE, SD 1.5's text encoder, and a vit-b32
   understanding branch, random weights, on CPU: one joint-training step (forward + backward
   of L_joint) and one 2-step generation at the UNet's resolution, with peak RSS.
3. SD XL at full size (``--full-xl``): SD XL's UNet (2.6 B parameters) and both text encoders,
   random weights in bf16, on CPU: one UNet forward at 1024 px (batch 1), then one
   joint-training step at 1024 px at batch 1 and 2, with peak RSS (the basis of the README's
   memory estimate).

    .venv/bin/python benchmarks/bench_pipeline.py [--steps 10] [--batch 2] [--repeats 5] [--xl] [--full] [--full-xl]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from transformers import CLIPModel

from uniemo.demo import foundation
from uniemo.config import CLIP_ARCHITECTURES, FusionConfig, UnderstandingConfig, preset
from uniemo.fusion import CorrelationTable, PromptEncoder, UniEmoFusion, table_from_counts
from uniemo.joint import EmotionSpace, FrozenDiffusion, JointModel
from uniemo.pipeline import Stage2Contents, UniEmoPipeline
from uniemo.understanding import AttributeBank, UniEmoUnderstanding

WORDS = ["a photo of a bench in a forest", "a dog on a beach", "a cup in a room", "a skull in a desert"]


def build(clip_preset: str | None, sd_preset: str | None, query_len: int, xl: bool = False):
    """Random models in memory: (understanding, fusion, table, space, banks, sd pipeline)."""
    torch.manual_seed(0)
    tokenizer = foundation.train_clip_tokenizer(WORDS, vocab_size=300)
    clip = CLIPModel(foundation.clip_config(clip_preset, vocab_size=len(tokenizer)))
    if sd_preset is not None:  # SD 1.5's text encoder, and SD XL's first, is CLIP-L's text tower (width 768)
        tokenizer.model_max_length = 77
        text_config = foundation.clip_config("vit-l14", vocab_size=len(tokenizer)).text_config
    else:
        text_config = clip.config.text_config
    sd = foundation.random_sd(text_config, tokenizer, sd_preset, xl)
    sd.set_progress_bar_config(disable=True)

    ucfg = UnderstandingConfig(query_len=query_len)
    understanding = UniEmoUnderstanding(clip.vision_model, ucfg, clip.config.projection_dim).eval()
    dim, proj = clip.config.vision_config.hidden_size, clip.config.projection_dim
    banks = [AttributeBank(names, torch.nn.functional.normalize(torch.randn(len(names), proj), dim=-1))
             for names in (["beach", "forest", "room"], ["dog", "cup", "skull", "bench"])]
    labels = torch.arange(8).repeat(4)
    table = CorrelationTable(understanding.class_names, banks[0].names, table_from_counts(labels, labels % 3, 3, 8),
                             banks[1].names, table_from_counts(labels, labels % 4, 4, 8), method="counts")
    fusion = UniEmoFusion(FusionConfig(), dim, PromptEncoder.of(sd, "<emo>").widths, ucfg.head_hidden)
    space = EmotionSpace({k: torch.randn(8, dim) for k in ("cls", "scene", "object")},
                         {k: torch.rand(8, dim) for k in ("cls", "scene", "object")}, torch.full((8,), 10))
    return understanding, fusion, table, space, banks, sd


def uniemo_pipeline(understanding, fusion, table, space, banks, sd, cfg) -> UniEmoPipeline:
    """The pipeline on these parts, reading images at the understanding branch's CLIP size."""
    from transformers import CLIPImageProcessor

    from uniemo.data import clip_transforms

    side = understanding.vision.config.image_size
    transform = clip_transforms(CLIPImageProcessor(size={"shortest_edge": side}, crop_size=side), train=False)
    return UniEmoPipeline.from_parts(sd, understanding, fusion, Stage2Contents(cfg, table, space, *banks, transform))


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Median wall times of ``a`` and ``b``, run alternately so that load from other processes
    on a shared machine hits both alike."""
    a(), b()  # warm-up
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_overhead(steps: int, batch: int, repeats: int, xl: bool) -> None:
    understanding, fusion, table, space, banks, sd = build(None, None, query_len=8, xl=xl)
    pipe = uniemo_pipeline(understanding, fusion, table, space, banks, sd, preset("tiny"))
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(batch)]  # noqa: E731
    plain, uniemo = timed_pair(
        lambda: sd(prompt=["a photo of a bench"] * batch, num_inference_steps=steps, guidance_scale=7.5,
                   generator=gens()),
        lambda: pipe(emotion="awe", num_images=batch, num_inference_steps=steps, guidance_scale=7.5, generator=0),
        repeats)
    print(f"[overhead] tiny models, batch {batch}, {steps} steps, CFG 7.5, median of {repeats}: "
          f"{type(sd).__name__} {plain * 1000:.1f} ms, UniEmoPipeline {uniemo * 1000:.1f} ms, "
          f"ratio {uniemo / plain:.3f} (target <= 1.05)")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_full() -> None:
    start = time.perf_counter()
    understanding, fusion, table, space, banks, sd = build("vit-b32", "sd15", query_len=32)
    size = CLIP_ARCHITECTURES["vit-b32"]["image_size"]
    resolution = sd.unet.config.sample_size * sd.vae_scale_factor
    params = sum(p.numel() for p in sd.unet.parameters()) / 1e6
    print(f"[full] built SD-1.5-size UNet ({params:.0f} M params) + vit-b32 understanding in "
          f"{time.perf_counter() - start:.1f} s, peak RSS {peak_rss_gib():.2f} GiB")

    model = JointModel(understanding, fusion, FrozenDiffusion(sd, FusionConfig()), *banks, table).train()
    batch = {"pixel_values": torch.randn(1, 3, size, size), "vae_pixels": torch.rand(1, 3, resolution, resolution) * 2 - 1,
             "label": torch.tensor([1]), "scene": ["beach"], "object": ["dog"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    start = time.perf_counter()
    loss, logs = model(batch)
    loss.backward()
    optimizer.step()
    print(f"[full] one joint-training step (batch 1, {resolution} px): {time.perf_counter() - start:.1f} s, "
          f"L_joint {loss.item():.4f} ({', '.join(f'{k} {v:.4f}' for k, v in logs.items())}), "
          f"peak RSS {peak_rss_gib():.2f} GiB")
    del optimizer, loss

    pipe = uniemo_pipeline(understanding, fusion, table, space, banks, sd, preset("vit-b32"))
    start = time.perf_counter()
    out = pipe(emotion="awe", num_images=1, num_inference_steps=2, generator=0)
    print(f"[full] one 2-step generation with CFG: {time.perf_counter() - start:.1f} s, image {out.images[0].size}, "
          f"peak RSS {peak_rss_gib():.2f} GiB")


def bench_full_xl() -> None:
    start = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: fp32 would need 14 GiB for the weights alone
    try:
        understanding, fusion, table, space, banks, sd = build("vit-b32", "sdxl", query_len=32, xl=True)
    finally:
        torch.set_default_dtype(torch.float32)
    unet = sd.unet
    params = sum(p.numel() for p in unet.parameters()) / 1e9
    print(f"[full-xl] built SD XL's UNet ({params:.2f} B params) and text encoders in bf16, random weights: "
          f"{time.perf_counter() - start:.1f} s, peak RSS {peak_rss_gib():.2f} GiB")
    with torch.no_grad():
        latents = torch.randn(1, 4, 128, 128, dtype=torch.bfloat16)
        added = {"text_embeds": torch.randn(1, 1280, dtype=torch.bfloat16),
                 "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]], dtype=torch.bfloat16)}
        start = time.perf_counter()
        out = unet(latents, torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, 2048, dtype=torch.bfloat16),
                   added_cond_kwargs=added).sample
    print(f"[full-xl] one UNet forward, batch 1, 1024 px (128 x 128 latents), bf16: {time.perf_counter() - start:.1f} s, "
          f"output {tuple(out.shape)}, peak RSS {peak_rss_gib():.2f} GiB")
    understanding.float()
    fusion.float()
    model = JointModel(understanding, fusion, FrozenDiffusion(sd, FusionConfig()), *banks, table).train()
    size = CLIP_ARCHITECTURES["vit-b32"]["image_size"]
    for b in (1, 2):
        batch = {"pixel_values": torch.randn(b, 3, size, size), "vae_pixels": torch.rand(b, 3, 1024, 1024) * 2 - 1,
                 "label": torch.arange(b), "scene": ["beach"] * b, "object": ["dog"] * b}
        start = time.perf_counter()
        loss, _ = model(batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        print(f"[full-xl] one joint-training step (forward + backward, batch {b}, 1024 px, bf16 SD XL, fp32 vit-b32 "
              f"branch): {time.perf_counter() - start:.1f} s, L_joint {loss.item():.4f}, peak RSS {peak_rss_gib():.2f} GiB")
        del loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--xl", action="store_true", help="measure the overhead on a tiny SD XL")
    parser.add_argument("--full", action="store_true", help="also run the SD 1.5 full-size check (minutes on CPU)")
    parser.add_argument("--full-xl", action="store_true", help="also run the SD XL full-size check (minutes, 16 GiB)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    bench_overhead(args.steps, args.batch, args.repeats, args.xl)
    if args.full:
        bench_full()
    if args.full_xl:
        bench_full_xl()


if __name__ == "__main__":
    main()
