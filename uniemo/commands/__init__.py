"""One module per ``uniemo`` command (see ``uniemo/cli.py``), plus the option checks they share."""

from __future__ import annotations

from uniemo.errors import UniEmoError


def require_positive(**options: int | None) -> None:
    """Refuse a given integer option below 1: ``require_positive(max_steps=args.max_steps)``
    checks ``--max-steps``; options left out (None) are skipped."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise UniEmoError(f"--{name.replace('_', '-')} {value} is invalid: use a positive integer")
