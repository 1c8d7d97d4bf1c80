"""The Emo-A ceiling of a demo's tiny Stable Diffusion: what the evaluator reads from images
generated from the *full caption* (style, scene, object) of images of each emotion.

No condition UniEmo fuses can name an image's content better than its caption, so Emo-A of
UniEmo's images is bounded (in expectation) by this figure. It tells a generator that cannot
draw the emotion apart from a condition that does not steer it.

Per emotion, K (style, scene, object) triples are drawn (seeded) from the synthetic world's rule
(`uniemo.demo.synth.draw_attributes`), each prompted with the caption pretrain-base trained the SD
on ("a <style> photo of <object> in <scene>", names as the dataset loader normalises them) at the
demo's guidance and T denoising steps, and scored by DEMO/evaluator. Prints one line per emotion
and the mean. ``--typical`` prompts every image with the emotion's own style, scene and object
(the most a caption can say of an emotion); ``--object O`` with the emotion's style and scene and
the object O (the caption of an ideal emotion transfer), and also reports how often the tiny
CLIP names O zero-shot (object kept). ``--mix`` gives each emotion of a fusion pair (the demo's
and generation_modes.py's) a channel of its own: half the images in A's style with B's scene and
object, half the other way round, and reports the mix mass (the evaluator's probability of A
and B together): what an image showing both emotions in this world can score.

  .venv/bin/python benchmarks/caption_ceiling.py --demo demo-out [--typical | --object O | --mix]   # about 30 s
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from generation_modes import OTHER_PAIRS

from uniemo.config import load_config
from uniemo.demo.runner import PATHS, PLANS
from uniemo.evaluator import Evaluator
from uniemo.loading import load_sd
from uniemo.demo.pretrain_base import Captions
from uniemo.demo.synth import (EMOTION_OBJECTS, EMOTION_SCENES, EMOTION_STYLES, OBJECTS, SCENES, STYLES,
                               draw_attributes)
from uniemo.loading import load_clip
from uniemo.metrics import ClipImageEncoder, ClipZeroShot
from uniemo.vocab import EMOTIONS, normalise_attribute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"), help="`uniemo demo` output (default demo-out)")
    parser.add_argument("-n", "--images-per-emotion", type=int, default=16)
    parser.add_argument("--steps", type=int, default=PLANS["full"].denoising_steps)
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (default: the demo's stage-2 run's)")
    parser.add_argument("--seed", type=int, default=0)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--typical", action="store_true", help="the emotion's own style, scene and object")
    what.add_argument("--object", help="the emotion's own style and scene with this object")
    what.add_argument("--mix", action="store_true", help="fusion pairs: one emotion's style, the other's scene "
                      "and object")
    args = parser.parse_args()
    if args.guidance is None:
        args.guidance = load_config(args.demo / "run2-joint" / "config.yaml").generation.guidance_scale

    pipe = load_sd(args.demo / "foundation" / "sd")
    pipe.set_progress_bar_config(disable=True)
    evaluator = Evaluator.from_pretrained(args.demo / "evaluator")
    captions = Captions.build([normalise_attribute(n) for n in SCENES], [normalise_attribute(n) for n in OBJECTS])
    rng = np.random.default_rng(args.seed)
    objects = [normalise_attribute(n) for n in OBJECTS]
    if args.mix:
        return mix_ceiling(args, pipe, evaluator, captions)
    judge = ClipZeroShot(ClipImageEncoder(load_clip(args.demo / PATHS["judge"])), objects, "object")
    hits, kept = [], []
    for k, emotion in enumerate(EMOTIONS):
        chosen = [draw_attributes(k, rng) for _ in range(args.images_per_emotion)]
        if args.typical or args.object:
            st = STYLES.index(EMOTION_STYLES[emotion])
            s, o = SCENES.index(EMOTION_SCENES[emotion]), OBJECTS.index(EMOTION_OBJECTS[emotion])
            o = objects.index(normalise_attribute(args.object)) if args.object else o
            chosen = [(st, s, o)] * args.images_per_emotion
        prompts = [captions.texts[int(captions.full[st, s, o, 0])] for st, s, o in chosen]
        images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(args.seed + k)).images
        hit = (evaluator.predict_proba(images).argmax(-1) == k).float()
        hits.append(hit)
        kept.append((judge(images).argmax(-1) == torch.tensor([o for _, _, o in chosen])).float())
        print(f"{emotion:12s} Emo-A {hit.mean():.3f}  object named {kept[-1].mean():.3f}")
    kind = "typical captions" if args.typical else f"captions with {args.object}" if args.object else "captions"
    print(f"caption ceiling of Emo-A ({kind}): {torch.cat(hits).mean():.3f}, object named zero-shot "
          f"{torch.cat(kept).mean():.3f} ({args.images_per_emotion} images per emotion, {args.steps} steps, "
          f"guidance {args.guidance})")


def mix_ceiling(args, pipe, evaluator, captions) -> None:
    """``--mix``: the mix mass of each pair's crossed captions, -n images per pair."""
    def caption(style_of: str, content_of: str) -> str:
        st = STYLES.index(EMOTION_STYLES[style_of])
        s, o = SCENES.index(EMOTION_SCENES[content_of]), OBJECTS.index(EMOTION_OBJECTS[content_of])
        return captions.texts[int(captions.full[st, s, o, 0])]

    masses = []
    for k, (a, b) in enumerate(PLANS["full"].fusion_pairs + OTHER_PAIRS):
        half = args.images_per_emotion // 2
        prompts = [caption(a, b)] * half + [caption(b, a)] * (args.images_per_emotion - half)
        images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(args.seed + k)).images
        masses.append(float(evaluator.predict_proba(images)[:, [EMOTIONS.index(a), EMOTIONS.index(b)]].sum(-1).mean()))
        print(f"{a}+{b}: mix mass {masses[-1]:.3f}  ({prompts[0]!r} / {prompts[-1]!r})")
    print(f"mix mass of captions giving each emotion its own channel: {np.mean(masses):.3f} "
          f"({args.images_per_emotion} images per pair, {args.steps} steps, guidance {args.guidance})")


if __name__ == "__main__":
    main()
