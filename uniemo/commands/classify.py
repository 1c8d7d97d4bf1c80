"""Predict the emotion an image evokes, with the 8 (or the run's) class probabilities, and the
scene and object the understanding branch reads in it (its expert queries' projections matched
against the run's attribute names, as in training, eq. 4; the 3 nearest with --json).

--explain OUTDIR writes, per image, a PNG with the image and the attention of the scene and
object expert queries over it (paper Fig. 9).

  uniemo classify --run runs/stage1 photo.jpg other.png --json
  uniemo classify --run runs/stage1 photos/ --explain maps/"""

from __future__ import annotations

import argparse

BATCH = 32  # images per forward pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (from `uniemo train understand`)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--explain", metavar="OUTDIR", help="write the expert-query attention maps as PNG")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from uniemo.commands import image_files, resolve_device
    from uniemo.data import clip_transforms, model_view, read_image
    from uniemo.errors import UniEmoError
    from uniemo.plots import attention_png
    from uniemo.understanding import UniEmoUnderstanding, load_attributes, load_image_processor

    device = resolve_device(args.device)
    model = UniEmoUnderstanding.from_pretrained(args.run).to(device)
    explain = args.explain is not None
    if explain and model.cfg.queries == "none":
        raise UniEmoError(f"{args.run} was trained with queries: none, so it has no expert-query attention; "
                          "drop --explain")
    files = image_files(args.images, clash="their attention maps would overwrite each other: rename one or "
                        "explain them into different folders" if explain else None)
    banks = {} if model.cfg.queries == "none" else dict(zip(("scene", "object"), load_attributes(args.run)))
    processor = load_image_processor(args.run)
    transform = clip_transforms(processor, train=False)
    for start in range(0, len(files), BATCH):
        paths = files[start:start + BATCH]
        pixels = torch.stack([transform(read_image(path)) for path in paths])
        with torch.no_grad():
            out = model(pixels.to(device), output_attentions=explain)
        probs = out.logits.float().softmax(-1).cpu()
        read = {kind: bank.nearest(getattr(out, f"{kind}_embed").cpu(), top=3) for kind, bank in banks.items()}
        for i, path in enumerate(paths):
            top = int(probs[i].argmax())
            result = {"image": str(path), "emotion": model.class_names[top],
                      "probabilities": {name: round(float(p), 6) for name, p in zip(model.class_names, probs[i])},
                      **{kind: best[i] for kind, best in read.items()}}
            if explain:
                png = Path(args.explain) / f"{path.stem}_attention.png"
                maps = {k: v[i].cpu().numpy() for k, v in out.attentions.items()}
                attention_png(model_view(pixels[i], processor), maps, png,
                              title=f"{result['emotion']} ({float(probs[i, top]):.2f})")
                result["explain"] = str(png)
            print(json.dumps(result) if args.json else line(result, banks))
    return 0


def line(result: dict, banks: dict) -> str:
    """One image's reading as text: its emotions, most probable first, and the attributes read."""
    ranked = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])
    attributes = "".join(f"  {kind}: {next(iter(result[kind]), '-')}" for kind in banks)
    return f"{result['image']}: {result['emotion']}  " + "  ".join(f"{k} {v:.3f}" for k, v in ranked) + attributes
