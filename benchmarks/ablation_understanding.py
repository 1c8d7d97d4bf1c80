"""Evidence for the hierarchical chain (paper Fig. 6) and the query length (Fig. 7): test top-1
of stage 1 with the expert queries inserted in stages (`multi-stage`, UniEmo), all at the input
(`single-step`) and without queries (`none`: plain CLIP fine-tuning with the same head), then
multi-stage with other query lengths (--query-lens), for several seeds; mean ± sample standard
deviation, every seed, and the validation curves (mean over seeds per epoch, drawn to PNG) that
show whether the budget was long enough for them to flatten.

Every run is `uniemo train understand --preset tiny --config OVERRIDES` (only
`understanding.queries` / `understanding.query_len` differ) from the demo's tiny CLIP, with the
same epochs / step cap and seed, on the demo's data or its data-scarce split
(--train-per-emotion N); the number is the test top-1 the run itself writes to RUN/eval.json (the
checkpoint is chosen on val, never on test). Runs that finished are reused and an interrupted
one resumes from its checkpoint, so re-running the script continues where it stopped.

Reads a `uniemo demo` output directory (data/, foundation/clip/); writes the runs under --work
(default DEMO/ablations/understanding[-scarceN]) and the table as JSON (--out, default
WORK.json), Markdown and the curves (PNG) beside it.

  .venv/bin/python benchmarks/ablation_understanding.py --demo demo-out --epochs 10
  .venv/bin/python benchmarks/ablation_understanding.py --demo demo-out --train-per-emotion 16 --epochs 40
  .venv/bin/python benchmarks/ablation_understanding.py --demo /tmp/dq --max-steps 2 --seeds 0   # smoke test

Time: 9 stage-1 runs (+3 per extra query length): at the demo's 3 epochs on the full data about
30 s each on session 11's 2-core machine (4.6 min in all); see docs/EVIDENCE.md for the budgets
of the evidence run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _evidence import (data_note, demo_world, evidence_parser, fmt_seeds, fmt_summary, publish, stage1, summarise,
                       table, training_data, work_and_out, write_overrides)

from uniemo.config import PRESETS
from uniemo.demo.runner import PLANS
from uniemo.plots import curves_png

QUERIES = ("multi-stage", "single-step", "none")
DEFAULT_LEN = PRESETS["tiny"]().understanding.query_len


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/understanding[-scarceN]", "WORK.json")
    parser.add_argument("--epochs", type=int, default=PLANS["full"].stage1_epochs,
                        help=f"stage-1 epochs (default {PLANS['full'].stage1_epochs}, as the full demo)")
    parser.add_argument("--max-steps", type=int, help="stop every run after this many optimizer steps")
    parser.add_argument("--query-lens", type=int, nargs="*", default=[],
                        help=f"also multi-stage with these query lengths (the tiny preset's: {DEFAULT_LEN})")
    return parser.parse_args()


def variants(query_lens: list[int]) -> dict[str, dict]:
    """Row name -> `understanding` overrides: the three chains, then the other query lengths."""
    rows = {q: {"queries": q} for q in QUERIES}
    rows |= {f"multi-stage, {n} queries": {"queries": "multi-stage", "query_len": n}
             for n in query_lens if n != DEFAULT_LEN}
    return rows


def stage1_run(args, data: Path, work: Path, name: str, overrides: dict, seed: int) -> tuple[dict, list]:
    """One stage-1 run (or its earlier result): its eval.json and its per-epoch validation top-1."""
    home = work / name.replace(", ", "-").replace(" ", "-")
    config = write_overrides(home / "overrides.yaml", {"understanding": overrides})
    cap = ("--max-steps", args.max_steps) if args.max_steps is not None else ()
    report = stage1(args.demo, data, home / f"seed{seed}", args.epochs, seed, "--config", config, *cap)
    lines = (home / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()
    return report, [r["val_top1"] for r in map(json.loads, lines) if "val_top1" in r]


def markdown(result: dict) -> str:
    rows = [[row["variant"], fmt_summary(row["test_top1"], ".2%"), fmt_seeds(row["test_top1"], ".2%"),
             fmt_summary(row["val_top1"], ".2%")] for row in result["rows"]]
    steps = f", at most {result['max_steps']} steps" if result["max_steps"] is not None else ""
    return table(["variant", "test top-1 (mean ± std)", "per seed", "val top-1 (mean ± std)"], rows, "lrlr") + \
        f"\n{data_note(result['train_per_emotion'])}; preset tiny ({DEFAULT_LEN} queries unless named), " \
        f"{result['epochs']} epoch(s){steps}, seeds {result['seeds']}; std = sample standard deviation over seeds; curves: {result['curves']}\n"


def main() -> None:
    args = parse_args()
    cap = f"-cap{args.max_steps}" if args.max_steps is not None else ""
    work, out = work_and_out(args, "understanding", f"e{args.epochs}{cap}")
    data = training_data(args.demo, args.train_per_emotion)
    rows, curves = [], {}
    for name, overrides in variants(args.query_lens).items():
        runs = [stage1_run(args, data, work, name, overrides, seed) for seed in args.seeds]
        rows.append({"variant": name, "understanding": overrides,
                     "test_top1": summarise([r["test"]["top1"] for r, _ in runs]),
                     "val_top1": summarise([r["val"]["top1"] for r, _ in runs]),
                     "val_curve": [sum(c) / len(c) for c in zip(*(curve for _, curve in runs))]})
        curves[name] = (list(range(1, len(rows[-1]["val_curve"]) + 1)), rows[-1]["val_curve"])
    png = out.with_name(out.stem + "_curves.png")
    curves_png({"val top-1 (mean over seeds)": curves}, png, "epoch", "Stage 1: expert queries")
    result = {"demo": str(args.demo), "world": demo_world(args.demo),
              "seeds": args.seeds, "preset": "tiny", "epochs": args.epochs,
              "max_steps": args.max_steps, "train_per_emotion": args.train_per_emotion, "curves": png.name,
              "spread": "sample standard deviation over seeds", "rows": rows}
    publish(out, result, "Expert queries ablation (stage 1)", markdown(result))


if __name__ == "__main__":
    main()
