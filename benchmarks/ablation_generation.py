"""Evidence for understanding-guided fusion (paper Table V): Emo-A, FID, Sem-C, Sem-D (and LPIPS
when its weights exist) of generated images, for several seeds; mean ± sample standard deviation
and every seed. Four tables (--table), each under 30 min alone at the evidence run's budget:

- `features`: the base model prompted with the emotion word, then the fused condition from cls;
  cls + scene; cls + object; cls + scene + object.
- `alpha`: cls + scene, cls + object and cls + scene + object (UniEmo) with α, and α's values
  for the world's emotional and neutral scenes and objects side by side.
- `cond`: the emotion-space constraint L_cond (CE + hard-negative margin, eq. 8) against plain
  cross-entropy L_ce at a sweep of weights (the `tiny` preset trains without either:
  docs/DECISIONS.md) at weights 0.01 and 0.05, with the weight taken from L_diff so that the weights still sum to 1.
- `cond-schedule`: L_cond at 0.05 with the schedules that might let generation survive it: its
  weight ramped up from 0 over the first 100 optimizer steps (`fusion.cond_warmup_steps`), the
  mappers at a 10x lower learning rate than the rest (`stage2.optim.mapper_lr`: the
  back-projection R can then meet L_cond while e moves slowly), and both.

Emo-A is measured by DEMO/evaluator, a probe on frozen tiny-CLIP image features trained by
`uniemo train evaluator` and never seen by any generator. Per seed S the stage-1 run is the
evidence scripts' shared joint run (_evidence.joint_run), whose stage 2 is UniEmo at the `tiny`
preset's settings (the row "cls + scene + object, α" / "no L_cond"); every other row is
`uniemo train joint --run THAT_STAGE1 --config OVERRIDES --epochs E --seed S` (only
fusion.features / use_alpha / cond_loss / joint_weights / cond_warmup_steps and
stage2.optim.mapper_lr differ). Then `uniemo generate --emotion
all -n K --steps T --seed S` and `uniemo evaluate generation --evaluator DEMO/evaluator --seed S`,
whose FID reference is the test split (400 real images: their Inception features take under a
minute to compute once, the 3,200 of the train split over six).
The baseline is `uniemo demo`'s own baseline step (uniemo.demo.runner.generate_baseline: the
frozen SD, the emotion word as the prompt, the demo's stage-2 guidance) with K images, T steps
and seed S, evaluated the same way. Finished pieces are reused (a run with
implicit_feedback.json, a seed with metrics.json; `uniemo generate` skips images already
written), so re-running the script continues where it stopped.

Reads a `uniemo demo` output directory (data/, foundation/{clip,sd}/, run2-joint/, evaluator/);
writes everything under --work (default DEMO/ablations/generation-TABLE) and the table as JSON
(--out, default WORK.json) and Markdown (beside it).

  .venv/bin/python benchmarks/ablation_generation.py --demo demo-out --table features
  .venv/bin/python benchmarks/ablation_generation.py --demo demo-out --table cond
  .venv/bin/python benchmarks/ablation_generation.py --demo /tmp/dq --epochs 1 -n 2 --steps 2 --seeds 0   # smoke

Time: see docs/EVIDENCE.md for the budgets of the evidence run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from pathlib import Path

from _evidence import (data_note, demo_world, evidence_parser, fmt_seeds, fmt_summary, joint_run, publish, summarise,
                       table, train, training_data, uniemo, work_and_out, write_overrides)

from uniemo.demo.report import attribute_alpha
from uniemo.demo.runner import PATHS, PLANS, Layout, generate_baseline
from uniemo.config import load_config
from uniemo.io import read_json

FULL = PLANS["full"]
BASELINE = "(a) base model, emotion word"
JOINT = None  # the row that is the shared joint run's own stage 2 (the tiny preset's fusion)
NEITHER = "neither (tiny preset: L_U/L_cond/L_diff 0.3/0/0.7)"


def fusion(features=("cls", "scene", "object"), use_alpha=True, cond_loss="cond", **more) -> dict:
    """A row's config overrides: paper Table V's switches, every one stated so that the stage-1
    config cannot leak in, plus ``more`` fusion settings."""
    return {"fusion": {"features": list(features), "use_alpha": use_alpha, "cond_loss": cond_loss, **more}}


def cond(weight: float, loss: str = "cond", **more) -> dict:
    """L_cond (or L_ce) at ``weight``, taken from L_diff so that the weights still sum to 1."""
    return fusion(cond_loss=loss, joint_weights=[0.3, weight, round(0.7 - weight, 6)], **more)


FEATURES: dict[str, dict | None] = {
    "cls": fusion(["cls"], False),
    "cls + scene": fusion(["cls", "scene"], False),
    "cls + object": fusion(["cls", "object"], False),
    "cls + scene + object": fusion(use_alpha=False),
}
ALPHA: dict[str, dict | None] = {
    "cls + scene, α": fusion(["cls", "scene"]),
    "cls + object, α": fusion(["cls", "object"]),
    "cls + scene + object, α (UniEmo)": JOINT,
}
COND_WEIGHTS = (0.01, 0.05)  # 0.3 (the spec's 0.3/0.3/0.4) drove Emo-A to chance: docs/BENCHMARKS.md
COND: dict[str, dict | None] = {
    NEITHER: JOINT,
    **{f"{name} at {w:g} (0.3/{w:g}/{0.7 - w:g})": cond(w, loss)
       for w in COND_WEIGHTS for loss, name in (("ce", "L_ce"), ("cond", "L_cond"))},
}
SLOW_MAPPERS = {"stage2": {"optim": {"mapper_lr": 1e-3}}}  # the tiny preset's stage-2 lr is 1e-2
COND_SCHEDULE: dict[str, dict | None] = {
    NEITHER: JOINT,
    "L_cond at 0.05, warm-up 100 steps": cond(0.05, cond_warmup_steps=100),
    "L_cond at 0.05, mappers at lr 1e-3": {**cond(0.05), **SLOW_MAPPERS},
    "L_cond at 0.05, both": {**cond(0.05, cond_warmup_steps=100), **SLOW_MAPPERS},
}
TABLES = {"features": FEATURES, "alpha": ALPHA, "cond": COND, "cond-schedule": COND_SCHEDULE}
METRICS = ("emo_a", "fid", "sem_c", "sem_d", "lpips")


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/generation-TABLE", "WORK.json")
    parser.add_argument("--table", choices=TABLES, default="features", help="which rows (default features)")
    parser.add_argument("--stage1-epochs", type=int, default=FULL.stage1_epochs,
                        help=f"stage-1 epochs (default {FULL.stage1_epochs}, as the full demo)")
    parser.add_argument("--epochs", type=int, default=FULL.stage2_epochs,
                        help=f"stage-2 epochs (default {FULL.stage2_epochs}, as the full demo)")
    parser.add_argument("-n", "--images-per-emotion", type=int, default=FULL.images_per_emotion,
                        help=f"images generated per emotion (default {FULL.images_per_emotion}, as the full demo)")
    parser.add_argument("--steps", type=int, default=FULL.denoising_steps,
                        help=f"denoising steps (default {FULL.denoising_steps}, as the full demo)")
    return parser.parse_args()


def evaluate(args, images: Path, seed: int, out: Path) -> dict:
    """`uniemo evaluate generation` of ``images`` (or its earlier report); returns the metrics."""
    if not out.is_file():
        d = args.demo
        uniemo("evaluate", "generation", "--images", images, "--real", d / "data", "--split", "test",
               "--clip", d / PATHS["judge"], "--evaluator", d / "evaluator", "--seed", seed, "--out", out)
    return read_json(out, "generation metrics")["metrics"]


def slug(name: str) -> str:
    """A row's folder name."""
    words = name.split(" (")[0].replace("α", "alpha").replace(" + ", "+").replace(", ", "-").replace(" ", "_")
    return "".join(c if c.isascii() and (c.isalnum() or c in ".+-_") else "_" for c in words)


def variant_seed(args, data: Path, name: str, overrides: dict | None, seed: int, work: Path) -> dict:
    """Stage 2 with the row's overrides, then generation and its metrics, for one seed. The shared
    joint run's own row keeps its images and metrics beside that run, so every table that shows
    it (alpha, cond) generates and evaluates them once."""
    run1, run2 = joint_run(args.demo, data, seed, args.stage1_epochs, args.epochs, args.train_per_emotion)
    home = work / slug(name) / f"seed{seed}" if overrides is not JOINT else \
        run2.parent / f"generation-n{args.images_per_emotion}-t{args.steps}"
    images, report = home / "images", home / "metrics.json"
    if not report.is_file():
        if overrides is not JOINT:
            run2 = home / "run2"
            config = write_overrides(home.parent / "overrides.yaml", overrides)
            train(run2, run2 / "implicit_feedback.json", "train", "joint", "--run", run1, "--sd",
                  args.demo / "foundation" / "sd", "--data", data, "--out", run2, "--config", config,
                  "--epochs", args.epochs, "--seed", seed)
        uniemo("generate", "--run", run2, "--emotion", "all", "-n", args.images_per_emotion,
               "--steps", args.steps, "--seed", seed, "--out", images)
    return evaluate(args, images, seed, report)


def baseline_seed(args, seed: int, work: Path) -> dict:
    """The demo's baseline step for one seed, in a Layout whose foundation/ and run2-joint/ (whose
    guidance the baseline uses) link to the demo's."""
    home = work / "baseline" / f"seed{seed}"
    if not (home / "metrics.json").is_file():
        home.mkdir(parents=True, exist_ok=True)
        for part in ("foundation", "run2-joint"):
            if not (home / part).exists():
                os.symlink((args.demo / part).resolve(), home / part, target_is_directory=True)
        plan = dataclasses.replace(FULL, images_per_emotion=args.images_per_emotion, denoising_steps=args.steps)
        generate_baseline(Layout(home, plan, seed))
    return evaluate(args, home / "baseline", seed, home / "metrics.json")


def alpha_by_kind(args, data: Path) -> dict:
    """α of the world's emotional and neutral scenes and objects in every seed's UniEmo run, side
    by side (paper Table V's α): per group, the mean over its attributes summarised over seeds,
    and the range over attributes and seeds."""
    groups: dict[str, list[list[float]]] = {}
    for seed in args.seeds:
        _, run2 = joint_run(args.demo, data, seed, args.stage1_epochs, args.epochs, args.train_per_emotion)
        for kind, names in attribute_alpha(read_json(run2 / "alpha_table.json", "α table")).items():
            for group in ("emotional", "neutral"):
                values = [a["alpha"] for a in names.values() if a["neutral"] == (group == "neutral")]
                groups.setdefault(f"{group} {kind}s", []).append(values)
    return {group: {"mean": summarise([statistics.fmean(v) for v in runs]),
                    "range": [min(map(min, runs)), max(map(max, runs))]} for group, runs in groups.items()}


def row(name: str, overrides: dict | None, per_seed: list[dict]) -> dict:
    """One table row: every metric's "all" figure summarised over seeds."""
    return {"variant": name, "overrides": overrides,
            **{m: summarise([metrics[m]["all"] for metrics in per_seed]) for m in METRICS},
            "networks": {m: per_seed[0][m]["network"] for m in METRICS}}


def markdown(result: dict) -> str:
    rows = [[r["variant"], fmt_summary(r["emo_a"], ".2%"), fmt_seeds(r["emo_a"], ".2%"),
             fmt_summary(r["fid"], ".2f"), fmt_summary(r["sem_c"]), fmt_summary(r["sem_d"], ".3g"),
             fmt_summary(r["lpips"])] for r in result["rows"]]
    header = ["variant", "Emo-A ↑ (mean ± std)", "per seed", "FID ↓", "Sem-C ↑", "Sem-D ↑", "LPIPS ↑"]
    alpha = result.get("alpha")
    alpha_table = "" if alpha is None else "\nα of the UniEmo runs (largest entry of each attribute's row of P):\n\n" + \
        table(["attributes", "mean α (mean ± std over seeds)", "range"], [
            [group, fmt_summary(a["mean"]), f"{a['range'][0]:.2f}–{a['range'][1]:.2f}"] for group, a in alpha.items()],
            "lrr")
    return table(header, rows, "lrlrrrr") + footer(result) + alpha_table


def footer(result: dict) -> str:
    """The settings under the table and the network behind every metric."""
    networks = result["rows"][-1]["networks"]
    return (f"\n{data_note(result['train_per_emotion'])}; seeds {result['seeds']}; stages 1/2: "
            f"{result['stage1_epochs']}/{result['epochs']} epochs; {result['images_per_emotion']} images per emotion, "
            f"{result['denoising_steps']} denoising steps, guidance {result['guidance']}; "
            "std = sample standard deviation over seeds\n\n"
            + "".join(f"- {m}: {networks[m] or 'not computed'}\n" for m in METRICS))


def main() -> None:
    args = parse_args()
    budget = f"e{args.stage1_epochs}+{args.epochs}-n{args.images_per_emotion}-t{args.steps}"
    work, out = work_and_out(args, f"generation-{args.table}", budget)
    data = training_data(args.demo, args.train_per_emotion)
    rows = [row(BASELINE, None, [baseline_seed(args, seed, work) for seed in args.seeds])] if args.table == "features" else []
    rows += [row(name, overrides, [variant_seed(args, data, name, overrides, seed, work) for seed in args.seeds])
             for name, overrides in TABLES[args.table].items()]
    guidance = load_config(args.demo / "run2-joint" / "config.yaml").generation.guidance_scale
    result = {"demo": str(args.demo), "world": demo_world(args.demo),
              "table": args.table, "seeds": args.seeds, "train_per_emotion": args.train_per_emotion,
              "stage1_epochs": args.stage1_epochs, "epochs": args.epochs, "images_per_emotion": args.images_per_emotion,
              "denoising_steps": args.steps, "guidance": guidance, "evaluator": str(args.demo / "evaluator"),
              "spread": "sample standard deviation over seeds", "rows": rows,
              "alpha": alpha_by_kind(args, data) if args.table == "alpha" else None}
    title = {"features": "Fusion features (paper Table V)", "alpha": "Fusion with α (paper Table V)",
             "cond": "L_cond vs L_ce (paper Table V)", "cond-schedule": "L_cond's schedule (paper Table V)"}[args.table]
    publish(out, result, title, markdown(result))


if __name__ == "__main__":
    main()
