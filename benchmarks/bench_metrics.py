"""Benchmark the paper's generation metrics on this machine: Inception-v3 FID and AlexNet LPIPS
(the networks `uniemo fetch-metrics` takes from registry packages) for N generated images.

Generated and real images are the synthetic world's (64 px, EmoSet format); what is timed is
``metrics.evaluate_generation`` with both networks: FID per emotion and pooled, LPIPS over 10
pairs per emotion. The first pass computes the real reference's features, the second finds them
in the cache (as every later evaluation against the same reference does). Target: 1,000
generated images at 64 px in <= 3 min on 2 CPU cores.

    .venv/bin/python benchmarks/bench_metrics.py [--images 1000] [--real-per-emotion 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from uniemo import metric_nets, metrics
from uniemo.data import open_dataset
from uniemo.demo.synth import write_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="generated images (default 1000)")
    parser.add_argument("--real-per-emotion", type=int, default=50, help="FID reference per emotion (default 50)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    weights = [package.cached() for package in metric_nets.PACKAGES]
    if not all(weights):
        raise SystemExit("run `uniemo fetch-metrics` first (make test and make demo do)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UNIEMO_CACHE"] = tmp  # a cold feature cache, and nothing left behind
        size = (args.images + 8 * args.real_per_emotion) * 10 // 7 + 80  # the train split is 70%
        world = open_dataset(write_synthetic(Path(tmp) / "world", num_images=size, size=64), kind="emoset", split="train")
        generated = [metrics.Generated(item.path, item.label) for item in world.items[:args.images]]
        world.items = metrics.sample_per_class(world.items[args.images:], args.real_per_emotion, seed=0)
        start = time.perf_counter()
        inception, lpips = metrics.InceptionEncoder(weights[0]), metrics.LpipsDistance(weights[1])
        figures = {"load_s": time.perf_counter() - start, "generated": len(generated), "real": len(world),
                   "threads": torch.get_num_threads()}
        for name in ("cold_reference", "cached_reference"):
            start = time.perf_counter()
            report = metrics.evaluate_generation(generated, world, world.class_names, inception=inception, lpips=lpips)
            figures[f"{name}_s"] = time.perf_counter() - start
        figures["fid"], figures["lpips"] = (report["metrics"][k]["all"] for k in ("fid", "lpips"))
    print(f"metrics for {figures['generated']} generated images at 64 px ({figures['real']} real, "
          f"{figures['threads']} threads): networks load {figures['load_s']:.1f} s; "
          f"first evaluation {figures['cold_reference_s']:.1f} s, with the reference cached "
          f"{figures['cached_reference_s']:.1f} s (target <= 180 s); FID {figures['fid']:.2f}, LPIPS {figures['lpips']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
