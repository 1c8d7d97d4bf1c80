"""Train the embedded default's tiny CLIP and Stable Diffusion from scratch on a synthetic dataset.

Writes OUT/clip/ (a Hugging Face CLIP directory) and OUT/sd/ (a diffusers Stable Diffusion
directory) that every later step loads like real pretrained weights, OUT/judge/ (a second CLIP,
trained longer, that only measures: the demo's object kept and Sem-C), plus
OUT/pretrain_report.json (zero-shot scene / object accuracy on held-out and on generated
images, times, config, data hash). Reruns with the same data and config are cached.

example:
  uniemo synth data/world && uniemo pretrain-base models/base --data data/world
"""

from __future__ import annotations

import argparse

from uniemo.commands import require_finite_positive, require_positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output directory (created; replaced when retrained)")
    parser.add_argument("--data", required=True, metavar="DIR", help="an EmoSet-format dataset, e.g. from `uniemo synth`")
    parser.add_argument("--steps-scale", type=float, default=1.0, metavar="F",
                        help="multiply every default step count by F (e.g. 0.1 for a quick look)")
    parser.add_argument("--clip-steps", type=int, metavar="N", help="CLIP training steps (overrides --steps-scale)")
    parser.add_argument("--judge-steps", type=int, metavar="N",
                        help="steps of the judge, the CLIP that only measures (overrides --steps-scale)")
    parser.add_argument("--vae-steps", type=int, metavar="N", help="VAE training steps (overrides --steps-scale)")
    parser.add_argument("--unet-steps", type=int, metavar="N", help="UNet training steps (overrides --steps-scale)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--force", action="store_true", help="retrain even when a cached result matches")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from uniemo.demo.pretrain_base import STEP_COUNTS, PretrainConfig, pretrain_base

    require_finite_positive(steps_scale=args.steps_scale)
    overrides = {name: value for name in STEP_COUNTS if (value := getattr(args, name)) is not None}
    require_positive(threads=args.threads, **overrides)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(PretrainConfig(seed=args.seed).scaled(args.steps_scale), **overrides)
    pretrain_base(args.out, args.data, cfg, force=args.force)
    return 0
