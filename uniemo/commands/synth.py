"""Write the synthetic emotional world (the embedded default's data) in EmoSet's format.

Scenes and objects come from EmoSet's vocabulary; the emotion depends on the (scene, object)
pair, so neither alone determines it (the rule is in `uniemo.synth`'s documentation).
The output is identical for the same arguments."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="new or empty directory to write the dataset into")
    parser.add_argument("--num-images", type=int, default=4000, help="images in all splits (default 4000)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--label-noise", type=float, default=0.05,
                        help="probability that a label is a random other emotion (default 0.05)")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from uniemo.synth import write_synthetic

    start = time.perf_counter()
    out = write_synthetic(args.out, num_images=args.num_images, size=args.size, seed=args.seed,
                          label_noise=args.label_noise, progress=True)
    seconds = time.perf_counter() - start
    counts = {split: len(json.loads((out / f"{split}.json").read_text())) for split in ("train", "val", "test")}
    print(f"wrote {args.num_images:,} images ({args.size}x{args.size} px, seed {args.seed}, "
          f"label noise {args.label_noise:g}) to {out} in {seconds:.1f} s")
    print("splits: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0
