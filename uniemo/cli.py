"""The ``uniemo`` command. Each leaf command lives in ``uniemo/commands/<name>.py`` with a
docstring (its help), ``add_arguments(parser)`` and ``run(args)``; heavy imports happen
inside ``run`` so ``uniemo --help`` stays fast."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from uniemo import __version__
from uniemo.errors import UniEmoError

INTERRUPTED = 130  # exit status after Ctrl-C (the shell's 128 + SIGINT)

# (command words, module in uniemo.commands)
COMMANDS: list[tuple[tuple[str, ...], str]] = [
    (("demo",), "demo"),
    (("synth",), "synth"),
    (("pretrain-base",), "pretrain_base"),
    (("data", "check"), "data_check"),
    (("train", "evaluator"), "train_evaluator"),
    (("evaluate", "generation"), "evaluate_generation"),
    (("fetch-metrics",), "fetch_metrics"),
    (("train", "joint"), "train_joint"),
    (("generate",), "generate"),
    (("edit",), "edit"),
    (("inspect", "alpha"), "inspect_alpha"),
    (("train", "understand"), "train_understand"),
    (("evaluate", "understanding"), "evaluate_understanding"),
    (("classify",), "classify"),
    (("feedback",), "feedback"),
    (("serve",), "serve"),
]

GROUP_HELP = {
    "data": "inspect datasets",
    "train": "train a stage of UniEmo",
    "evaluate": "measure understanding or generation",
    "inspect": "look inside a run",
}


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors as the one line every other error is."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="uniemo", description="UniEmo: emotional image understanding and generation, offline.")
    parser.add_argument("--version", action="version", version=f"uniemo {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict = {}  # group word -> its subparsers
    for words, module_name in COMMANDS:
        module = importlib.import_module(f"uniemo.commands.{module_name}")
        summary = (module.__doc__ or "").strip().splitlines()[0]
        where = top
        if len(words) == 2:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=GROUP_HELP[words[0]])
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            where = groups[words[0]]
        leaf = where.add_parser(words[-1], help=summary, description=(module.__doc__ or "").strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(leaf)
        leaf.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)  # in the try: Ctrl-C during the commands' imports
        check_seed(getattr(args, "seed", None))
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # in the try: a closed pipe is answered here, not at exit
        return code
    except UniEmoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`uniemo classify photos/ | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 1
    except OSError as e:
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def os_error(e: OSError) -> str:
    """An OSError the user's disk or paths caused as one line; any other is a bug and is raised."""
    where = " ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{e.strerror} while writing{f' {where}' if where else ''}: free disk space, then run the command "
                "again (training: with --resume; what was written before is intact)")
    if not where:
        raise e
    return f"{e.strerror}: {where}: choose another path, or fix this one (its folders and permissions)"


def check_seed(seed: int | None) -> None:
    """Every command's --seed reaches numpy, which takes 0 .. 2**32 - 1."""
    if seed is not None and not 0 <= seed < 2**32:
        raise UniEmoError(f"--seed {seed} is invalid: use an integer from 0 to {2**32 - 1}")


if __name__ == "__main__":
    raise SystemExit(main())
