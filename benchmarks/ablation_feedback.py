"""Evidence for explicit feedback (paper Tables VI-VIII): test top-1 of understanding after
stage 3 with the generated images each setting keeps, against the same stage-3 training on the
real images alone, for several seeds; mean ± sample standard deviation, every seed, how many
images were kept and the proportion of the mix they reached.

- Table VI, criteria: Emo-A only / Sem-C only / both, rank window [20%, 80%), proportion 20%.
- Table VII, rank windows [0, 100), [10, 90), [20, 80), [50, 100) with both criteria.
- Table VIII, proportions 5 / 10 / 20 / 30% with both criteria and [20%, 80%).

Per seed S the stage-1 and stage-2 runs are the evidence scripts' shared joint runs
(_evidence.joint_run: `uniemo train understand` then `uniemo train joint`, on the demo's data or
its data-scarce split, --train-per-emotion N, where generated images can matter). Every
setting is one `uniemo feedback --run RUN2 --seed S` run; a seed's images are generated once and
hard-linked into its other settings' runs, so all of them filter the very same images (a
setting that repeats another, e.g. the paper's [20%, 80%) at 20%, is run once). "No feedback"
trains RUN2's understanding model again on the real training set alone with the same stage-3
settings, so the comparison isolates the generated images. Finished runs are reused.

Reads a `uniemo demo` output directory (data/, foundation/, evaluator/); writes every run under
--work (default DEMO/ablations/feedback[-scarceN]) and the tables as JSON (--out, default
WORK.json) and Markdown (beside it).

  .venv/bin/python benchmarks/ablation_feedback.py --demo demo-out --train-per-emotion 16
  .venv/bin/python benchmarks/ablation_feedback.py --demo /tmp/dq --seeds 0 --per-emotion 4 --steps 2   # smoke

Time: see docs/EVIDENCE.md for the budgets of the evidence run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from _evidence import (data_note, demo_world, evidence_parser, fmt_seeds, fmt_summary, joint_run, publish, summarise,
                       table, training_data, uniemo, work_and_out)

from uniemo.config import load_config
from uniemo.data import clip_transforms, open_dataset
from uniemo.demo.runner import PLANS
from uniemo.io import read_json
from uniemo.understanding import load_image_processor, train_understanding

FULL = PLANS["full"]
CRITERIA = {"emo-a": "Emo-A only", "sem-c": "Sem-C only", "emo-a,sem-c": "Emo-A + Sem-C"}
PAPER = {"criteria": "emo-a,sem-c", "eta": 20.0, "delta": 80.0, "proportion": 0.2}  # the paper's setting
WINDOWS = ((0.0, 100.0), (10.0, 90.0), (20.0, 80.0), (50.0, 100.0))
PROPORTIONS = (0.05, 0.1, 0.2, 0.3)
TABLES = {"criteria": "Table VI: criteria (window [20%, 80%), proportion 20%)",
          "window": "Table VII: rank window (both criteria, proportion 20%)",
          "proportion": "Table VIII: proportion (both criteria, window [20%, 80%))"}


def settings() -> list[tuple[str, str, dict]]:
    """(table, row name, feedback settings) for every row of the three tables."""
    rows = [("criteria", label, {**PAPER, "criteria": c}) for c, label in CRITERIA.items()]
    rows += [("window", f"[{eta:g}%, {delta:g}%)", {**PAPER, "eta": eta, "delta": delta}) for eta, delta in WINDOWS]
    return rows + [("proportion", f"{p:.0%}", {**PAPER, "proportion": p}) for p in PROPORTIONS]


def run_key(setting: dict) -> str:
    """The folder of a setting's runs: equal settings share it."""
    return "{criteria}_{eta:g}-{delta:g}_p{proportion:g}".format(**setting).replace(",", "+")


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/feedback[-scarceN]", "WORK.json")
    parser.add_argument("--stage1-epochs", type=int, default=FULL.stage1_epochs)
    parser.add_argument("--stage2-epochs", type=int, default=FULL.stage2_epochs)
    parser.add_argument("--epochs", type=int, default=FULL.stage3_epochs, help="stage-3 epochs (default: the demo's)")
    parser.add_argument("--per-emotion", type=int, default=FULL.feedback_per_emotion,
                        help=f"images generated per emotion (default {FULL.feedback_per_emotion}, as the demo)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: RUN2's config)")
    return parser.parse_args()


def feedback_run(args, run2: Path, data: Path, seed: int, setting: dict, out: Path) -> dict:
    """One `uniemo feedback` run (or its earlier result); returns its feedback.json."""
    if not (out / "feedback.json").is_file():
        steps = ("--steps", args.steps) if args.steps is not None else ()
        uniemo("feedback", "--run", run2, "--data", data, "--evaluator", args.demo / "evaluator", "--out", out,
               "--criteria", setting["criteria"], "--eta", setting["eta"], "--delta", setting["delta"],
               "--proportion", setting["proportion"], "--per-emotion", args.per_emotion, "--epochs", args.epochs,
               "--seed", seed, *steps)
    return read_json(out / "feedback.json", "feedback summary")


def link_generated(source: Path, target: Path) -> None:
    """The images (and annotations) a seed already generated, hard-linked: `uniemo feedback`
    skips them, so every setting filters the very same images."""
    for part in ("image", "annotation"):
        if (source / part).is_dir() and not (target / part).exists():
            shutil.copytree(source / part, target / part, copy_function=os.link)


def no_feedback_run(args, run2: Path, data: Path, seed: int, out: Path) -> float:
    """RUN2 trained again on the real training set alone, exactly as stage 3 but without the mix."""
    if not (out / "eval.json").is_file():
        cfg = load_config(run2 / "config.yaml")
        cfg.stage1.epochs, cfg.stage1.seed = args.epochs, seed
        real = open_dataset(data, "emoset", "train", clip_transforms(load_image_processor(run2), train=True))
        train_understanding(data, out, cfg, train_set=real, init_from=run2, resume=(out / "config.yaml").is_file())
    return read_json(out / "eval.json", "stage-3 evaluation")["test"]["top1"]


def seed_results(args, data: Path, work: Path, seed: int) -> dict[str, dict]:
    """Every setting's feedback.json for one seed, and the two arms without stage-3 images."""
    _, run2 = joint_run(args.demo, data, seed, args.stage1_epochs, args.stage2_epochs, args.train_per_emotion)
    home, first, done = work / f"seed{seed}", None, {}
    for _, _, setting in settings():
        key = run_key(setting)
        if key not in done:
            run3 = home / key
            if first is not None:
                link_generated(first / "generated", run3 / "generated")
            done[key] = feedback_run(args, run2, data, seed, setting, run3)
            first = first or run3
    done["none"] = {"accuracy": {"test": {"after": no_feedback_run(args, run2, data, seed, home / "none")}}}
    done["run2"] = {"accuracy": {"test": {"after": next(iter(done.values()))["accuracy"]["test"]["before"]}}}
    return done


def row(name: str, runs: list[dict]) -> dict:
    """One table row over seeds: test top-1, and for feedback runs the kept count and proportion."""
    entry = {"condition": name, "accuracy": summarise([r["accuracy"]["test"]["after"] for r in runs])}
    if "kept" in runs[0]:
        entry |= {"kept": [r["kept"] for r in runs], "proportion": [r["proportion"] for r in runs]}
    return entry


def markdown(result: dict) -> str:
    parts = []
    for name, title in TABLES.items():
        rows = [[r["condition"], fmt_summary(r["accuracy"], ".2%"), fmt_seeds(r["accuracy"], ".2%"),
                 f"{statistics.fmean(r['kept']):.0f}" if "kept" in r else "—",
                 f"{statistics.fmean(r['proportion']):.1%}" if "proportion" in r else "—"]
                for r in result["baselines"] + result["tables"][name]]
        parts.append(f"### {title}\n\n" + table(["condition", "test top-1 (mean ± std)", "per seed", "kept",
                                                  "proportion reached"], rows, "lrlrr"))
    return "\n".join(parts) + f"\n{data_note(result['train_per_emotion'])}; seeds {result['seeds']}; stages 1/2/3 " \
        f"{result['stage1_epochs']}/{result['stage2_epochs']}/{result['epochs']} epochs; {result['per_emotion']} " \
        "images generated per emotion; std = sample standard deviation over seeds\n"


def main() -> None:
    args = parse_args()
    steps = f"-t{args.steps}" if args.steps is not None else ""
    budget = f"e{args.stage1_epochs}+{args.stage2_epochs}+{args.epochs}-n{args.per_emotion}{steps}"
    work, out = work_and_out(args, "feedback", budget)
    data = training_data(args.demo, args.train_per_emotion)
    per_seed = [seed_results(args, data, work, seed) for seed in args.seeds]

    tables = {name: [row(label, [seed[run_key(s)] for seed in per_seed]) for t, label, s in settings() if t == name]
              for name in TABLES}
    baselines = [row("RUN2 (stage 2, no stage 3)", [s["run2"] for s in per_seed]),
                 row("no feedback (real images only)", [s["none"] for s in per_seed])]
    result = {"demo": str(args.demo), "world": demo_world(args.demo),
              "seeds": args.seeds, "train_per_emotion": args.train_per_emotion,
              "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs, "epochs": args.epochs,
              "per_emotion": args.per_emotion, "spread": "sample standard deviation over seeds",
              "baselines": baselines, "tables": tables}
    publish(out, result, "Explicit feedback ablation (paper Tables VI-VIII)", markdown(result))


if __name__ == "__main__":
    main()
