"""The Emo-A ceiling of a demo's tiny Stable Diffusion: what the evaluator reads from images
generated from the *full caption* (style, scene, object) of images of each emotion.

No condition UniEmo fuses can name an image's content better than its caption, so Emo-A of
UniEmo's images is bounded (in expectation) by this figure. It tells a generator that cannot
draw the emotion apart from a condition that does not steer it.

Per emotion, K (style, scene, object) triples are drawn (seeded) from the synthetic world's rule
(`uniemo.demo.synth.draw_attributes`), each prompted with the caption pretrain-base trained the SD
on ("a <style> photo of <object> in <scene>", names as the dataset loader normalises them) at the
demo's guidance and T denoising steps, and scored by DEMO/evaluator. Prints one line per emotion
and the mean.

  .venv/bin/python benchmarks/caption_ceiling.py --demo demo-out            # about 30 s on an idle machine
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from uniemo.config import load_config
from uniemo.demo.runner import PLANS
from uniemo.evaluator import Evaluator
from uniemo.loading import load_sd
from uniemo.demo.pretrain_base import Captions
from uniemo.demo.synth import OBJECTS, SCENES, draw_attributes
from uniemo.vocab import EMOTIONS, normalise_attribute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"), help="`uniemo demo` output (default demo-out)")
    parser.add_argument("-n", "--images-per-emotion", type=int, default=16)
    parser.add_argument("--steps", type=int, default=PLANS["full"].denoising_steps)
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (default: the demo's stage-2 run's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.guidance is None:
        args.guidance = load_config(args.demo / "run2-joint" / "config.yaml").generation.guidance_scale

    pipe = load_sd(args.demo / "foundation" / "sd")
    pipe.set_progress_bar_config(disable=True)
    evaluator = Evaluator.from_pretrained(args.demo / "evaluator")
    captions = Captions.build([normalise_attribute(n) for n in SCENES], [normalise_attribute(n) for n in OBJECTS])
    rng = np.random.default_rng(args.seed)
    hits = []
    for k, emotion in enumerate(EMOTIONS):
        chosen = [draw_attributes(k, rng) for _ in range(args.images_per_emotion)]
        prompts = [captions.texts[int(captions.full[st, s, o, 0])] for st, s, o in chosen]
        images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(args.seed + k)).images
        hit = (evaluator.predict_proba(images).argmax(-1) == k).float()
        hits.append(hit)
        print(f"{emotion:12s} {hit.mean():.3f}")
    print(f"caption ceiling of Emo-A: {torch.cat(hits).mean():.3f} "
          f"({args.images_per_emotion} images per emotion, {args.steps} steps, guidance {args.guidance})")


if __name__ == "__main__":
    main()
