"""Measure generated images: FID, LPIPS, Emo-A, Sem-C and Sem-D per emotion and overall, and the
emotion-transfer and emotion-fusion figures object_kept and mix_mass.

--images is what `uniemo generate` writes: DIR/<emotion>/*.png, DIR/mix_<emotion>-<weight>_.../*.png
for `--mix`, and DIR/metadata.jsonl with what each image was asked for; --real is the dataset
whose images of each emotion are FID's reference (their features are cached in the uniemo cache).
Every network comes from a local file: FID uses Inception-v3 and LPIPS AlexNet, by default the
weights `uniemo fetch-metrics` put in the cache (or --inception / --lpips-alex FILE); without
Inception, FID uses CLIP image features (--clip). Emo-A needs an evaluator from
`uniemo train evaluator`; Sem-C uses ResNet-50 Places365/ImageNet weights or else CLIP
zero-shot over the dataset's scene and object names; Sem-D uses CLIP. These five need emotion
folders. object_kept, for images whose metadata names an object (`generate --object`), is the
share whose CLIP zero-shot top-1 over the dataset's object names (plus the words asked for) is
that object. mix_mass, for each mix folder, is the evaluator's probability summed over the mix's
emotions, averaged over its images (weights from metadata.jsonl, else from the folder's name).
For `uniemo edit`'s images, edit_kept is the share whose CLIP top-1 object is the source's: its
annotation where the source is an image of --real (any split), else the one CLIP names in it;
edit_distance is 1 - cos of the CLIP features of edit and source. A metric whose network is
missing is reported as not computed, one with no images it applies to as not applicable.
Writes OUT (JSON) and OUT with .md (Markdown table)."""

from __future__ import annotations

import argparse

from uniemo.commands import require_positive
from uniemo.vocab import KINDS, SPLITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="generated images, DIR/<emotion or mix folder>/*.png (+ DIR/metadata.jsonl)")
    parser.add_argument("--real", required=True, metavar="DATA", help="real dataset root (FID reference)")
    parser.add_argument("--dataset", choices=KINDS, default="emoset", help="real dataset kind (default emoset)")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="real split used as FID reference (default train)")
    parser.add_argument("--max-real", type=int, default=None, metavar="N",
                        help="at most N real images per emotion, a seeded sample (default all)")
    parser.add_argument("--evaluator", metavar="EVAL",
                        help="evaluator made by `uniemo train evaluator` (Emo-A and mix_mass)")
    add_network_arguments(parser)
    parser.add_argument("--pairs", type=int, default=10, help="random pairs per emotion for LPIPS/Sem-D (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs and the real sample (default 0)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="JSON report (default DIR/generation_metrics.json; the table goes beside it as .md)")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The metric networks, each from a local file (``load_networks`` reads them); shared with `feedback`."""
    parser.add_argument("--clip", metavar="DIR", help="local CLIP directory (default: the evaluator's CLIP)")
    parser.add_argument("--inception", metavar="FILE", default="auto",
                        help="FID's Inception-v3 weights: a file (torch-fidelity's .pth or .safetensors), 'auto' "
                             "(default: those `uniemo fetch-metrics` made, if any) or 'none' (FID on --clip)")
    parser.add_argument("--lpips-alex", metavar="FILE", default="auto",
                        help="AlexNet LPIPS weights: a file (torchvision AlexNet .pth or .safetensors), 'auto' "
                             "(default: those `uniemo fetch-metrics` made, if any) or 'none'")
    parser.add_argument("--lpips-linear", metavar="FILE", help="LPIPS v0.1 AlexNet linear layers (default: lpips' copy)")
    parser.add_argument("--places365", metavar="FILE", help="ResNet-50 Places365 weights for Sem-C")
    parser.add_argument("--imagenet-resnet50", metavar="FILE", help="ResNet-50 ImageNet weights for Sem-C")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from uniemo import metrics
    from uniemo.data import annotated_objects, open_dataset
    from uniemo.errors import UniEmoError
    from uniemo.io import write_json, write_text

    require_positive(pairs=args.pairs, batch_size=args.batch_size)
    if args.max_real is not None and args.max_real < 2:
        raise UniEmoError(f"--max-real {args.max_real} is invalid: use at least 2 (FID needs two images an emotion)")
    if args.out and Path(args.out).suffix == ".md":
        raise UniEmoError(f"--out {args.out} names the JSON report: give a .json file (the table goes beside it "
                          "as .md)")
    real = open_dataset(args.real, kind=args.dataset, split=args.split)
    generated = metrics.read_generated(args.images, real.class_names)
    annotated = annotated_objects(args.real, [g.source for g in generated if g.source is not None], args.dataset,
                                  {args.split: real})
    if args.max_real is not None:
        real.items = metrics.sample_per_class(real.items, args.max_real, args.seed)
    networks = load_networks(args, real)
    report = metrics.evaluate_generation(generated, real, real.class_names, pairs=args.pairs, seed=args.seed,
                                         batch_size=args.batch_size, source_objects=annotated, **networks)
    report.update(images=str(args.images), real={"path": str(args.real), "kind": args.dataset, "split": args.split})
    out = Path(args.out) if args.out else Path(args.images) / "generation_metrics.json"
    table = metrics.generation_table(report)
    write_json(out, report)
    write_text(out.with_suffix(".md"), f"# Generation metrics: {args.images}\n\n{table}")
    print(table + f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


def load_networks(args, real, distribution: bool = True) -> dict:
    """The networks the user gave (and CLIP's fallbacks), keyed as ``evaluate_generation`` takes them;
    FID's and LPIPS' only with ``distribution``."""
    from pathlib import Path

    from uniemo import metric_nets, metrics
    from uniemo.evaluator import Evaluator
    from uniemo.loading import load_clip

    evaluator = Evaluator.from_pretrained(args.evaluator) if args.evaluator else None
    clip = evaluator.encoder if evaluator else None  # the evaluator's CLIP, unless --clip names another
    if args.clip and not (evaluator and Path(args.clip).resolve() == Path(evaluator.config.clip_path).resolve()):
        clip = metrics.ClipImageEncoder(load_clip(args.clip))
    semantic = [metrics.ResNetClassifier(path, label) for path, label in
                ((args.places365, "places365"), (args.imagenet_resnet50, "imagenet")) if path]
    if not semantic and clip is not None:
        semantic = [metrics.ClipZeroShot(clip, names, label)
                    for names, label in ((real.scene_vocab, "scene"), (real.object_vocab, "object")) if names]
    inception, alexnet = (_network_file(choice, package) if distribution else None for choice, package in
                          ((args.inception, metric_nets.INCEPTION), (args.lpips_alex, metric_nets.LPIPS_ALEX)))
    return dict(clip=clip, evaluator=evaluator, semantic=semantic,
                inception=metrics.InceptionEncoder(inception) if inception else None,
                lpips=metrics.LpipsDistance(alexnet, args.lpips_linear) if alexnet else None)


def _network_file(choice: str, package):
    """The weight file a --inception / --lpips-alex value names: 'auto' is the cache's, if there."""
    if choice == "none":
        return None
    return package.cached() if choice == "auto" else choice
