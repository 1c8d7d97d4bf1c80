"""Benchmark the generation overhead of UniEmoPipeline and check stage 2 at full size.

1. Speed: UniEmoPipeline vs a plain StableDiffusionPipeline with the same components, steps,
   batch and guidance (tiny random models): median wall time and the ratio (target <= 1.05).
2. Full size (``--full``): an SD-1.5-size UNet and VAE, SD 1.5's text encoder, and a vit-b32
   understanding branch, random weights, on CPU: one joint-training step (forward + backward
   of L_joint) and one 2-step generation at the UNet's resolution, with peak RSS.

    .venv/bin/python benchmarks/bench_pipeline.py [--steps 10] [--batch 2] [--repeats 5] [--full]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from uniemo.demo import foundation
from uniemo.config import CLIP_ARCHITECTURES, FusionConfig, UnderstandingConfig, preset
from uniemo.fusion import CorrelationTable, UniEmoFusion, table_from_counts
from uniemo.joint import EmotionSpace, FrozenDiffusion, JointModel
from uniemo.pipeline import UniEmoPipeline
from uniemo.understanding import AttributeBank, UniEmoUnderstanding

WORDS = ["a photo of a bench in a forest", "a dog on a beach", "a cup in a room", "a skull in a desert"]


def build(clip_preset: str | None, sd_preset: str | None, query_len: int):
    """Random models in memory: (understanding, fusion, table, space, banks, sd pipeline)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = foundation.train_clip_tokenizer(WORDS, vocab_size=300)
    clip = CLIPModel(foundation.clip_config(clip_preset, vocab_size=len(tokenizer)))
    if sd_preset == "sd15":  # SD 1.5's text encoder is CLIP-L's text tower (width 768)
        tokenizer.model_max_length = 77
        text_config = foundation.clip_config("vit-l14", vocab_size=len(tokenizer)).text_config
    else:
        text_config = clip.config.text_config
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(**foundation.unet_config(text_config.hidden_size, sd_preset))
    vae = AutoencoderKL(**foundation.vae_config(sd_preset))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)

    ucfg = UnderstandingConfig(query_len=query_len)
    understanding = UniEmoUnderstanding(clip.vision_model, ucfg, clip.config.projection_dim).eval()
    dim, proj = clip.config.vision_config.hidden_size, clip.config.projection_dim
    banks = [AttributeBank(names, torch.nn.functional.normalize(torch.randn(len(names), proj), dim=-1))
             for names in (["beach", "forest", "room"], ["dog", "cup", "skull", "bench"])]
    labels = torch.arange(8).repeat(4)
    table = CorrelationTable(understanding.class_names, banks[0].names, table_from_counts(labels, labels % 3, 3, 8),
                             banks[1].names, table_from_counts(labels, labels % 4, 4, 8), method="counts")
    fusion = UniEmoFusion(FusionConfig(), dim, text_config.hidden_size, ucfg.head_hidden)
    space = EmotionSpace({k: torch.randn(8, dim) for k in ("cls", "scene", "object")},
                         {k: torch.rand(8, dim) for k in ("cls", "scene", "object")}, torch.full((8,), 10))
    return understanding, fusion, table, space, banks, sd


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


def bench_overhead(steps: int, batch: int, repeats: int) -> None:
    understanding, fusion, table, space, banks, sd = build(None, None, query_len=8)
    pipe = UniEmoPipeline(understanding, fusion, table, space, *banks, sd, preset("tiny"))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(batch)]  # noqa: E731
    plain, uniemo = timed_pair(
        lambda: sd(prompt=["a photo of a bench"] * batch, num_inference_steps=steps, guidance_scale=7.5,
                   generator=gens()),
        lambda: pipe(emotion="awe", num_images=batch, num_inference_steps=steps, guidance_scale=7.5, generator=0),
        repeats)
    print(f"[overhead] tiny models, batch {batch}, {steps} steps, CFG 7.5, median of {repeats}: "
          f"StableDiffusionPipeline {plain * 1000:.1f} ms, UniEmoPipeline {uniemo * 1000:.1f} ms, "
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

    model = JointModel(understanding, fusion, FrozenDiffusion(sd, "<emo>"), *banks, table).train()
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

    pipe = UniEmoPipeline(understanding, fusion, table, space, *banks, sd, preset("vit-b32"))
    start = time.perf_counter()
    out = pipe(emotion="awe", num_images=1, num_inference_steps=2, generator=0)
    print(f"[full] one 2-step generation with CFG: {time.perf_counter() - start:.1f} s, image {out.images[0].size}, "
          f"peak RSS {peak_rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="also run the full-size check (minutes on CPU)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    bench_overhead(args.steps, args.batch, args.repeats)
    if args.full:
        bench_full()


if __name__ == "__main__":
    main()
