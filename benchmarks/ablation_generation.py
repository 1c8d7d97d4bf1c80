"""Evidence for understanding-guided fusion (issue 4, paper Tables IV-V): Emo-A of generated
images for (a) the base model prompted with the plain emotion word, (b) cls-only fusion
(EmoGen-like), (c) cls + scene + object without α, (d) full UniEmo (cls + scene + object, α)
at the run's joint weights, (e) the same with L_cond at the spec's weights 0.3/0.3/0.4 (the
`tiny` preset trains without L_cond: docs/DECISIONS.md), for several seeds; mean ± sample
standard deviation, and every seed. FID, Sem-C, Sem-D (and LPIPS when its weights exist) are
recorded alongside.

Emo-A is measured by DEMO/evaluator, a probe on frozen tiny-CLIP image features trained by
`uniemo train evaluator` and never seen by any generator. Per variant (b-e) and seed S:
`uniemo train joint --run DEMO/run1-understanding --config OVERRIDES --epochs E [--max-steps N] --seed S`
(only fusion.features / use_alpha / cond_loss / joint_weights differ), `uniemo generate --emotion all -n K
--steps T --seed S`, `uniemo evaluate generation --evaluator DEMO/evaluator --seed S`. The
baseline (a) is `uniemo demo`'s own baseline step (uniemo.demo.runner.generate_baseline: the frozen SD,
the emotion word as the prompt, the demo's stage-2 guidance) with K images, T steps and
seed S, evaluated the same way. Finished pieces are reused (a run with implicit_feedback.json,
a seed with metrics.json; `uniemo generate` skips images already written), so re-running the
script continues where it stopped.

Reads a `uniemo demo` output directory (data/, foundation/{clip,sd}/, run1-understanding/,
run2-joint/, evaluator/); writes everything under --work (default DEMO/ablations/generation) and the table
as JSON (--out, default DEMO/ablations/generation.json) and Markdown (beside it).

  .venv/bin/python benchmarks/ablation_generation.py --demo demo-out
  .venv/bin/python benchmarks/ablation_generation.py --demo /tmp/dq --max-steps 1 -n 2 --steps 2 --seeds 0   # smoke

Time: per seed, 4 stage-2 runs plus 5 x (8 x K images at T denoising steps + metrics). At
K 16, T 25 and stage 2 at 2 epochs (200 steps) it took 15.6 min for 2 seeds on 2 idle CPU
cores, about 1.5 min per variant and seed; the default is now the demo's 6 epochs, about 1.2
min more per variant and seed. The smoke test above: ~4 min per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from _evidence import (evidence_parser, fmt_seeds, fmt_summary, publish, summarise, table, train, uniemo,
                       write_overrides)

from uniemo.demo.runner import PLANS, Layout, generate_baseline
from uniemo.config import load_config
from uniemo.io import read_json

FULL = PLANS["full"]
BASELINE = "baseline"
# Paper Table V's switches; every variant states all three so the RUN1 config cannot leak in.
FUSION = {
    "cls-only": {"features": ["cls"], "use_alpha": False, "cond_loss": "cond"},
    "no-alpha": {"features": ["cls", "scene", "object"], "use_alpha": False, "cond_loss": "cond"},
    "uniemo": {"features": ["cls", "scene", "object"], "use_alpha": True, "cond_loss": "cond"},
    "uniemo-cond": {"features": ["cls", "scene", "object"], "use_alpha": True, "cond_loss": "cond",
                    "joint_weights": [0.3, 0.3, 0.4]},
}
LABELS = {BASELINE: "(a) base model, emotion word", "cls-only": "(b) cls-only fusion (EmoGen-like)",
          "no-alpha": "(c) cls + scene + object, no α", "uniemo": "(d) UniEmo: α",
          "uniemo-cond": "(e) UniEmo: α + L_cond, spec weights 0.3/0.3/0.4"}
METRICS = ("emo_a", "fid", "sem_c", "sem_d", "lpips")


def parse_args() -> argparse.Namespace:
    parser = evidence_parser(__doc__, "DEMO/ablations/generation", "DEMO/ablations/generation.json")
    parser.add_argument("--epochs", type=int, default=FULL.stage2_epochs,
                        help=f"stage-2 epochs (default {FULL.stage2_epochs}, as the full demo)")
    parser.add_argument("--max-steps", type=int, help="stop every stage 2 after this many optimizer steps")
    parser.add_argument("-n", "--images-per-emotion", type=int, default=FULL.images_per_emotion,
                        help=f"images generated per emotion (default {FULL.images_per_emotion}, as the full demo)")
    parser.add_argument("--steps", type=int, default=FULL.denoising_steps,
                        help=f"denoising steps (default {FULL.denoising_steps}, as the full demo)")
    return parser.parse_args()


def evaluate(args, images: Path, seed: int, out: Path) -> dict:
    """`uniemo evaluate generation` of ``images`` (or its earlier report); returns the metrics."""
    if not out.is_file():
        d = args.demo
        uniemo("evaluate", "generation", "--images", images, "--real", d / "data", "--clip", d / "foundation" / "clip",
               "--evaluator", d / "evaluator", "--seed", seed, "--out", out)
    return read_json(out, "generation metrics")["metrics"]


def fusion_seed(args, variant: str, seed: int, work: Path) -> dict:
    """Stage 2 with ``variant``'s fusion switches, then generation and its metrics, for one seed."""
    home = work / variant / f"seed{seed}"
    run2, images, report = home / "run2", home / "images", home / "metrics.json"
    if not report.is_file():
        overrides = write_overrides(work / variant / "overrides.yaml", {"fusion": FUSION[variant]})
        d = args.demo
        train(run2, run2 / "implicit_feedback.json", "train", "joint", "--run", d / "run1-understanding",
              "--sd", d / "foundation" / "sd", "--data", d / "data", "--out", run2, "--config", overrides,
              "--epochs", args.epochs, *(("--max-steps", args.max_steps) if args.max_steps else ()), "--seed", seed)
        uniemo("generate", "--run", run2, "--emotion", "all", "-n", args.images_per_emotion,
               "--steps", args.steps, "--seed", seed, "--out", images)
    return evaluate(args, images, seed, report)


def baseline_seed(args, seed: int, work: Path) -> dict:
    """The demo's baseline step for one seed, in a Layout whose foundation/ and run2-joint/ (whose
    guidance the baseline uses) link to the demo's."""
    home = work / BASELINE / f"seed{seed}"
    if not (home / "metrics.json").is_file():
        home.mkdir(parents=True, exist_ok=True)
        for part in ("foundation", "run2-joint"):
            if not (home / part).exists():
                os.symlink((args.demo / part).resolve(), home / part, target_is_directory=True)
        plan = dataclasses.replace(FULL, images_per_emotion=args.images_per_emotion, denoising_steps=args.steps)
        generate_baseline(Layout(home, plan, seed))
    return evaluate(args, home / "baseline", seed, home / "metrics.json")


def row(variant: str, per_seed: list[dict]) -> dict:
    """One table row: every metric's "all" figure summarised over seeds."""
    return {"variant": variant, "label": LABELS[variant], "fusion": FUSION.get(variant),
            **{m: summarise([metrics[m]["all"] for metrics in per_seed]) for m in METRICS},
            "networks": {m: per_seed[0][m]["network"] for m in METRICS}}


def guidance(work: Path, seed: int) -> float:
    """The classifier-free guidance `uniemo generate` used: the stage-2 run's generation config."""
    return load_config(work / "uniemo" / f"seed{seed}" / "run2" / "config.yaml").generation.guidance_scale


def markdown(result: dict) -> str:
    rows = [[r["label"], fmt_summary(r["emo_a"], ".2%"), fmt_seeds(r["emo_a"], ".2%"),
             fmt_summary(r["fid"], ".2f"), fmt_summary(r["sem_c"]), fmt_summary(r["sem_d"], ".3g"),
             fmt_summary(r["lpips"])] for r in result["rows"]]
    header = ["variant", "Emo-A ↑ (mean ± std)", "per seed", "FID ↓", "Sem-C ↑", "Sem-D ↑", "LPIPS ↑"]
    return table(header, rows, "lrlrrrr") + footer(result)


def footer(result: dict) -> str:
    """The settings under the table and the network behind every metric."""
    networks = result["rows"][0]["networks"]
    return (f"\nseeds {result['seeds']}; stage 2: {result['epochs']} epochs"
            f"{f', at most {cap} steps' if (cap := result['max_steps']) else ''}; {result['images_per_emotion']} images "
            f"per emotion, {result['denoising_steps']} denoising steps; std = sample standard deviation over seeds; "
            f"guidance: (a) {result['guidance']['baseline']}, (b-e) {result['guidance']['fusion']}"
            "\n\n" + "".join(f"- {m}: {networks[m] or 'not computed'}\n" for m in METRICS))


def main() -> None:
    args = parse_args()
    work = args.work or args.demo / "ablations" / "generation"
    out = args.out or args.demo / "ablations" / "generation.json"
    rows = [row(BASELINE, [baseline_seed(args, seed, work) for seed in args.seeds])]
    rows += [row(variant, [fusion_seed(args, variant, seed, work) for seed in args.seeds]) for variant in FUSION]
    result = {"demo": str(args.demo), "seeds": args.seeds, "epochs": args.epochs, "max_steps": args.max_steps,
              "images_per_emotion": args.images_per_emotion, "denoising_steps": args.steps,
              "guidance": {"baseline": f"the demo's run2-joint generation.guidance_scale, as in `uniemo demo` "
                                       f"({load_config(args.demo / 'run2-joint' / 'config.yaml').generation.guidance_scale})",
                           "fusion": f"the run's generation.guidance_scale ({guidance(work, args.seeds[0])})"},
              "evaluator": str(args.demo / "evaluator"), "spread": "sample standard deviation over seeds", "rows": rows}
    publish(out, result, "Fusion ablation: Emo-A of generated images", markdown(result))


if __name__ == "__main__":
    main()
