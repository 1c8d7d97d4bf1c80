"""Evidence for implicit feedback (paper Fig. 8): does joint training (stage 2) improve
understanding beyond what the same number of stage-1 epochs gives? For several seeds: test
top-1 after stage 1, after stage 2 on that stage 1, and of a stage-1-only run trained for the
sum of both stages' epochs; mean ± sample standard deviation, and every seed.

Per seed S: `uniemo train understand --preset tiny --epochs E1 --seed S` (the "stage 1" arm),
`uniemo train joint --run THAT --epochs E2 --seed S` (its RUN/implicit_feedback.json holds the
test top-1 before and after), and `uniemo train understand --preset tiny --epochs E1+E2 --seed S`
(the "stage 1 only, same epochs" arm). Test top-1 is what each run writes itself (checkpoints
chosen on val, never on test). Finished runs are reused and an interrupted one resumes from its
checkpoint, so re-running the script continues where it stopped.

Reads a `uniemo demo` output directory (data/, foundation/{clip,sd}/); writes the runs under
--work (default DEMO/ablations/implicit) and the table as JSON (--out, default
DEMO/ablations/implicit.json) and Markdown (beside it).

  .venv/bin/python benchmarks/implicit_feedback.py --demo demo-out
  .venv/bin/python benchmarks/implicit_feedback.py --demo /tmp/dq --seeds 0   # smoke test on a quick demo

Time: about 4 min per seed at the demo's epochs (3 + 6) on session 11's 2-core machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _evidence import evidence_parser, fmt_seeds, fmt_summary, publish, stage1, summarise, table, train

from uniemo.demo.runner import PLANS
from uniemo.io import read_json

FULL = PLANS["full"]


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/implicit", "DEMO/ablations/implicit.json")
    parser.add_argument("--stage1-epochs", type=int, default=FULL.stage1_epochs,
                        help=f"stage-1 epochs (default {FULL.stage1_epochs}, as the full demo)")
    parser.add_argument("--stage2-epochs", type=int, default=FULL.stage2_epochs,
                        help=f"stage-2 epochs (default {FULL.stage2_epochs}, as the full demo)")
    return parser.parse_args()


def seed_row(args, seed: int, work: Path) -> dict[str, float]:
    """The three arms' test top-1 for one seed."""
    home = work / f"seed{seed}"
    run1, run2 = home / "stage1", home / "stage2"
    first = stage1(args.demo, run1, args.stage1_epochs, seed)["test"]["top1"]
    train(run2, run2 / "implicit_feedback.json", "train", "joint", "--run", run1, "--sd",
          args.demo / "foundation" / "sd", "--data", args.demo / "data", "--out", run2,
          "--epochs", args.stage2_epochs, "--seed", seed)
    joint = read_json(run2 / "implicit_feedback.json", "implicit feedback")["test"]["run2"]
    longer = stage1(args.demo, home / "stage1-only", args.stage1_epochs + args.stage2_epochs, seed)["test"]["top1"]
    return {"stage1": first, "stage2": joint, "stage1_only": longer}


ARMS = {"stage1": "stage 1 ({e1} epochs)", "stage2": "stage 1 + stage 2 ({e1} + {e2} epochs)",
        "stage1_only": "stage 1 only, same epochs ({total})"}


def markdown(result: dict) -> str:
    e1, e2 = result["stage1_epochs"], result["stage2_epochs"]
    rows = [[ARMS[arm].format(e1=e1, e2=e2, total=e1 + e2), fmt_summary(result["test_top1"][arm], ".2%"),
             fmt_seeds(result["test_top1"][arm], ".2%")] for arm in ARMS]
    return table(["arm", "test top-1 (mean ± std)", "per seed"], rows, "lrl") + \
        f"\npreset tiny, seeds {result['seeds']}; std = sample standard deviation over seeds\n"


def main() -> None:
    args = parse_args()
    work = args.work or args.demo / "ablations" / "implicit"
    out = args.out or args.demo / "ablations" / "implicit.json"
    rows = [seed_row(args, seed, work) for seed in args.seeds]
    result = {"demo": str(args.demo), "seeds": args.seeds, "preset": "tiny", "stage1_epochs": args.stage1_epochs,
              "stage2_epochs": args.stage2_epochs, "spread": "sample standard deviation over seeds",
              "test_top1": {arm: summarise([row[arm] for row in rows]) for arm in ARMS}}
    publish(out, result, "Implicit feedback (stage 1 vs stage 2, same epochs)", markdown(result))


if __name__ == "__main__":
    main()
