"""Run the whole UniEmo method offline on this machine and write a report (start here).

Steps: synth -> foundation models (the shipped ones, or `pretrain-base` on this world) ->
stage 1 -> evaluator -> stage 2 -> generation (8 emotions, transfer onto neutral objects, fusion
and a fusion sweep) and the plain-prompt baseline -> generation metrics -> explicit feedback and
stage 3 -> understanding accuracy of every stage -> OUT/report.html and OUT/report.json.
Re-running reuses finished steps; a step that was interrupted is redone."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-out", metavar="DIR", help="output directory (default demo-out)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny step counts: a first look in about two minutes (figures are not meaningful)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--train-per-emotion", type=int, metavar="N",
                        help="data-scarce run: stages 1-3 train on N images per emotion (e.g. 20); the evaluator "
                             "(and --train-foundation) still use the whole world")
    parser.add_argument("--train-foundation", action="store_true",
                        help="train the tiny CLIP and Stable Diffusion on this run's world (about 6 more minutes) "
                             "instead of copying the ones shipped with uniemo (`make foundation` builds those)")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from uniemo.commands import require_positive
    from uniemo.demo.runner import PLANS, run_demo

    require_positive(train_per_emotion=args.train_per_emotion)
    plan = dataclasses.replace(PLANS["quick" if args.quick else "full"], train_per_emotion=args.train_per_emotion,
                               train_foundation=args.train_foundation)
    report = run_demo(Path(args.out), plan, args.seed)
    print(f"report: {report}")
    return 0
