"""The evidence run (`make evidence`): every table of docs/EVIDENCE.md, one script run after the
other, then a verdict on each of the paper's claims, written as the claims table the demo report
shows (uniemo/demo/claims.json, labelled with this run's date and commit).

Each table is one resumable benchmark script with the budget below (3 seeds); re-running this
script reuses every finished run, so an interrupted evidence run continues where it stopped, and
--tables runs some of them (each one alone fits in 30 min on a 2-core CPU: docs/EVIDENCE.md).
A claim is **confirmed** when its effect, in the paper's direction, exceeds twice the larger of
the two rows' seed standard deviations; **not confirmed** when it exceeds that bar in the
opposite direction; **inconclusive** otherwise. Each verdict names the world version its tables
were measured on (the demo's report records it), so tables of an earlier world are told apart.

  .venv/bin/python benchmarks/evidence.py --demo demo-out                      # all tables, then the claims
  .venv/bin/python benchmarks/evidence.py --demo demo-out --tables feedback    # one table, then the claims
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from uniemo.io import read_json, write_json

HERE = Path(__file__).parent
SCARCE = ("--train-per-emotion", "16")  # the data-scarce split: 16 training images per emotion
SCARCE_STAGES = ("--stage1-epochs", "30", "--stage2-epochs", "50")  # 60 and 200 steps on 128 images
GENERATION = ("--epochs", "2")  # stage 2 at 2 epochs (200 steps): 6 would take 3 x 30 min per table
# table -> (script, its arguments, its JSON under DEMO/ablations/)
TABLES = {
    "queries-scarce": ("ablation_understanding.py", (*SCARCE, "--epochs", "30", "--query-lens", "4", "16"),
                       "understanding-scarce16.json"),
    "feedback": ("ablation_feedback.py", (*SCARCE, *SCARCE_STAGES, "--epochs", "10", "--per-emotion", "32"),
                 "feedback-scarce16.json"),
    "implicit-scarce": ("implicit_feedback.py", (*SCARCE, *SCARCE_STAGES), "implicit-scarce16.json"),
    "features": ("ablation_generation.py", ("--table", "features", *GENERATION), "generation-features.json"),
    "alpha": ("ablation_generation.py", ("--table", "alpha", *GENERATION), "generation-alpha.json"),
    "cond": ("ablation_generation.py", ("--table", "cond", *GENERATION), "generation-cond.json"),
    "cond-schedule": ("ablation_generation.py", ("--table", "cond-schedule", *GENERATION),
                      "generation-cond-schedule.json"),
    "queries": ("ablation_understanding.py", ("--epochs", "10"), "understanding.json"),
    "implicit": ("implicit_feedback.py", (), "implicit.json"),
}
L_COND, L_CE, NEITHER = ("cond", "L_cond at 0.05 (0.3/0.05/0.65)"), ("cond", "L_ce at 0.05 (0.3/0.05/0.65)"), \
    ("cond", "neither (tiny preset: L_U/L_cond/L_diff 0.3/0/0.7)")
BOTH, NONE = ("feedback", "Emo-A + Sem-C"), ("feedback", "no feedback (real images only)")
# (claim, the paper's figure, (table, row) the paper finds better, (table, row) it finds worse)
CLAIMS = [
    ("expert queries help understanding", "Fig. 6", ("queries", "multi-stage"), ("queries", "none")),
    ("… inserted in stages, not all at the input", "Fig. 6", ("queries", "multi-stage"),
     ("queries", "single-step")),
    ("expert queries help understanding, scarce data", "Fig. 6", ("queries-scarce", "multi-stage"),
     ("queries-scarce", "none")),
    ("… in stages, scarce data", "Fig. 6", ("queries-scarce", "multi-stage"), ("queries-scarce", "single-step")),
    ("a moderate query length (8) beats a short one (4)", "Fig. 7", ("queries-scarce", "multi-stage"),
     ("queries-scarce", "multi-stage, 4 queries")),
    ("a moderate query length (8) beats a long one (16)", "Fig. 7", ("queries-scarce", "multi-stage"),
     ("queries-scarce", "multi-stage, 16 queries")),
    ("scene and object queries help generation (Emo-A)", "Table V: 74.07% vs 71.35%",
     ("features", "cls + scene + object"), ("features", "cls")),
    ("α helps generation (Emo-A)", "Table V: 77.89% vs 74.07%", ("alpha", "cls + scene + object, α (UniEmo)"),
     ("features", "cls + scene + object")),
    ("L_cond beats L_ce (Emo-A, weight 0.05)", "Table V: 79.77% vs 78.97%", L_COND, L_CE),
    ("L_cond improves on no emotion-space loss (Emo-A)", "Table V: 79.77% vs 77.89%", L_COND, NEITHER),
    ("… with a warm-up and slow mappers", "Table V (schedule: ours)", ("cond-schedule", "L_cond at 0.05, both"),
     NEITHER),
    ("joint training improves understanding", "Fig. 8", ("implicit", "stage2"), ("implicit", "stage1")),
    ("… more than stage 1 trained as long", "Fig. 8 (same epochs: ours)", ("implicit", "stage2"),
     ("implicit", "stage1_only")),
    ("joint training improves understanding, scarce data", "Fig. 8", ("implicit-scarce", "stage2"),
     ("implicit-scarce", "stage1")),
    ("… more than stage 1 trained as long, scarce data", "Fig. 8 (same epochs: ours)",
     ("implicit-scarce", "stage2"), ("implicit-scarce", "stage1_only")),
    ("explicit feedback improves understanding", "Table VI: 85.30% vs 84.96%", BOTH, NONE),
    ("both criteria beat Emo-A alone", "Table VI: 85.30% vs 85.10%", BOTH, ("feedback", "Emo-A only")),
    ("both criteria beat Sem-C alone", "Table VI: 85.30% vs 84.99%", BOTH, ("feedback", "Sem-C only")),
    ("window [20%, 80%) beats [0%, 100%)", "Table VII: 85.30% vs 85.17%", ("feedback", "[20%, 80%)"),
     ("feedback", "[0%, 100%)")),
    ("window [20%, 80%) beats [50%, 100%)", "Table VII: 85.30% vs 85.05%", ("feedback", "[20%, 80%)"),
     ("feedback", "[50%, 100%)")),
    ("20% generated images beat 5%", "Table VIII: 85.30% vs 85.01%", ("feedback", "20%"), ("feedback", "5%")),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"), help="`uniemo demo` output (default demo-out)")
    parser.add_argument("--tables", nargs="*", choices=TABLES, default=list(TABLES),
                        help="which tables to run (default all; none: only the claims, from the tables on disk)")
    parser.add_argument("--claims", type=Path, default=HERE.parent / "uniemo" / "demo" / "claims.json",
                        help="where the claims table goes (default: the package's, which the demo report shows)")
    return parser.parse_args()


def rows(result: dict) -> dict[str, dict]:
    """Row name -> the summary (mean, std, per_seed) the claims compare, for any table's JSON."""
    if "test_top1" in result and isinstance(result["test_top1"], dict) and "stage1" in result["test_top1"]:
        return result["test_top1"]  # implicit feedback: arm -> test top-1
    if "tables" in result:  # explicit feedback: condition -> test top-1
        return {r["condition"]: r["accuracy"] for r in result["baselines"]
                + [r for t in result["tables"].values() for r in t]}
    metric = "emo_a" if "emo_a" in result["rows"][0] else "test_top1"
    return {r["variant"]: r[metric] for r in result["rows"]}


def verdict(better: dict, worse: dict) -> dict:
    """The effect (better − worse, in points) against twice the larger seed std."""
    effect, bar = better["mean"] - worse["mean"], 2 * max(better["std"], worse["std"])
    word = "confirmed" if effect > bar else "not confirmed" if effect < -bar else "inconclusive"
    return {"better": better["mean"], "worse": worse["mean"], "effect": effect, "bar": bar, "verdict": word}


def world(*results: dict) -> str:
    """The world version(s) the tables were measured on ("3.2 / 3.3" for a claim across two)."""
    return " / ".join(sorted({r.get("world") or "unrecorded" for r in results}))


def foundation(demo: Path) -> str:
    """Where the foundation models of the demo the tables ran on came from (its report.json)."""
    report = demo / "report.json"
    trained = read_json(report, "demo report").get("foundation", {}).get("trained_here") if report.is_file() else None
    return {True: "trained by that demo", False: "shipped with uniemo"}.get(trained, "unrecorded")


def claims(results: dict[str, dict]) -> list[dict]:
    """A verdict on every claim whose tables are among ``results`` (table name -> its JSON)."""
    return [{"claim": claim, "paper": paper, "rows": [better, worse],
             "world": world(results[better[0]], results[worse[0]]),
             **verdict(rows(results[better[0]])[better[1]], rows(results[worse[0]])[worse[1]])}
            for claim, paper, better, worse in CLAIMS if better[0] in results and worse[0] in results]


def commit() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=HERE, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> None:
    args = parse_args()
    for name in args.tables:
        script, argv, _ = TABLES[name]
        print(f"== evidence table {name}: {script} {' '.join(argv)}", flush=True)
        start = time.monotonic()
        subprocess.run([sys.executable, str(HERE / script), "--demo", str(args.demo), *argv], check=True)
        print(f"== evidence table {name}: {(time.monotonic() - start) / 60:.1f} min", flush=True)
    results = {name: read_json(path, "evidence table") for name, (_, _, file) in TABLES.items()
               if (path := args.demo / "ablations" / file).is_file()}
    verdicts = claims(results)
    write_json(args.claims, {"date": datetime.date.today().isoformat(), "commit": commit(),
                             "foundation": foundation(args.demo),
                             "tables": {name: {"budget": " ".join(TABLES[name][1]), "world": world(result)}
                                        for name, result in results.items()}, "claims": verdicts})
    for c in verdicts:
        print(f"{c['verdict']:>13}  {c['effect'] * 100:+.2f} pts (bar {c['bar'] * 100:.2f})  "
              f"world {c['world']}  {c['claim']}")
    print(f"wrote {args.claims} ({len(verdicts)} claims from {len(results)} tables)")


if __name__ == "__main__":
    main()
