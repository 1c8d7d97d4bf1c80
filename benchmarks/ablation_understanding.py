"""Evidence for the hierarchical chain (issue 3, paper Fig. 6): test top-1 of stage 1 with the
expert queries inserted in stages (`multi-stage`, UniEmo), all at the input (`single-step`) and
without queries (`none`: plain CLIP fine-tuning with the same head), for several seeds; mean ±
sample standard deviation, and every seed.

Every run is `uniemo train understand --preset tiny --config OVERRIDES` (only
`understanding.queries` differs) from the demo's tiny CLIP, with the same epochs / step cap and
seed; the number is the test top-1 the run itself writes to RUN/eval.json (the checkpoint is
chosen on val, never on test). Runs that finished are reused and an interrupted one resumes
from its checkpoint, so re-running the script continues where it stopped.

Reads a `uniemo demo` output directory (data/, foundation/clip/); writes the runs under --work
(default DEMO/ablations/understanding) and the table as JSON (--out, default
DEMO/ablations/understanding.json) and Markdown (beside it).

  .venv/bin/python benchmarks/ablation_understanding.py --demo demo-out
  .venv/bin/python benchmarks/ablation_understanding.py --demo /tmp/dq --max-steps 2   # smoke test

Time: 9 stage-1 runs of --epochs each (default 6 epochs = 300 steps of batch 64 on the full
demo's 3200 training images): about 1 h on 2 shared CPU cores (measured at tiny scale: ~1.1 s
per step + ~10 s of loading and evaluation per run); minutes on a GPU. The smoke test: ~2.5 min.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _evidence import evidence_parser, fmt_seeds, fmt_summary, publish, stage1, summarise, table, write_overrides

from uniemo.demo.runner import PLANS

VARIANTS = ("multi-stage", "single-step", "none")


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/understanding", "DEMO/ablations/understanding.json")
    parser.add_argument("--epochs", type=int, default=PLANS["full"].stage1_epochs,
                        help=f"stage-1 epochs (default {PLANS['full'].stage1_epochs}, as the full demo)")
    parser.add_argument("--max-steps", type=int, help="stop every run after this many optimizer steps")
    return parser.parse_args()


def stage1_run(args, variant: str, seed: int, work: Path) -> dict:
    """One stage-1 run of ``variant`` (or its earlier result); returns its eval.json."""
    run = work / variant / f"seed{seed}"
    overrides = write_overrides(work / variant / "overrides.yaml", {"understanding": {"queries": variant}})
    cap = ("--max-steps", args.max_steps) if args.max_steps is not None else ()
    return stage1(args.demo, run, args.epochs, seed, "--config", overrides, *cap)


def markdown(result: dict) -> str:
    rows = [[row["queries"], fmt_summary(row["test_top1"], ".2%"), fmt_seeds(row["test_top1"], ".2%"),
             fmt_summary(row["val_top1"], ".2%")] for row in result["rows"]]
    steps = f", at most {result['max_steps']} steps" if result["max_steps"] is not None else ""
    return table(["queries", "test top-1 (mean ± std)", "per seed", "val top-1 (mean ± std)"], rows, "lrlr") + \
        f"\npreset tiny, {result['epochs']} epoch(s){steps}, seeds {result['seeds']}; " \
        "std = sample standard deviation over seeds\n"


def main() -> None:
    args = parse_args()
    work = args.work or args.demo / "ablations" / "understanding"
    out = args.out or args.demo / "ablations" / "understanding.json"
    rows = []
    for variant in VARIANTS:
        reports = [stage1_run(args, variant, seed, work) for seed in args.seeds]
        rows.append({"queries": variant,
                     "test_top1": summarise([r["test"]["top1"] for r in reports]),
                     "val_top1": summarise([r["val"]["top1"] for r in reports])})
    result = {"demo": str(args.demo), "seeds": args.seeds, "preset": "tiny", "epochs": args.epochs,
              "max_steps": args.max_steps, "spread": "sample standard deviation over seeds", "rows": rows}
    publish(out, result, "Expert queries ablation (stage 1)", markdown(result))


if __name__ == "__main__":
    main()
