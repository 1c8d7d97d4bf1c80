"""Evidence for explicit feedback (issue 5, paper Table VI): understanding accuracy on the test
split without feedback vs with the kept images of Emo-A only, Sem-C only and both (rank window
20-80%), mixed in at proportion 20%, for several seeds; mean ± sample standard deviation.

"Without feedback" trains RUN2's understanding model again on the real training set alone, with
the same settings as every feedback condition, so the comparison isolates the generated images
(the accuracy of RUN2 itself is reported too). Each feedback condition is a `uniemo feedback`
run; the images of a seed are generated once and hard-linked into the other conditions' runs.

Reads a `uniemo demo` output directory (data/, run2-joint/, evaluator/); writes every run under
--work and the table as JSON (--out) and Markdown (beside it).

  .venv/bin/python benchmarks/ablation_feedback.py --demo demo-out
  .venv/bin/python benchmarks/ablation_feedback.py --demo /tmp/tiny --per-emotion 4 --max-steps 2 --steps 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from _evidence import evidence_parser, publish, summarise, uniemo
from uniemo.config import load_config
from uniemo.data import clip_transforms, open_dataset
from uniemo.io import read_json
from uniemo.understanding import load_image_processor, train_understanding

CONDITIONS = {"emo-a": "Emo-A only", "sem-c": "Sem-C only", "emo-a,sem-c": "Emo-A + Sem-C"}


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablation-feedback", "WORK/ablation_feedback.json")
    parser.add_argument("--per-emotion", type=int, help="images generated per emotion (default: RUN2's config)")
    parser.add_argument("--proportion", type=float, default=0.2)
    parser.add_argument("--eta", type=float, default=20.0)
    parser.add_argument("--delta", type=float, default=80.0)
    parser.add_argument("--epochs", type=int, default=3, help="stage-3 epochs (default 3, as the demo)")
    parser.add_argument("--max-steps", type=int, help="stop every stage-3 training after this many steps")
    parser.add_argument("--batch-size", type=int, help="stage-3 batch size (default: stage1.batch_size)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: RUN2's config)")
    return parser.parse_args()


def training_flags(args) -> list[str]:
    flags = ["--epochs", args.epochs]
    for flag, value in (("--max-steps", args.max_steps), ("--batch-size", args.batch_size)):
        if value is not None:
            flags += [flag, value]
    return [str(f) for f in flags]


def feedback_run(args, seed: int, criteria: str, out: Path) -> dict:
    """One `uniemo feedback` run (or its earlier result); returns its feedback.json."""
    if not (out / "feedback.json").is_file():
        argv = ["feedback", "--run", args.demo / "run2-joint", "--data", args.demo / "data",
                "--evaluator", args.demo / "evaluator", "--out", out, "--criteria", criteria, "--seed", seed,
                "--proportion", args.proportion, "--eta", args.eta, "--delta", args.delta, *training_flags(args)]
        for flag, value in (("--per-emotion", args.per_emotion), ("--steps", args.steps)):
            if value is not None:
                argv += [flag, value]
        uniemo(*argv)
    return read_json(out / "feedback.json")


def link_generated(source: Path, target: Path) -> None:
    """The images (and annotations) a seed already generated, hard-linked: `uniemo feedback`
    skips them, so every condition filters the very same images."""
    for part in ("image", "annotation"):
        if (source / part).is_dir() and not (target / part).exists():
            shutil.copytree(source / part, target / part, copy_function=os.link)


def no_feedback_run(args, seed: int, out: Path) -> float:
    """RUN2 trained again on the real training set alone, exactly as stage 3 but without the mix."""
    if not (out / "eval.json").is_file():
        run2, data = args.demo / "run2-joint", args.demo / "data"
        cfg = load_config(run2 / "config.yaml")
        cfg.stage1.epochs, cfg.stage1.seed = args.epochs, seed
        for field, value in (("max_steps", args.max_steps), ("batch_size", args.batch_size)):
            if value is not None:
                setattr(cfg.stage1, field, value)
        real = open_dataset(data, "emoset", "train", clip_transforms(load_image_processor(run2), train=True))
        train_understanding(data, out, cfg, train_set=real, init_from=run2, resume=(out / "config.yaml").is_file())
    return read_json(out / "eval.json")["test"]["top1"]


def markdown(result: dict) -> str:
    lines = ["| condition | test top-1 (mean ± std) | per seed | kept | proportion |", "|---|---:|---|---:|---:|"]
    for row in result["rows"]:
        acc = row["accuracy"]
        seeds = ", ".join(f"{v:.2%}" for v in acc["per_seed"])
        kept = f"{statistics.fmean(row['kept']):.0f}" if row.get("kept") else "—"
        share = f"{statistics.fmean(row['proportion']):.1%}" if row.get("proportion") else "—"
        lines.append(f"| {row['condition']} | {acc['mean']:.2%} ± {acc['std']:.2%} | {seeds} | {kept} | {share} |")
    return "\n".join(lines) + f"\n\nseeds {result['seeds']}; window [{result['eta']:g}%, {result['delta']:g}%), " \
                              f"proportion asked {result['proportion']:.0%}\n"


def main() -> None:
    args = parse_args()
    work = args.work or args.demo / "ablation-feedback"
    out = args.out or work / "ablation_feedback.json"
    rows = {"RUN2 (stage 2, no stage 3)": {"accuracy": []}, "no feedback (real only)": {"accuracy": []},
            **{label: {"accuracy": [], "kept": [], "proportion": []} for label in CONDITIONS.values()}}
    for seed in args.seeds:
        first = None
        for criteria, label in CONDITIONS.items():
            run3 = work / f"seed{seed}" / criteria.replace(",", "+")
            if first is not None:
                link_generated(first / "generated", run3 / "generated")
            summary = feedback_run(args, seed, criteria, run3)
            first = first or run3
            rows[label]["accuracy"].append(summary["accuracy"]["test"]["after"])
            rows[label]["kept"].append(summary["kept"])
            rows[label]["proportion"].append(summary["proportion"])
        rows["RUN2 (stage 2, no stage 3)"]["accuracy"].append(summary["accuracy"]["test"]["before"])
        rows["no feedback (real only)"]["accuracy"].append(no_feedback_run(args, seed, work / f"seed{seed}" / "none"))
    result = {"demo": str(args.demo), "seeds": args.seeds, "eta": args.eta, "delta": args.delta,
              "proportion": args.proportion, "epochs": args.epochs, "max_steps": args.max_steps,
              "rows": [{"condition": name, **row, "accuracy": summarise(row["accuracy"])}
                       for name, row in rows.items()]}
    publish(out, result, "Explicit feedback ablation", markdown(result))


if __name__ == "__main__":
    main()
