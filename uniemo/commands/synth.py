"""Write the synthetic emotional world (the embedded default's data) in EmoSet's format.

Scenes and objects come from EmoSet's vocabulary; emotion is carried by a global style
(brightness and colorfulness), an emotional scene or object, while neutral scenes and objects
occur in every emotion (the rule is in `uniemo.demo.synth`'s documentation). The output is
identical for the same arguments; `--train-per-emotion N` writes the data-scarce split."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="new or empty directory to write the dataset into")
    parser.add_argument("--num-images", type=int, default=4000, help="images in all splits (default 4000)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--label-noise", type=float, default=0.05,
                        help="probability that a label is a random other emotion (default 0.05)")
    parser.add_argument("--train-per-emotion", type=int,
                        help="keep only N training images per emotion (data-scarce split; default: all)")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from uniemo.demo.synth import write_synthetic
    from uniemo.vocab import SPLITS

    start = time.perf_counter()
    out = write_synthetic(args.out, num_images=args.num_images, size=args.size, seed=args.seed,
                          label_noise=args.label_noise, train_per_emotion=args.train_per_emotion,
                          progress=True)
    seconds = time.perf_counter() - start
    counts = {split: len(json.loads((out / f"{split}.json").read_text())) for split in SPLITS}
    print(f"wrote {sum(counts.values()):,} images ({args.size}x{args.size} px, seed {args.seed}, "
          f"label noise {args.label_noise:g}) to {out} in {seconds:.1f} s")
    print("splits: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0
