"""Print the emotional correlation table of a stage-2 run: the top attributes per emotion.

The table P gives, for every scene and object name, a distribution over the emotions
(alpha_table.json in the run); alpha = P[matched attribute][target emotion]."""

from __future__ import annotations

import argparse

from uniemo.commands import require_positive
from uniemo.rundir import RunDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="stage-2 run directory (has alpha_table.json)")
    parser.add_argument("--top", type=int, default=5, help="attributes listed per emotion and kind (default 5)")


def run(args: argparse.Namespace) -> int:
    from uniemo.fusion import CorrelationTable
    from uniemo.io import read_json

    require_positive(top=args.top)
    path = RunDir(args.run).alpha_table
    table = CorrelationTable.from_json(read_json(path, "alpha table (a run made by `uniemo train joint`)"), path)
    print(f"emotional correlation table ({table.method}): {len(table.scene_names)} scenes, "
          f"{len(table.object_names)} objects")
    for k, emotion in enumerate(table.emotions):
        print(f"\n{emotion}")
        for kind in ("scene", "object"):
            top = ", ".join(f"{name} {value:.2f}" for name, value in table.top(kind, k, args.top))
            print(f"  {kind:<7}{top or '(none)'}")
    return 0
