"""GPU check of the path past one CPU (issue 18): one command, random weights at full size.

1. Stage 1, training images/s for vit-b32 and vit-l14: UniEmoUnderstanding (L_U) against plain
   CLIPVisionModel + linear-head fine-tuning, same batch, bf16 autocast on a GPU.
2. Stage 2, one L_joint step (SD 1.5 size, 512 px): s/step and peak memory at batch 8 and 16,
   with the frozen UNet's gradient checkpointing off and on (``fusion.unet_gradient_checkpointing``),
   and with the VAE posteriors looked up instead of encoded (``fusion.cache_latents``).
3. Generation s/image (SD 1.5, 512 px, 25 steps, fp16 on a GPU): UniEmoPipeline against
   diffusers' StableDiffusionPipeline with the same components, and UniEmoPipeline with
   ``enable_model_cpu_offload()`` (GPU only).
   Editing s/image (SD 1.5): SDEdit against the start from the photo's DDIM inversion.

``--xl`` does 2 and 3 with SD XL (1024 px, its two text encoders; stage 2 at batch 1 and 4)
against StableDiffusionXLPipeline.
4. Data loading images/s from a folder of 512-px JPEGs (EmoSet format) with num_workers 0/4/8.

Prints one table and writes JSON. ``--tiny`` runs tiny models at small sizes on any device, so
CI runs the whole script (tests/test_bench_gpu.py) and it cannot rot.

    python benchmarks/bench_gpu.py [--tiny] [--xl] [--parts stage1 stage2 generation edit data] [--json F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from bench_pipeline import build, uniemo_pipeline

from uniemo.config import FusionConfig, UnderstandingConfig, preset
from uniemo.data import clip_transforms, collate, open_dataset
from uniemo.demo import foundation
from uniemo.demo.synth import write_synthetic
from uniemo.joint import FrozenDiffusion, JointModel, encode_posterior
from uniemo.pipeline import dtype_name
from uniemo.understanding import AttributeBank, UniEmoUnderstanding, stage1_step


@dataclass(frozen=True)
class Sizes:
    clip_presets: tuple[str | None, ...]  # None: the tiny CLIP
    sd_preset: str | None
    stage1_batch: int
    stage2_batches: tuple[int, ...]
    generation_batch: int
    steps: int
    image_size: int  # of the JPEG folder
    images: int
    workers: tuple[int, ...]
    repeats: int


PARTS = ("stage1", "stage2", "generation", "edit", "data")
FULL = Sizes(("vit-b32", "vit-l14"), "sd15", 64, (8, 16), 8, 25, 512, 512, (0, 4, 8), 5)
FULL_XL = Sizes(("vit-l14",), "sdxl", 64, (1, 4), 2, 25, 512, 512, (0, 4, 8), 3)
TINY = Sizes((None,), None, 4, (2,), 2, 2, 64, 48, (0, 2), 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """(seconds per call after one warm-up call, peak GPU memory in GiB; None on CPU)."""
    fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return (time.perf_counter() - start) / repeats, peak


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def training_step(model, loss_fn, batch, device):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with autocast(device):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bench_stage1(sizes: Sizes, device: torch.device) -> list[dict]:
    from transformers import CLIPModel, CLIPVisionModel

    rows = []
    for name in sizes.clip_presets:
        config = foundation.clip_config(name, vocab_size=300)
        clip = CLIPModel(config)
        embeddings = torch.nn.functional.normalize(torch.randn(2, config.projection_dim), dim=-1)
        banks = [AttributeBank(names, embeddings) for names in (["beach", "forest"], ["dog", "cup"])]
        size, b = config.vision_config.image_size, sizes.stage1_batch
        batch = {"pixel_values": torch.randn(b, 3, size, size, device=device), "label": torch.arange(b, device=device) % 8,
                 "scene": ["beach"] * b, "object": ["dog"] * b}
        ours = UniEmoUnderstanding(clip.vision_model, UnderstandingConfig(), config.projection_dim).to(device).train()
        step = stage1_step(*banks)
        plain = torch.nn.ModuleDict({"vision": CLIPVisionModel(config.vision_config),
                                     "head": torch.nn.Linear(config.vision_config.hidden_size, 8)}).to(device).train()

        def plain_loss(m, batch):
            pooled = m["vision"](pixel_values=batch["pixel_values"]).pooler_output
            return torch.nn.functional.cross_entropy(m["head"](pooled), batch["label"])

        for label, model, loss_fn in (("UniEmo stage 1", ours, lambda m, x: step(m, x, 0)[0]),
                                      ("CLIPVisionModel + linear", plain, plain_loss)):
            seconds, peak = timed(training_step(model, loss_fn, batch, device), device, sizes.repeats)
            rows.append({"part": "stage 1", "what": f"{label}, {name or 'tiny'}, batch {b}",
                         "value": b / seconds, "unit": "img/s", "peak_gib": peak})
    return rows


def bench_stage2(understanding, fusion, table, banks, sd, sizes: Sizes, device: torch.device) -> list[dict]:
    model = JointModel(understanding, fusion, FrozenDiffusion(sd, FusionConfig()), *banks, table).to(device).train()
    size = understanding.backbone.config.image_size
    resolution = sd.unet.config.sample_size * sd.vae_scale_factor
    rows = []
    for b in sizes.stage2_batches:
        batch = {"pixel_values": torch.randn(b, 3, size, size, device=device),
                 "label": torch.arange(b, device=device) % 8, "vae_pixels": torch.rand(b, 3, resolution, resolution, device=device) * 2 - 1,
                 "scene": ["beach"] * b, "object": ["dog"] * b}
        cached = tuple(p.cpu() for p in encode_posterior(sd.vae, batch["vae_pixels"]))
        for checkpointing, posteriors in ((False, None), (True, None), (False, cached)):
            (sd.unet.enable_gradient_checkpointing if checkpointing else sd.unet.disable_gradient_checkpointing)()
            model.diffusion.posteriors = posteriors
            batch["index"] = torch.arange(b)
            what = (f"L_joint step, {resolution} px, batch {b}, UNet checkpointing {'on' if checkpointing else 'off'}"
                    + (", VAE latents cached" if posteriors else ""))
            try:
                seconds, peak = timed(training_step(model, lambda m, x: m(x)[0], batch, device), device, sizes.repeats)
                rows.append({"part": "stage 2", "what": what, "value": seconds, "unit": "s/step", "peak_gib": peak})
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append({"part": "stage 2", "what": what, "value": None, "unit": "out of memory", "peak_gib": None})
    sd.unet.disable_gradient_checkpointing()
    model.diffusion.posteriors = None
    return rows


def sampling_pipeline(understanding, fusion, table, space, banks, sd, device: torch.device):
    """(UniEmoPipeline on ``device`` with the SD and the mappers in fp16 on a GPU, else fp32; the dtype)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sd.to(device, dtype)
    fusion.to(dtype)
    return uniemo_pipeline(understanding, fusion, table, space, banks, sd, preset("vit-b32")).to(device), dtype


def bench_generation(understanding, fusion, table, space, banks, sd, sizes: Sizes, device: torch.device) -> list[dict]:
    pipe, dtype = sampling_pipeline(understanding, fusion, table, space, banks, sd, device)
    b, steps = sizes.generation_batch, sizes.steps
    runs = {"UniEmoPipeline": lambda: pipe(emotion="awe", num_images=b, num_inference_steps=steps, generator=0),
            type(sd).__name__: lambda: sd(prompt=["a photo of a dog"] * b, num_inference_steps=steps,
                                          generator=torch.Generator(device).manual_seed(0))}
    if device.type == "cuda":
        offloaded = uniemo_pipeline(understanding, fusion, table, space, banks, sd, preset("vit-b32"))
        offloaded.enable_model_cpu_offload()
        runs["UniEmoPipeline with model CPU offload"] = lambda: offloaded(emotion="awe", num_images=b,
                                                                          num_inference_steps=steps, generator=0)
    rows = []
    for label, run in runs.items():
        seconds, peak = timed(run, device, sizes.repeats)
        rows.append({"part": "generation", "what": f"{label}, {steps} steps, {dtype_name(dtype)}, batch {b}",
                     "value": seconds / b, "unit": "s/image", "peak_gib": peak})
    return rows


def bench_edit(understanding, fusion, table, space, banks, sd, sizes: Sizes, device: torch.device) -> list[dict]:
    """s/edit of a photo at strength 0.8 (SD 1.5; diffusers has no SD XL DiffEdit): SDEdit against
    the start from the photo's DDIM inversion (``uniemo edit --invert``)."""
    pipe, dtype = sampling_pipeline(understanding, fusion, table, space, banks, sd, device)
    b, steps = sizes.generation_batch, sizes.steps
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    photos = [Image.new("RGB", (side, side), (90, 140, 200))] * b
    rows = []
    for invert, label in ((False, "SDEdit"), (True, "from the DDIM inversion")):
        seconds, peak = timed(lambda: pipe.edit(photos, emotion="awe", strength=0.8, num_inference_steps=steps,
                                                generator=0, invert=invert), device, sizes.repeats)
        rows.append({"part": "edit", "what": f"{label}, strength 0.8, {steps} steps, {dtype_name(dtype)}, batch {b}",
                     "value": seconds / b, "unit": "s/image", "peak_gib": peak})
    return rows


def bench_loading(sizes: Sizes, data: Path | None) -> list[dict]:
    """Training-split images/s from ``data`` (an EmoSet-format folder), or from the synthetic world
    written at the benchmark's size (at 512 px that takes minutes of one core)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = data or write_synthetic(Path(tmp) / "world", num_images=sizes.images * 10 // 7 + 16,
                                       size=sizes.image_size)
        return time_loading(root, sizes.workers)


def time_loading(root: Path, workers: tuple[int, ...]) -> list[dict]:
    from transformers import CLIPImageProcessor

    dataset = open_dataset(root, split="train", transform=clip_transforms(CLIPImageProcessor(), train=True))
    with Image.open(dataset.items[0].path) as first:
        size = max(first.size)
    rows = []
    for n_workers in workers:
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=n_workers, collate_fn=collate)
        start = time.perf_counter()
        n = sum(len(batch["label"]) for batch in loader)
        rows.append({"part": "data", "what": f"{size}-px JPEGs, num_workers {n_workers}",
                     "value": n / (time.perf_counter() - start), "unit": "img/s", "peak_gib": None})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| part | what | value | peak GPU memory |", "|---|---|---:|---:|"]
    for r in rows:
        value = r["unit"] if r["value"] is None else f"{r['value']:.3g} {r['unit']}"
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
        lines.append(f"| {r['part']} | {r['what']} | {value} | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CI, any device)")
    parser.add_argument("--xl", action="store_true", help="stage 2 and generation with SD XL")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--data", type=Path, help="time data loading on this EmoSet-format folder "
                        "(default: write the synthetic world at the benchmark's image size)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="what to time (default: all; "
                        "edit only with SD 1.5)")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL_XL if args.xl else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    rows = bench_stage1(sizes, device) if "stage1" in args.parts else []
    understanding, fusion, table_, space, banks, sd = build(sizes.clip_presets[0], sizes.sd_preset, query_len=32,
                                                            xl=args.xl)
    understanding, fusion = understanding.to(device), fusion.to(device)
    sd.to(device)
    if "stage2" in args.parts:
        rows += bench_stage2(understanding, fusion, table_, banks, sd, sizes, device)
    models = (understanding.eval(), fusion.eval(), table_, space, banks, sd, sizes, device)
    if "generation" in args.parts:
        rows += bench_generation(*models)
    if "edit" in args.parts and not args.xl:
        rows += bench_edit(*models)
    if "data" in args.parts:
        rows += bench_loading(sizes, args.data)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"bench_gpu ({'tiny' if args.tiny else 'full size'}{', SD XL' if args.xl else ''}, {device_name}, torch {torch.__version__})\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "tiny": args.tiny, "xl": args.xl, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
