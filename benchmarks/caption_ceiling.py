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
and B together): what an image showing both emotions in this world can score. ``--mix
--rendered`` has the world's own renderer (`uniemo.demo.synth.render`) draw those crossed images
instead of the SD, exactly: what the evaluator makes of an image of both emotions, with no
generator in the way.

  .venv/bin/python benchmarks/caption_ceiling.py --demo demo-out [--typical | --object O | --mix [--rendered]]
  # about 30 s; --mix --rendered 10 s
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
                               crossed_images, crossings, draw_attributes, world_of)
from uniemo.loading import load_clip
from uniemo.metrics import ClipImageEncoder, ClipZeroShot, class_indices
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
    parser.add_argument("--rendered", action="store_true", help="with --mix: the world's renderer draws the images, "
                        "not the SD")
    args = parser.parse_args()
    if args.rendered and not args.mix:
        parser.error("--rendered goes with --mix")
    if args.guidance is None:
        args.guidance = load_config(args.demo / "run2-joint" / "config.yaml").generation.guidance_scale

    evaluator = Evaluator.from_pretrained(args.demo / PATHS["evaluator"])
    if args.rendered:
        return mix_ceiling(args, rendered_drawer(args, evaluator), evaluator)
    pipe = load_sd(args.demo / PATHS["sd"])
    pipe.set_progress_bar_config(disable=True)
    captions = Captions.build([normalise_attribute(n) for n in SCENES], [normalise_attribute(n) for n in OBJECTS])
    rng = np.random.default_rng(args.seed)
    objects = [normalise_attribute(n) for n in OBJECTS]
    if args.mix:
        return mix_ceiling(args, caption_drawer(args, pipe, captions), evaluator)
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


def caption_drawer(args, pipe, captions):
    """``draw(a, b, seed)``: the SD's images of the crossed captions, half each way round."""
    def draw(a: str, b: str, seed: int):
        prompts = [captions.texts[int(captions.full[(*attributes, 0)])]
                   for attributes in crossings(a, b, args.images_per_emotion)]
        return pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                    generator=torch.Generator().manual_seed(seed)).images
    return draw


def rendered_drawer(args, evaluator):
    """``draw(a, b, seed)``: the world's renderer's crossed images, at the demo's image size.
    Checks first that the evaluator reads the renders of single emotions as the data's."""
    size = world_of(args.demo / PATHS["data"])["size"]

    def draw(a: str, b: str, seed: int):
        return crossed_images(a, b, args.images_per_emotion, size, seed)

    read = [(evaluator.predict_proba(draw(e, e, args.seed)).argmax(-1) == evaluator.class_names.index(e)).float()
            for e in EMOTIONS]
    print(f"renders of one emotion's style, scene and object, read right: {torch.cat(read).mean():.3f}")
    return draw


def mix_ceiling(args, draw, evaluator) -> None:
    """``--mix``: the mix mass of each pair's crossed images, -n images per pair, half each way round."""
    masses = []
    for k, (a, b) in enumerate(PLANS["full"].fusion_pairs + OTHER_PAIRS):
        proba = evaluator.predict_proba(draw(a, b, args.seed + k))
        masses.append(float(proba[:, class_indices(evaluator, [a, b])].sum(-1).mean()))
        read_as = evaluator.class_names[int(proba.mean(0).argmax())]
        print(f"{a}+{b}: mix mass {masses[-1]:.3f}  (read most as {read_as})")
    source = "the world's renderer" if args.rendered else f"the SD, {args.steps} steps, guidance {args.guidance}"
    plan = len(PLANS["full"].fusion_pairs)
    print(f"mix mass of images giving each emotion its own channel: {np.mean(masses):.3f} (the plan's {plan} pairs "
          f"{np.mean(masses[:plan]):.3f}; {args.images_per_emotion} images per pair, {source})")


if __name__ == "__main__":
    main()
