"""Explicit feedback (Algorithm 1) and stage 3: filter generated images, train understanding again.

Generates --per-emotion images of every emotion with a stage-2 run (RUN2), scores each by Emo-A
(the evaluator's probability of the target emotion) and Sem-C (semantic clarity), keeps those
ranked within [--eta%, --delta%) for every --criteria, and trains the understanding model again,
starting from RUN2's weights, on the real training set mixed with the kept images so that they
form --proportion of it. Writes into OUT:

  generated/       every generated image (EmoSet layout); its train.json lists the kept ones,
                   scores.csv has both scores and ranks of every image
  model.safetensors, config.yaml, ...   RUN3, a stage-1-format run (`uniemo classify --run OUT`)
  feedback.json    accuracy of RUN2 (before) and RUN3 (after), kept count, actual proportion
  generation_metrics.json|.md   with --metrics: all generated vs kept images

Re-running on the same OUT skips the images already generated; --resume continues the training.
Sem-C uses --places365 / --imagenet-resnet50 weights when given, else CLIP zero-shot (as in
`uniemo evaluate generation`). Ablations of paper Tables VI-VIII: --criteria, --eta/--delta,
--proportion.

  uniemo feedback --run runs/stage2 --data data/EmoSet --evaluator runs/evaluator --out runs/stage3"""

from __future__ import annotations

import argparse

from uniemo.commands import add_sampling_arguments, override, require_positive
from uniemo.rundir import RunDir
from uniemo.vocab import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from uniemo.commands.evaluate_generation import add_network_arguments

    parser.add_argument("--run", required=True, metavar="RUN2", help="stage-2 run (from `uniemo train joint`)")
    parser.add_argument("--data", required=True, metavar="DIR", help="the real dataset root RUN2 was trained on")
    parser.add_argument("--evaluator", required=True, metavar="EVAL", help="Emo-A evaluator (`uniemo train evaluator`)")
    parser.add_argument("--out", required=True, metavar="RUN3", help="stage-3 run directory to write")
    parser.add_argument("--dataset", choices=KINDS, default="emoset", help="dataset kind (default emoset)")
    parser.add_argument("--per-emotion", type=int, metavar="M", help="images generated per emotion "
                        "(default: feedback.per_emotion of RUN2's config)")
    parser.add_argument("--eta", type=float,
                        help="start of the kept rank window in %% (default: feedback.eta of RUN2's config)")
    parser.add_argument("--delta", type=float,
                        help="end of the kept rank window in %% (default: feedback.delta of RUN2's config)")
    parser.add_argument("--proportion", type=float,
                        help="share of kept images in the training mix (default: feedback.proportion of RUN2's config)")
    parser.add_argument("--criteria", help="comma-separated filters, from emo-a,sem-c (default: feedback.criteria of "
                                           "RUN2's config)")
    parser.add_argument("--epochs", type=int, help="stage-3 epochs (default: stage1.epochs)")
    parser.add_argument("--max-steps", type=int,
                        help="stop stage 3 early after this many optimizer steps (a cap: --epochs still ends it)")
    parser.add_argument("--batch-size", type=int, help="stage-3 batch size (default: stage1.batch_size)")
    parser.add_argument("--steps", type=int, metavar="DENOISING_STEPS", help="denoising steps per image "
                        "(default: generation.num_inference_steps)")
    parser.add_argument("--generate-batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of generation, the mix and training (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue the stage-3 training in RUN3")
    parser.add_argument("--metrics", action="store_true", help="also measure the generated and the kept images")
    add_network_arguments(parser)  # Sem-C's classifiers; with --metrics, every metric's network


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from uniemo.commands.evaluate_generation import load_networks
    from uniemo.data import open_dataset
    from uniemo.feedback import explicit_feedback, feedback_table
    from uniemo.pipeline import DTYPES

    cfg = feedback_config(args)
    real = open_dataset(args.data, args.dataset, "train")
    networks = load_networks(args, real, distribution=args.metrics)
    summary = explicit_feedback(Path(args.run), Path(args.data), real, Path(args.out), cfg, networks["evaluator"],
                                networks["semantic"], kind=args.dataset, seed=args.seed, num_inference_steps=args.steps,
                                generate_batch_size=args.generate_batch_size, resume=args.resume,
                                dtype=DTYPES[args.dtype], scheduler=args.scheduler, sd_path=args.sd)
    if summary is None:  # not the main process of several
        return 0
    print(feedback_table(summary) + f"wrote stage-3 run {args.out} and {RunDir(args.out).feedback}")
    if args.metrics:
        write_metrics(Path(args.out), real, networks, args.seed)
    return 0


def feedback_config(args: argparse.Namespace):
    """RUN2's config (RUN3's own when resuming) with the command line's feedback and stage-3
    settings; invalid values are one-line errors."""
    from uniemo.config import load_config
    from uniemo.feedback import check_settings

    own = RunDir(args.out).config
    cfg = load_config(own if args.resume and own.is_file() else RunDir(args.run).config)
    require_positive(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, steps=args.steps,
                     generate_batch_size=args.generate_batch_size)
    override(cfg.feedback, args, "per_emotion", "eta", "delta", "proportion")
    if args.criteria is not None:
        cfg.feedback.criteria = [c.strip().lower() for c in args.criteria.split(",") if c.strip()]
    check_settings(cfg.feedback)
    override(cfg.stage1, args, "epochs", "max_steps", "batch_size")
    cfg.stage1.seed = args.seed
    return cfg


def write_metrics(out, real, networks, seed: int) -> None:
    """Generation metrics of every generated image and of the kept ones (``uniemo evaluate generation``)."""
    from uniemo import metrics
    from uniemo.data import open_dataset
    from uniemo.io import write_json, write_text

    generated = RunDir(out).generated
    sets = {"generated": metrics.read_generated(generated / "image", real.class_names),
            "kept": [metrics.Generated(item.path, item.label)
                     for item in open_dataset(generated, "emoset", "train").items]}
    reports = {name: metrics.evaluate_generation(images, real, real.class_names, seed=seed, **networks)
               for name, images in sets.items()}
    text = "".join(f"## {name} images\n\n{metrics.generation_table(r)}\n" for name, r in reports.items())
    report = RunDir(out).generation_metrics
    write_json(report, reports)
    write_text(report.with_suffix(".md"), text)
    print(text + f"wrote {report}")
