"""Stage 2: train understanding and generation jointly (L_joint = 0.3 L_U + 0.3 L_cond + 0.4 L_diff).

Starts from a stage-1 run (RUN1) and a Stable Diffusion directory whose VAE, text encoder and
UNet stay frozen. Writes RUN2: the updated understanding model, the mappers
(fusion.safetensors), the emotional correlation table (alpha_table.json), the emotion space
(emotion_space.safetensors) and implicit_feedback.json (accuracy of RUN2 vs RUN1).
Ablations (paper Table V) are config values: fusion.features, fusion.use_alpha, fusion.cond_loss.

  uniemo train joint --run runs/stage1 --sd models/sd15 --data data/EmoSet --out runs/stage2"""

from __future__ import annotations

import argparse

from uniemo.commands import override, require_positive
from uniemo.rundir import RunDir
from uniemo.vocab import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="stage-1 run directory (from `uniemo train understand`)")
    parser.add_argument("--sd", required=True, help="Stable Diffusion 1.5 or XL directory (diffusers layout)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset root")
    parser.add_argument("--dataset", choices=KINDS, default="emoset",
                        help="dataset kind (default emoset; a folder dataset has no scenes or objects, so α is 1)")
    parser.add_argument("--out", required=True, help="stage-2 run directory to write")
    parser.add_argument("--config", help="YAML with overrides of the run's config (e.g. fusion: {use_alpha: false})")
    parser.add_argument("--epochs", type=int, help="epochs (default: stage2.epochs)")
    parser.add_argument("--max-steps", type=int,
                        help="stop early after this many optimizer steps (a cap: --epochs still ends the run)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: stage2.batch_size)")
    parser.add_argument("--seed", type=int, help="random seed (default: stage2.seed)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/last (from the first step if it stopped before its first "
                             "checkpoint)")
    parser.add_argument("--alpha-table", choices=("classifier", "counts"),
                        help="how to build the correlation table P (default: fusion.alpha_table)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from uniemo.config import load_config, merge, read_yaml
    from uniemo.fusion import check_transfer_prompt
    from uniemo.joint import train_joint

    cfg = load_config(RunDir(args.run).config)
    if args.config:
        cfg = merge(cfg, read_yaml(args.config, "config overrides"), where=args.config)
    require_positive(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size)
    from uniemo.errors import UniEmoError

    if not 0.0 <= cfg.fusion.object_prompt_p <= 1.0:
        raise UniEmoError(f"fusion.object_prompt_p {cfg.fusion.object_prompt_p} is out of range: "
                          "use a probability in [0, 1]")
    check_transfer_prompt(cfg.fusion.transfer_prompt)
    if cfg.fusion.cond_warmup_steps < 0:
        raise UniEmoError(f"fusion.cond_warmup_steps {cfg.fusion.cond_warmup_steps} is negative: "
                          "use 0 (no warm-up) or a number of optimizer steps")
    override(cfg.stage2, args, "epochs", "max_steps", "batch_size", "seed")
    override(cfg.fusion, args, "alpha_table")
    cfg.sd_path = str(Path(args.sd).resolve())
    feedback = train_joint(args.run, args.data, args.out, cfg, resume=args.resume, kind=args.dataset)
    if feedback is None:  # not the main process: it has said everything
        return 0
    print(f"wrote stage-2 run {args.out}")
    for split, acc in feedback.items():
        print(f"{split} accuracy: stage 1 {acc['run1']:.4f} -> stage 2 {acc['run2']:.4f}")
    return 0
