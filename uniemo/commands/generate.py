"""Generate emotional images from a stage-2 run (emotion, emotion transfer, weighted mix).

Writes OUT/<emotion or mix>/NNNN.png, one OUT/metadata.jsonl line per image (file, seed,
emotion or mix weights, object, alpha_scene, alpha_object, matched attributes, prompt, steps,
guidance) and OUT/<folder>/grid.png. Image NNNN uses seed SEED + NNNN. Re-running on the same
OUT skips images already written, so a killed run continues where it stopped; an image written
there with other settings (seed, steps, guidance, truncation, object, candidates, dtype, scheduler) is
an error.
With --candidates N each image is the best of N draws as the understanding branch reads them.
Under `torchrun` or `accelerate launch` the processes share the batches out, and the main
process writes metadata.jsonl and the grids once at the end: the same files, seeds and records
as one process.

  uniemo generate --run runs/stage2 --emotion awe -n 8 --out gen/
  uniemo generate --run runs/stage2 --emotion all --object bench -n 4 --out transfer/
  uniemo generate --run runs/stage2 --mix awe=0.7,fear=0.3 -n 4 --candidates 4 --out mix/"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from uniemo.commands import (add_sampling_arguments, add_truncation_argument, already_written, check_sampling_values,
                             load_pipeline, require_positive, sampling_settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="stage-2 run directory (from `uniemo train joint`)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--emotion", help="an emotion name, or 'all' for one folder per emotion")
    what.add_argument("--mix", help="weighted emotions, e.g. awe=0.7,fear=0.3 (weights >= 0, normalised)")
    parser.add_argument("--object", help="a neutral object word for emotion transfer, e.g. bench")
    parser.add_argument("-n", "--num-images", type=int, default=4, help="images per emotion or mix (default 4)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the run's generation config)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; image NNNN uses SEED + NNNN (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per denoising batch (default 4)")
    parser.add_argument("--candidates", type=int, default=1, metavar="N",
                        help="draw N images for each one and keep the one the understanding branch reads nearest "
                             "to the request (its emotions and, with --object, the object); N times the time (default 1)")
    add_sampling_arguments(parser)
    add_truncation_argument(parser)
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from uniemo.metrics import METADATA_FILE, read_metadata
    from uniemo.training import my_batches, on_main, processes

    check_options(args)
    requests = plan(args, class_names(args.run))  # bad names and weights fail before any loading
    out = Path(args.out)
    records = read_metadata(out / METADATA_FILE)
    settings = sampling_settings(args) | {"object": args.object, "candidates": args.candidates}
    todo = [(folder, request, i) for folder, request in requests for i in range(args.num_images)
            if not already_written(out, records, f"{folder}/{i:04d}.png", settings | {"seed": args.seed + i})]
    skipped = len(requests) * args.num_images - len(todo)
    state = processes()
    if skipped and state.is_main_process:
        print(f"skipping {skipped} image(s) already in {out}")
    if not todo:
        return 0
    pipe = load_pipeline(args)
    if args.object is not None:
        pipe.prompt(args.object)
    mine = my_batches(batches(todo, args.batch_size), state)
    written = {}
    with tqdm(total=sum(len(b[2]) for b in mine), desc="generating", unit="img",
              disable=not state.is_main_process) as bar:
        for folder, request, indices in mine:
            result = pipe(**request, object=args.object, num_images=len(indices), num_inference_steps=args.steps,
                          guidance_scale=args.guidance, generator=args.seed + indices[0], candidates=args.candidates)
            for i, image, meta in zip(indices, result.images, result.metadata):
                file = f"{folder}/{i:04d}.png"
                save_png(image, out / file)
                written[file] = {"file": file, **meta}
            if state.num_processes == 1:  # one process: resumable as it goes
                write_metadata(out / METADATA_FILE, {**records, **written})
            bar.update(len(indices))
    parts = gather_object([written])  # every process's records, in process order

    def finish() -> None:
        for part in parts:
            records.update(part)
        write_metadata(out / METADATA_FILE, records)
        for folder, _ in requests:
            write_grid(out / folder, args.num_images)
        print(f"wrote {len(todo)} image(s) to {out} ({len(records)} listed in {out / METADATA_FILE})")

    on_main(finish)
    return 0


def check_options(args: argparse.Namespace) -> None:
    from uniemo.errors import UniEmoError
    from uniemo.pipeline import MAX_IMAGES_PER_EMOTION

    require_positive(num_images=args.num_images, batch_size=args.batch_size, steps=args.steps, candidates=args.candidates)
    if args.num_images > MAX_IMAGES_PER_EMOTION:
        raise UniEmoError(f"--num-images {args.num_images} is too large: use at most {MAX_IMAGES_PER_EMOTION:,} "
                          "per emotion in one call")
    check_sampling_values(args)


def class_names(run: str) -> tuple[str, ...]:
    """The emotions of the stage-2 run ``run``, read before any model loads."""
    from uniemo.understanding import run_class_names

    return run_class_names(run, "uniemo train joint")


def plan(args: argparse.Namespace, names: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(output folder, pipeline request) for each emotion or mix asked for."""
    from uniemo.metrics import mix_folder
    from uniemo.pipeline import emotion_key, normalise_weights, parse_mix

    if args.mix is not None:
        weights = normalise_weights(parse_mix(args.mix, names), names)
        return [(mix_folder(weights), {"mix": weights})]
    if args.emotion.strip().lower() == "all":
        return [(name, {"emotion": name}) for name in names]
    name = emotion_key(args.emotion, names)
    return [(name, {"emotion": name})]


def batches(todo: list, size: int):
    """Consecutive indices of one folder, at most ``size`` at a time (seeds stay SEED + index)."""
    group = None
    for folder, request, i in todo:
        if group is None or len(group[2]) == size or group[0] != folder or group[2][-1] != i - 1:
            if group is not None:
                yield group
            group = (folder, request, [])
        group[2].append(i)
    if group is not None:
        yield group


def save_png(image, path: Path) -> None:
    from uniemo.io import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_metadata(path: Path, records: dict[str, dict]) -> None:
    from uniemo.io import write_text

    write_text(path, "".join(json.dumps(r) + "\n" for _, r in sorted(records.items())))


def write_grid(folder: Path, count: int, max_images: int = 64) -> None:
    from PIL import Image

    from uniemo.metrics import GRID_FILE

    files = [folder / f"{i:04d}.png" for i in range(min(count, max_images))]
    images = [Image.open(f).convert("RGB") for f in files if f.is_file()]
    if not images:
        return
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for k, image in enumerate(images):
        grid.paste(image, ((k % cols) * w, (k // cols) * h))
    save_png(grid, folder / GRID_FILE)
