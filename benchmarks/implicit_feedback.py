"""Evidence for implicit feedback (paper Fig. 8): does joint training (stage 2) improve
understanding beyond what the same number of stage-1 epochs gives? For several seeds: test
top-1 after stage 1, after stage 2 on that stage 1, and of a stage-1-only run trained for the
sum of both stages' epochs; mean ± sample standard deviation, and every seed.

Per seed S: `uniemo train understand --preset tiny --epochs E1 --seed S` (the "stage 1" arm),
`uniemo train joint --run THAT --epochs E2 --seed S` (its RUN/implicit_feedback.json holds the
test top-1 before and after), and `uniemo train understand --preset tiny --epochs E1+E2 --seed S`
(the "stage 1 only, same epochs" arm). The first two are the joint runs the evidence scripts share
(DEMO/ablations/joint[-scarceN]/, see _evidence.joint_run). Test top-1 is what each run writes itself (checkpoints
chosen on val, never on test). Finished runs are reused and an interrupted one resumes from its
checkpoint, so re-running the script continues where it stopped.

Reads a `uniemo demo` output directory (data/, foundation/{clip,sd}/); writes the stage-1-only runs
under --work (default DEMO/ablations/implicit[-scarceN]) and the table as JSON (--out, default WORK.json)
and Markdown (beside it). --train-per-emotion N trains all three arms on the data-scarce split.

  .venv/bin/python benchmarks/implicit_feedback.py --demo demo-out
  .venv/bin/python benchmarks/implicit_feedback.py --demo /tmp/dq --seeds 0   # smoke test on a quick demo

Time: about 4 min per seed at the demo's epochs (3 + 6) on session 11's 2-core machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _evidence import (data_note, demo_world, evidence_parser, fmt_seeds, fmt_summary, joint_run, publish, stage1,
                       summarise, table, training_data, work_and_out)

from uniemo.demo.runner import PLANS
from uniemo.io import read_json

FULL = PLANS["full"]


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/implicit[-scarceN]", "WORK.json")
    parser.add_argument("--stage1-epochs", type=int, default=FULL.stage1_epochs,
                        help=f"stage-1 epochs (default {FULL.stage1_epochs}, as the full demo)")
    parser.add_argument("--stage2-epochs", type=int, default=FULL.stage2_epochs,
                        help=f"stage-2 epochs (default {FULL.stage2_epochs}, as the full demo)")
    return parser.parse_args()


def seed_row(args, data: Path, seed: int, work: Path) -> dict[str, float]:
    """The three arms' test top-1 for one seed."""
    run1, run2 = joint_run(args.demo, data, seed, args.stage1_epochs, args.stage2_epochs, args.train_per_emotion)
    first = read_json(run1 / "eval.json", "stage-1 evaluation")["test"]["top1"]
    joint = read_json(run2 / "implicit_feedback.json", "implicit feedback")["test"]["run2"]
    total = args.stage1_epochs + args.stage2_epochs
    longer = stage1(args.demo, data, work / f"seed{seed}" / "stage1-only", total, seed)["test"]["top1"]
    return {"stage1": first, "stage2": joint, "stage1_only": longer}


ARMS = {"stage1": "stage 1 ({e1} epochs)", "stage2": "stage 1 + stage 2 ({e1} + {e2} epochs)",
        "stage1_only": "stage 1 only, same epochs ({total})"}


def markdown(result: dict) -> str:
    e1, e2 = result["stage1_epochs"], result["stage2_epochs"]
    rows = [[ARMS[arm].format(e1=e1, e2=e2, total=e1 + e2), fmt_summary(result["test_top1"][arm], ".2%"),
             fmt_seeds(result["test_top1"][arm], ".2%")] for arm in ARMS]
    return table(["arm", "test top-1 (mean ± std)", "per seed"], rows, "lrl") + \
        f"\n{data_note(result['train_per_emotion'])}; preset tiny, seeds {result['seeds']}; " \
        "std = sample standard deviation over seeds\n"


def main() -> None:
    args = parse_args()
    work, out = work_and_out(args, "implicit", f"e{args.stage1_epochs}+{args.stage2_epochs}")
    data = training_data(args.demo, args.train_per_emotion)
    rows = [seed_row(args, data, seed, work) for seed in args.seeds]
    result = {"demo": str(args.demo), "world": demo_world(args.demo),
              "seeds": args.seeds, "preset": "tiny", "stage1_epochs": args.stage1_epochs,
              "train_per_emotion": args.train_per_emotion,
              "stage2_epochs": args.stage2_epochs, "spread": "sample standard deviation over seeds",
              "test_top1": {arm: summarise([row[arm] for row in rows]) for arm in ARMS}}
    publish(out, result, "Implicit feedback (stage 1 vs stage 2, same epochs)", markdown(result))


if __name__ == "__main__":
    main()
