"""Measure a stage-1 (or stage-2) run's emotion accuracy on a dataset split.

Prints and writes JSON: top-1, per-class accuracy, 2-class accuracy (positive/negative map of
SPEC §0) and the confusion matrix, also as PNG beside the JSON. An EmoSet-trained run on FI
(same 8 emotions) is the zero-shot protocol of paper Table III; on Twitter I/II the 8 predicted
emotions are mapped to positive/negative. EmotionROI's 6 classes have no map from the 8
emotions: evaluate on it a run trained on it.

  uniemo evaluate understanding --run runs/stage1 --data data/FI --dataset fi --split test"""

from __future__ import annotations

import argparse

from uniemo.commands import require_positive, resolve_device
from uniemo.rundir import RunDir
from uniemo.vocab import KINDS, SPLITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (from `uniemo train understand`)")
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset root")
    parser.add_argument("--dataset", choices=KINDS, default="emoset", help="dataset kind (default emoset)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split (default test)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--out", metavar="FILE", help="JSON to write (default RUN/eval_<dataset>_<split>.json)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from uniemo.data import clip_transforms, open_dataset
    from uniemo.errors import UniEmoError
    from uniemo.io import write_json
    from uniemo.plots import confusion_matrix_png
    from uniemo.understanding import UniEmoUnderstanding, accuracy_on, load_image_processor

    require_positive(batch_size=args.batch_size)
    model = UniEmoUnderstanding.from_pretrained(args.run).to(resolve_device(args.device))
    dataset = open_dataset(args.data, args.dataset, args.split, clip_transforms(load_image_processor(args.run), False))
    if len(dataset) == 0:
        raise UniEmoError(f"the {args.split} split of {args.data} has no images: check --data, --dataset and --split")
    report = {"run": str(args.run), "data": str(args.data), "dataset": args.dataset, "split": args.split,
              **accuracy_on(model, dataset, args.batch_size)}
    out = Path(args.out) if args.out else RunDir(args.run).evaluation(args.dataset, args.split)
    write_json(out, report)
    png = out.with_suffix(".png")
    confusion_matrix_png(report["confusion"], list(report["per_class"]), png,
                         title=f"{args.dataset} {args.split}: top-1 {report['top1']:.3f}")
    print(summary(report))
    print(f"wrote {out} and {png}")
    return 0


def summary(report: dict) -> str:
    """One line: top-1, 2-class and the weakest and strongest classes."""
    per_class = {k: v for k, v in report["per_class"].items() if v is not None}
    worst, best = min(per_class, key=per_class.get), max(per_class, key=per_class.get)
    binary = f", 2-class {report['binary']:.4f}" if report.get("binary") is not None else ""
    return (f"{report['split']} top-1 {report['top1']:.4f}{binary} on {report['num_samples']:,} images "
            f"(per class {per_class[worst]:.2f} {worst} to {per_class[best]:.2f} {best})")
