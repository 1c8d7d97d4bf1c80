"""Shared helpers of the evidence scripts in ``benchmarks/`` (ablation_*.py): run a ``uniemo``
command in-process, write config overrides, resume or restart an interrupted training run,
summarise a metric over seeds (mean ± sample standard deviation) and write the result as JSON +
Markdown. Not a benchmark itself."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

import yaml

from uniemo.cli import main as uniemo_main
from uniemo.io import read_json, write_json, write_text
from uniemo.training import _checkpoint_dir


def evidence_parser(doc: str, work: str, out: str) -> argparse.ArgumentParser:
    """The options every evidence script takes (--demo, --work, --out, --seeds); ``work`` and
    ``out`` describe the defaults the script applies when they are left out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-out"), help="`uniemo demo` output (default demo-out)")
    parser.add_argument("--work", type=Path, help=f"where the runs go, in one folder per budget (default {work})")
    parser.add_argument("--out", type=Path, help=f"JSON to write (default {out})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-per-emotion", type=int, metavar="N",
                        help="train on the data-scarce split: N training images per emotion (same val and test)")
    return parser


def training_data(demo: Path, train_per_emotion: int | None) -> Path:
    """The dataset the runs train on: the demo's, or its data-scarce split, synthesised once into
    DEMO/data-scarce-N from the demo's own world settings (same images, val and test; only N
    training images per emotion listed)."""
    if train_per_emotion is None:
        return demo / "data"
    out = demo / f"data-scarce-{train_per_emotion}"
    if not out.is_dir():
        plan = read_json(demo / ".steps" / "plan.json", "demo plan")
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        uniemo("synth", partial, "--num-images", plan["num_images"], "--seed", plan["seed"],
               "--label-noise", plan["label_noise"], "--train-per-emotion", train_per_emotion)
        partial.rename(out)
    return out


def uniemo(*argv: Any) -> None:
    """``uniemo ARGV…`` in-process; a non-zero exit stops the script with the command line."""
    line = [str(a) for a in argv]
    status = uniemo_main(line)
    if status != 0:
        raise SystemExit(f"`uniemo {' '.join(line)}` failed (exit {status}); see its message above")


def write_overrides(path: Path, overrides: dict) -> Path:
    """The YAML file passed to ``--config`` (config overrides), written atomically."""
    write_text(path, yaml.safe_dump(overrides, sort_keys=False))
    return path


def train(run: Path, done: Path, *argv: Any) -> None:
    """A ``uniemo train …`` command that writes ``run``, skipped when ``done`` exists. An unfinished
    run continues from its checkpoint (``--resume``); one killed before its first checkpoint
    holds no trained state and starts again from scratch."""
    if done.is_file():
        return
    if _checkpoint_dir(run / "checkpoints") is not None:
        argv = (*argv, "--resume")
    elif run.exists():
        shutil.rmtree(run)
    uniemo(*argv)


def work_and_out(args: argparse.Namespace, name: str, budget: str) -> tuple[Path, Path]:
    """Where a table's runs go, WORK/BUDGET (WORK: --work, default DEMO/ablations/NAME, or
    NAME-scarceN on the data-scarce split), so that runs of another budget are never reused; and
    its JSON (--out, default WORK.json)."""
    work = args.work or args.demo / "ablations" / f"{name}{split_suffix(args.train_per_emotion)}"
    return work / budget, args.out or work.with_suffix(".json")


def split_suffix(train_per_emotion: int | None) -> str:
    """The folder-name suffix of runs on the data-scarce split ("-scarceN"; none on the full one)."""
    return f"-scarce{train_per_emotion}" if train_per_emotion else ""


def data_note(train_per_emotion: int | None) -> str:
    """Which training split a table's runs used, for its caption."""
    if train_per_emotion:
        return f"data-scarce split ({train_per_emotion} training images per emotion)"
    return "full training split"


def stage1(demo: Path, data: Path, run: Path, epochs: int, seed: int, *extra: Any) -> dict:
    """A stage-1 run (`uniemo train understand --preset tiny`) on ``data`` from the demo's tiny
    CLIP, trained now or earlier (see :func:`train`); returns the RUN/eval.json it wrote."""
    train(run, run / "eval.json", "train", "understand", "--data", data, "--clip",
          demo / "foundation" / "clip", "--out", run, "--preset", "tiny", "--epochs", epochs, "--seed", seed, *extra)
    return read_json(run / "eval.json", "stage-1 evaluation")


def joint_run(demo: Path, data: Path, seed: int, stage1_epochs: int, stage2_epochs: int,
              train_per_emotion: int | None) -> tuple[Path, Path]:
    """Stage 1 and stage 2 on ``data`` for one seed, trained now or earlier and shared by every
    script that needs them (under DEMO/ablations/joint[-scarceN]/); returns (RUN1, RUN2)."""
    home = (demo / "ablations" / f"joint{split_suffix(train_per_emotion)}" / f"e{stage1_epochs}+{stage2_epochs}"
            / f"seed{seed}")
    run1, run2 = home / "stage1", home / "stage2"
    stage1(demo, data, run1, stage1_epochs, seed)
    train(run2, run2 / "implicit_feedback.json", "train", "joint", "--run", run1, "--sd", demo / "foundation" / "sd",
          "--data", data, "--out", run2, "--epochs", stage2_epochs, "--seed", seed)
    return run1, run2


def summarise(values: list[float | None]) -> dict:
    """Mean ± sample standard deviation over seeds (std 0 for one seed); None where any seed
    lacks the metric (e.g. LPIPS without AlexNet weights)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "per_seed": values}
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": spread, "per_seed": values}


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``value`` in the format ``spec`` (".2%", ".3f", ".3g"...), or — when not computed."""
    return "—" if value is None else format(value, spec)


def fmt_summary(summary: dict, spec: str = ".3f") -> str:
    """``mean ± std`` of :func:`summarise`."""
    return "—" if summary["mean"] is None else f"{fmt(summary['mean'], spec)} ± {fmt(summary['std'], spec)}"


def fmt_seeds(summary: dict, spec: str = ".3f") -> str:
    """Every seed's value, comma-separated."""
    return ", ".join(fmt(v, spec) for v in summary["per_seed"])


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; ``align`` has one character per column: l (left) or r (right)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows)) + "\n"


def demo_world(demo: Path) -> str | None:
    """The world version of the demo the runs train on, from its report (None where the demo has
    no report yet, or was made before world 3.3, when reports began to record it)."""
    report = demo / "report.json"
    return read_json(report, "demo report")["world"].get("version") if report.is_file() else None


def publish(out: Path, result: dict, title: str, markdown: str) -> None:
    """Write the result JSON (atomically) and the Markdown beside it, then print the table."""
    write_json(out, result)
    write_text(out.with_suffix(".md"), f"# {title}\n\n{markdown}")
    print(f"\n{markdown}\nwrote {out} and {out.with_suffix('.md')}")
