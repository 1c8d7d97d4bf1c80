"""Serve UniEmo in a browser: understand, generate and edit images (a local Gradio app).

  uniemo serve                                 # the demo's models (demo-out), http://127.0.0.1:7860
  uniemo serve --run runs/stage2 --port 8000   # any stage-2 run (a stage-1 or -3 run: understanding only)

It binds 127.0.0.1: only this machine can open the page. --host 0.0.0.0 opens it, with no login,
to every machine that can reach this one: anyone there can run the models and upload files; use
it only on a network you trust. There is never a public share link. The page's actions are also
an API (/classify, /generate, /edit) for gradio_client; see README."""

from __future__ import annotations

import argparse

from uniemo.commands import add_sd_argument

DEMO_OUT = "demo-out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help=f"run directory (default: the demo's stage-2 run in ./{DEMO_OUT})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-images", type=int, default=8, help="most images one request may ask for (default 8)")
    parser.add_argument("--max-steps", type=int, default=50, help="most denoising steps one request may ask for (default 50)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_sd_argument(parser)


def run(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from uniemo.commands import require_positive, resolve_device
    from uniemo.errors import UniEmoError

    require_positive(max_images=args.max_images, max_steps=args.max_steps)
    device = resolve_device(args.device)
    if not 0 <= args.port < 65536:
        raise UniEmoError(f"--port {args.port} is invalid: use a port from 0 to 65535")
    if importlib.util.find_spec("gradio") is None:
        raise UniEmoError("gradio is not installed: `pip install 'uniemo[serve]'` (`make` installs it)")
    run_dir = args.run or default_run()
    if not Path(run_dir).is_dir():
        raise UniEmoError(f"--run {run_dir} is not a directory: pass a run made by `uniemo train ...`")
    from uniemo.app import Limits, Studio, serve

    studio = Studio(run_dir, Limits(max_images=args.max_images, max_steps=args.max_steps), device,
                    args.sd)
    print(f"serving {run_dir} at http://{args.host}:{args.port} (Ctrl+C stops)", flush=True)
    serve(studio, args.host, args.port, quiet=True)
    return 0


def default_run() -> str:
    from pathlib import Path

    from uniemo.demo.runner import PATHS
    from uniemo.errors import UniEmoError

    run = Path(DEMO_OUT) / PATHS["run2"]
    if not run.is_dir():
        raise UniEmoError(f"no --run given and no {run} here: run `make demo` first, or pass --run RUN")
    return str(run)
