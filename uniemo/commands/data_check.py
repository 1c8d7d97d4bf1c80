"""Validate a dataset: images per split and emotion, scene/object coverage, and problems.

Exits 0 when the dataset is usable (a train split with readable images), otherwise prints a
one-line error and exits non-zero. --decode also decodes every image to find truncated files."""

from __future__ import annotations

import argparse

from uniemo.vocab import KINDS, SPLITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="dataset root")
    parser.add_argument("--dataset", choices=KINDS, default="emoset", help="dataset kind (default emoset)")
    parser.add_argument("--decode", action="store_true", help="decode every image (slower, finds truncated files)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from uniemo.data import load_rgb, open_dataset, split_exists, UNREADABLE
    from uniemo.errors import UniEmoError

    if not split_exists(args.dir, args.dataset, "train"):
        expected = "train.json" if args.dataset == "emoset" else "class folders or a train/ folder"
        raise UniEmoError(f"{args.dir} has no train split ({expected}): check DIR and --dataset")
    datasets, unusable = {}, {}
    for split in (s for s in SPLITS if split_exists(args.dir, args.dataset, s)):
        try:
            datasets[split] = open_dataset(args.dir, args.dataset, split)
        except UniEmoError as e:
            if split == "train":
                raise
            unusable[split] = str(e)
    class_names = datasets["train"].class_names
    width = max(len(name) for name in class_names) + 2
    print(f"{args.dataset} dataset at {args.dir}: {len(class_names)} classes, "
          f"{len(datasets['train'].scene_vocab)} scene and {len(datasets['train'].object_vocab)} object names")
    print(f"{'split':<8}{'images':>9}" + "".join(f"{name:>{width}}" for name in class_names))
    for split, ds in datasets.items():
        counts = [ds.labels.count(c) for c in range(len(class_names))]
        print(f"{split:<8}{len(ds):>9,}" + "".join(f"{n:>{width},}" for n in counts))
    for split in SPLITS:
        if split not in datasets:
            print(f"{split:<8}{'unusable' if split in unusable else 'absent':>9}")
    print("attribute coverage: " + "; ".join(
        f"{split} scene {_share(ds, 'scene'):.1%}, object {_share(ds, 'object'):.1%}" for split, ds in datasets.items()))
    problems = [f"{split}: {why}" for split, why in unusable.items()]
    for split, ds in datasets.items():
        if args.decode:
            for item in tqdm(ds.items, desc=f"decode {split}", unit="img", leave=False):
                try:
                    load_rgb(item.path)
                except UNREADABLE:
                    ds.problems["truncated or corrupt"] += 1
        problems += [f"{split}: {n:,} {what}" for what, n in sorted(ds.problems.items())]
    print("problems: " + ("; ".join(problems) if problems else "none"))
    if datasets["train"].problems["truncated or corrupt"] == len(datasets["train"]):
        raise UniEmoError(f"no image of {args.dir}'s train split decodes: replace the truncated or corrupt files")
    print("usable")
    return 0


def _share(ds, attribute: str) -> float:
    return sum(getattr(item, attribute) is not None for item in ds.items) / len(ds.items)
