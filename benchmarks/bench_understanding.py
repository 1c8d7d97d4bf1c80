"""Speed of UniEmoUnderstanding against the plain CLIPVisionModel it wraps (issue 3).

Random weights, batch 8, torch.inference_mode, on the CPU (or --device cuda). The expert
queries lengthen the sequence, so some slowdown is inherent; the target is
    time ratio <= 1.15 x FLOP ratio,
where the FLOP ratio counts attention and MLP FLOPs of every encoder layer at its actual
sequence length plus the two Interactive Blocks. Also prints the parameter counts of each preset.

  .venv/bin/python benchmarks/bench_understanding.py [--presets vit-b32 vit-l14] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from uniemo.config import UnderstandingConfig
from uniemo.demo.foundation import clip_config
from uniemo.understanding import UniEmoUnderstanding


def layer_flops(n: int, d: int, mlp: int) -> int:
    """FLOPs (2 per multiply-add) of one pre-LN transformer layer on n tokens."""
    projections = 4 * n * d * d
    attention = 2 * n * n * d  # scores and the weighted sum
    return 2 * (projections + attention + 2 * n * d * mlp)


def interactive_flops(q: int, patches: int, d: int, layers: int) -> int:
    """FLOPs of an Interactive Block: q queries read `patches` tokens, then a 4d FFN."""
    per_layer = 2 * q * d * d + 2 * patches * d * d + 2 * q * patches * d + 2 * q * d * 4 * d
    return 2 * per_layer * layers


def flop_ratio(model: UniEmoUnderstanding) -> float:
    vc, cfg = model.vision.config, model.cfg
    d, mlp, n_layers = vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers
    p = 1 + (vc.image_size // vc.patch_size) ** 2
    q = cfg.query_len
    l1, l2 = model.stages
    plain = n_layers * layer_flops(p, d, mlp)
    lengths = [p + q] * l1 + [p + 2 * q] * (n_layers - l1)
    if cfg.queries == "single-step":
        lengths = [p + 2 * q] * n_layers
    ours = sum(layer_flops(n, d, mlp) for n in lengths) + 2 * interactive_flops(q, p - 1, d, cfg.interactive_layers)
    return ours / plain


def build(preset: str, device: str) -> UniEmoUnderstanding:
    from transformers import CLIPVisionModel

    cfg = clip_config(preset)
    torch.manual_seed(0)
    model = UniEmoUnderstanding(CLIPVisionModel(cfg.vision_config), UnderstandingConfig(), cfg.projection_dim)
    return model.eval().to(device)


def seconds(fn, x) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def bench(preset: str, batch: int, repeats: int, device: str) -> dict:
    model = build(preset, device)
    size = model.vision.config.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    plain, ours = model.vision, model
    plain(x), ours(x)  # warm-up
    t_plain, t_ours = [], []
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        t_plain.append(seconds(plain, x))
        t_ours.append(seconds(ours, x))
    tp, to = statistics.median(t_plain), statistics.median(t_ours)
    return {"preset": preset, "plain_img_s": batch / tp, "uniemo_img_s": batch / to,
            "time_ratio": to / tp, "flop_ratio": flop_ratio(model)}


def parameter_counts(preset: str) -> tuple[int, int]:
    model = build(preset, "cpu")
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.vision.parameters())
    return total, total - backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["vit-b32", "vit-l14"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", nargs="*", default=["vit-b32", "vit-b16", "vit-l14"])
    args = parser.parse_args()

    print(f"device {args.device}, batch {args.batch}, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'preset':8} {'CLIP img/s':>11} {'UniEmo img/s':>13} {'time ratio':>11} {'FLOP ratio':>11} "
          f"{'1.15xFLOP':>10}  verdict")
    for preset in args.presets:
        r = bench(preset, args.batch, args.repeats, args.device)
        target = 1.15 * r["flop_ratio"]
        verdict = "ok" if r["time_ratio"] <= target else "over target"
        print(f"{preset:8} {r['plain_img_s']:11.2f} {r['uniemo_img_s']:13.2f} {r['time_ratio']:11.3f} "
              f"{r['flop_ratio']:11.3f} {target:10.3f}  {verdict}")
    for preset in args.params:
        total, new = parameter_counts(preset)
        print(f"parameters {preset}: {total / 1e6:.1f} M total, {new / 1e6:.2f} M added by UniEmo "
              "(queries, interactive blocks, beta, projections, emotion head)")


if __name__ == "__main__":
    main()
