"""Emotion transfer and emotion fusion on what the demo's plan does not name: other neutral
objects and other emotion pairs, through the same commands the demo runs.

For each object: `uniemo generate --emotion all --object O` (8 emotions x N images) and
`uniemo evaluate generation`, which reports Emo-A and object_kept (the tiny CLIP names O
zero-shot). For each pair: `uniemo generate --mix A=0.5,B=0.5` (N images) and its mix_mass (the
evaluator's probability of A and B together). Targets (the world-v3 issue): object kept >= 0.6
and Emo-A >= 0.5 per object; mean mix mass >= 0.6. Prints a table, writes JSON.

  .venv/bin/python benchmarks/generation_modes.py --demo demo-out     # about 2 min on an idle machine
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _evidence import fmt, publish, table, uniemo

from uniemo.demo.runner import PATHS, PLANS
from uniemo.demo.synth import NEUTRAL_OBJECTS

OTHER_PAIRS = (("excitement", "disgust"), ("awe", "anger"), ("amusement", "sadness"), ("contentment", "fear"))


def main() -> None:
    plan = PLANS["full"]
    others = [o.lower() for o in NEUTRAL_OBJECTS if o.lower() not in plan.transfer_objects]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"), help="`uniemo demo` output (default demo-out)")
    parser.add_argument("--work", type=Path, help="where the images go (default DEMO/held-out)")
    parser.add_argument("--objects", nargs="+", default=others)
    parser.add_argument("--pairs", nargs="+", default=[f"{a},{b}" for a, b in OTHER_PAIRS], help="A,B pairs")
    parser.add_argument("-n", type=int, default=8, help="images per emotion and object, and per pair (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work or args.demo / "held-out"
    common = ["--run", args.demo / "run2-joint", "--steps", plan.denoising_steps, "--seed", args.seed, "-n", args.n]
    rows = {"transfer": {}, "fusion": {}}
    for o in args.objects:
        uniemo("generate", *common, "--emotion", "all", "--object", o, "--out", work / "transfer" / o)
        m = evaluate(args, work / "transfer" / o)
        rows["transfer"][o] = {"emo_a": m["emo_a"]["all"], "object_kept": m["object_kept"]["all"]}
    for pair in args.pairs:
        a, b = pair.split(",")
        uniemo("generate", *common, "--mix", f"{a}=0.5,{b}=0.5", "--out", work / "fusion")
    per_mix = evaluate(args, work / "fusion")["mix_mass"]["per_mix"]
    rows["fusion"] = {folder: m["mass"] for folder, m in per_mix.items()}
    rows["fusion_mean"] = sum(rows["fusion"].values()) / len(rows["fusion"])
    transfer = table(["object", "Emo-A", "object kept"],
                     [[o, fmt(r["emo_a"]), fmt(r["object_kept"])] for o, r in rows["transfer"].items()], "lrr")
    fusion = table(["pair at 0.5/0.5", "mix mass"], [[k, fmt(v)] for k, v in rows["fusion"].items()] +
                   [["mean", fmt(rows["fusion_mean"])]], "lr")
    publish(work / "generation_modes.json", rows, "Transfer and fusion beyond the demo's plan", f"{transfer}\n{fusion}")


def evaluate(args, images: Path) -> dict:
    """As the demo measures transfer and fusion: FID, which they do not report, on CLIP features."""
    out = images / "generation_metrics.json"
    uniemo("evaluate", "generation", "--images", images, "--real", args.demo / "data", "--clip",
           args.demo / PATHS["judge"], "--evaluator", args.demo / "evaluator", "--seed", args.seed, "--out", out,
           "--max-real", PLANS["full"].fid_real_per_emotion, "--inception", "none")
    return json.loads(out.read_text())["metrics"]


if __name__ == "__main__":
    main()
