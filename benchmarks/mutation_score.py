"""The mutation score of `make mutation`, per module and per function, from mutmut's results.

    .venv/bin/python benchmarks/mutation_score.py [--survivors]

Reads `mutmut results --all true` (run after `make mutation`, in the repository root) and counts,
for the functions the Makefile's EQUATIONS names (then, apart, its LOADERS): killed (a test
failed, or the mutant ran past its time limit), survived, and no tests.
Score = killed / (killed + survived + no tests)."""

from __future__ import annotations

import argparse
import collections
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def patterns(variable: str) -> list[str]:
    """The mutant names a Makefile variable (a list of function patterns) stands for."""
    makefile = (ROOT / "Makefile").read_text()
    names = re.search(rf"^{variable} := (.*?)\n(?=[#A-Za-z])", makefile, re.S | re.M).group(1).replace("\\\n", " ").split()
    return [f"uniemo.{name}__mutmut_*" for name in names]


def results() -> list[tuple[str, str]]:
    out = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "results", "--all", "true"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.strip().rsplit(": ", 1)) for line in out.splitlines() if "__mutmut_" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    args = parser.parse_args()
    everything = results()
    for title, variable in (("the equations", "EQUATIONS"), ("the data loaders", "LOADERS")):
        chosen = [(name, status) for name, status in everything if any(fnmatch.fnmatch(name, p) for p in patterns(variable))]
        print(f"{title} ({variable}):")
        table(chosen)
        if args.survivors:
            for name, status in chosen:
                if status not in ("killed", "timeout"):
                    print(f"{status}: {name}")
        print()


def table(chosen: list[tuple[str, str]]) -> None:
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in chosen:
        verdict = "killed" if status in ("killed", "timeout") else status
        by_module[name.split(".")[1]][verdict] += 1
    print(f"{'module':<14}{'mutants':>8}{'killed':>8}{'survived':>10}{'no tests':>10}{'score':>8}")
    total = collections.Counter()
    for module, counts in sorted(by_module.items()):
        total += counts
        print(row(module, counts))
    print(row("all", total))


def row(module: str, counts: collections.Counter) -> str:
    checked = counts["killed"] + counts["survived"] + counts["no tests"]
    score = counts["killed"] / checked if checked else float("nan")
    return (f"{module:<14}{sum(counts.values()):>8}{counts['killed']:>8}{counts['survived']:>10}"
            f"{counts['no tests']:>10}{score:>8.1%}")


if __name__ == "__main__":
    main()
