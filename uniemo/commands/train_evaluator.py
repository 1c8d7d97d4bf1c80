"""Train the Emo-A evaluator: an emotion probe on frozen CLIP image features.

The evaluator is independent of every UniEmo run (SPEC §5: it must not be a module the
generator was trained against). It is a linear probe (--hidden 0) or a 2-layer MLP on the
L2-normalised `get_image_features` of the CLIP at --clip; features are computed once, then the
probe is trained with minibatch AdamW. Writes OUT/config.json and OUT/evaluator.safetensors and
prints the probe's accuracy on the dataset's val and test splits."""

from __future__ import annotations

import argparse

from uniemo.commands import require_finite_positive, require_positive
from uniemo.vocab import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", required=True, metavar="DIR", help="local CLIP directory (Hugging Face layout)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset root")
    parser.add_argument("--dataset", choices=KINDS, default="emoset", help="dataset kind (default emoset)")
    parser.add_argument("--out", required=True, metavar="EVAL", help="directory to write the evaluator into")
    parser.add_argument("--hidden", type=int, default=0, help="0 = linear probe (default); N = MLP with N hidden units")
    parser.add_argument("--epochs", type=int, default=100, help="passes over the features (default 100)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (default 1e-2)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per CLIP forward pass (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from uniemo.errors import UniEmoError
    from uniemo.evaluator import train_evaluator
    from uniemo.training import on_main

    if args.hidden < 0:
        raise UniEmoError(f"--hidden {args.hidden} is invalid: use 0 (a linear probe) or a number of hidden units")
    require_positive(epochs=args.epochs, batch_size=args.batch_size)
    require_finite_positive(lr=args.lr)
    evaluator = on_main(lambda: train_evaluator(args.clip, args.data, args.out, kind=args.dataset, hidden=args.hidden,
                                                epochs=args.epochs, lr=args.lr, seed=args.seed,
                                                batch_size=args.batch_size))
    if evaluator is None:  # several processes: the probe is small, so the main one trains it alone
        return 0
    accuracy = ", ".join(f"{split} {acc:.2%}" for split, acc in evaluator.config.accuracy.items())
    print(f"wrote {evaluator.name} to {args.out}: top-1 {accuracy}")
    return 0
