"""Stage 1: train the hierarchical emotional understanding chain (expert queries, L_U).

Writes RUN: config.yaml (with the CLIP path), model.safetensors + vision_config.json +
understanding.json (the weights with the best validation accuracy), attributes.json|.safetensors,
preprocessor_config.json, metrics.jsonl (one line per epoch), checkpoints/last (resumable) and
eval.json (val and test accuracy at the end; test never chooses anything).

  uniemo train understand --data data/EmoSet --clip models/clip-vit-b32 --out runs/stage1
  accelerate launch -m uniemo.cli train understand ...   # several GPUs, same flags"""

from __future__ import annotations

import argparse

from uniemo.commands import override, require_positive
from uniemo.rundir import RunDir
from uniemo.vocab import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset root")
    parser.add_argument("--clip", metavar="DIR", help="local CLIP directory (Hugging Face layout); "
                        "with --resume the run's own is used")
    parser.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    parser.add_argument("--dataset", choices=KINDS, default="emoset", help="dataset kind (default emoset)")
    parser.add_argument("--preset", default="vit-b32", help="named config (vit-b32, vit-b16, vit-l14, official, tiny)")
    parser.add_argument("--config", metavar="YAML", help="overrides on top of the preset")
    parser.add_argument("--epochs", type=int, help="epochs (default: stage1.epochs)")
    parser.add_argument("--max-steps", type=int,
                        help="stop early after this many optimizer steps (a cap: --epochs still ends the run)")
    parser.add_argument("--batch-size", type=int, help="batch size per device (default: stage1.batch_size)")
    parser.add_argument("--seed", type=int, help="random seed (default: stage1.seed)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/last (from the first step if it stopped before its first "
                             "checkpoint) with the run's own config: --preset, --config and --clip are not read")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from uniemo.config import load_config, merge, preset, read_yaml
    from uniemo.errors import UniEmoError
    from uniemo.understanding import train_understanding

    out = Path(args.out)
    if args.resume:
        cfg = load_config(RunDir(out).config)
    else:
        if args.clip is None:
            raise UniEmoError("--clip DIR is required: the local CLIP directory to start from")
        cfg = preset(args.preset)
        if args.config:
            cfg = merge(cfg, read_yaml(args.config, "config overrides"), where=args.config)
        cfg.clip_path = str(Path(args.clip).resolve())
    require_positive(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size)
    override(cfg.stage1, args, "epochs", "max_steps", "batch_size", "seed")
    reports = train_understanding(args.data, out, cfg, kind=args.dataset, resume=args.resume)
    if reports is None:  # not the main process: it has said everything
        return 0
    print(f"wrote stage-1 run {out}")
    for split, report in reports.items():
        print(f"{split}: top-1 {report['top1']:.4f}" + (f", 2-class {report['binary']:.4f}" if "binary" in report else ""))
    return 0
