"""Edit photos toward an emotion (SDEdit with the fused condition e, or with --invert from the
photo's DDIM inversion), with the understanding branch reading the source and every result.

Writes OUT/<emotion or mix>/<source stem>_NN.png and one OUT/metadata.jsonl line per result:
the source file and its predicted emotion and probability, the target, the result's predicted
emotion and the target's probability (for a mix, the mass of its emotions), the strength, seed,
steps and guidance. Result NN of every source uses seed SEED + NN. --until-target tries the
strengths from --strength up by 0.1 to 1.0 until the understanding branch reads the target, and
records the strength that made it (``reached`` says whether one did). --keep-object names each
source's object in the prompt, as the understanding branch reads it, --object-from DATA as the
EmoSet dataset DATA annotates it; --object names one for all (recorded as ``object``). --invert
(SD 1.5) noises each source by DDIM inversion under the condition the understanding branch reads
in it instead of at random: more of the photo stays at the same strength.
An IMAGE may be a folder: its images are edited. Re-running on the same OUT skips results
already written; one written there with other settings (strength, --invert, seed, steps, ...) is
an error.

  uniemo edit street.jpg --run runs/stage2 --emotion awe --strength 0.6 -n 2 --out edits/
  uniemo edit photos/ --run runs/stage2 --mix amusement=0.5,fear=0.5 --until-target --out edits/
  uniemo edit street.jpg --run runs/stage2 --emotion fear --keep-object --out edits/
  uniemo edit street.jpg --run runs/stage2 --emotion awe --invert --strength 1.0 --out edits/"""

from __future__ import annotations

import argparse
from pathlib import Path

from uniemo.commands import (add_sampling_arguments, add_truncation_argument, already_written, check_sampling_values,
                             image_files, load_pipeline, require_positive, sampling_settings)
from uniemo.errors import UniEmoError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    parser.add_argument("--run", required=True, help="stage-2 run directory (from `uniemo train joint`)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--emotion", help="the emotion to edit toward")
    what.add_argument("--mix", help="weighted emotions, e.g. awe=0.7,fear=0.3 (weights >= 0, normalised)")
    parser.add_argument("--strength", type=float, default=0.6,
                        help="how far the source is noised, in (0, 1]: 0.3 keeps most of it, 1.0 little (default 0.6)")
    parser.add_argument("--until-target", action="store_true",
                        help="raise the strength by 0.1 up to 1.0 until the understanding branch reads the target")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-object", action="store_true",
                      help="the understanding branch names each source's object and the edit's prompt keeps it "
                           "(the transfer prompt, as in emotion transfer)")
    keep.add_argument("--object", help="keep this object, named for every source (e.g. bench)")
    keep.add_argument("--object-from", metavar="DATA",
                      help="keep each source's object as the EmoSet dataset DATA annotates it (sources must be its "
                           "images; one without an annotated object is edited without naming one)")
    parser.add_argument("--invert", action="store_true",
                        help="noise each source by DDIM inversion under the condition the understanding branch reads "
                             "in it, not at random: keeps more of the photo (Stable Diffusion 1.5)")
    parser.add_argument("--keep-region", type=float, metavar="T",
                        help="with --invert: keep where the understanding branch's object queries look (their "
                             "attention map at T of its maximum or more, e.g. 0.3) and redraw the rest")
    parser.add_argument("-n", "--num-images", type=int, default=1, help="results per source image (default 1)")
    parser.add_argument("--steps", type=int, help="denoising steps of the full schedule (default: the run's)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; result NN uses SEED + NN (default 0)")
    add_sampling_arguments(parser)
    add_truncation_argument(parser)
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from uniemo.commands.generate import class_names, save_png, write_metadata
    from uniemo.metrics import METADATA_FILE, read_metadata

    require_positive(num_images=args.num_images, steps=args.steps)
    if not 0 < args.strength <= 1:
        raise UniEmoError(f"--strength {args.strength} is out of range: use a number in (0, 1], e.g. 0.6")
    if args.keep_region is not None and not (args.invert and 0 < args.keep_region <= 1):
        raise UniEmoError(f"--keep-region {args.keep_region} needs --invert and a number in (0, 1], e.g. 0.3")
    check_sampling_values(args)
    folder, request = target(args, class_names(args.run))
    sources = image_files(args.images, clash="their edits would overwrite each other: rename one or edit them into "
                          "different --out folders")
    out_dir = Path(args.out)
    records = read_metadata(out_dir / METADATA_FILE)
    settings = edit_settings(args)
    todo = [(path, [i for i in range(args.num_images) if not already_written(
        out_dir, records, result_file(folder, path, i), settings | {"seed": args.seed + i})]) for path in sources]
    todo = [(path, indices) for path, indices in todo if indices]
    if len(todo) < len(sources):
        print(f"skipping {len(sources) - len(todo)} source(s) already edited in {out_dir}")
    if not todo:
        return 0
    annotated = annotated_sources(args.object_from, [path for path, _ in todo]) if args.object_from else {}
    pipe = load_pipeline(args)
    for word in {args.object, *annotated.values()} - {None}:
        pipe.prompts.check_word(word)  # before the progress bar starts
    goal = pipe.target_classes(request_weights(request))
    images = {path: pipe.fit(path) for path, _ in todo}  # held at the run's size, not the photo's
    paths = list(images)
    before = dict(zip(paths, read_all(pipe.read, [images[p] for p in paths])))
    objects = dict(zip(paths, read_all(pipe.read_objects, [images[p] for p in paths]) if args.keep_object
                       else [annotated.get(p, args.object) for p in paths]))
    pending = [(path, i) for path, indices in todo for i in indices]
    with tqdm(total=len(pending), desc="editing", unit="edit") as bar:
        for group in batches(pending, images):
            i = group[0][1]
            out = pipe.edit([images[path] for path, _ in group], **request, strength=args.strength,
                            object=[objects[path] for path, _ in group], invert=args.invert,
                            keep_region=args.keep_region, until_target=args.until_target,
                            num_inference_steps=args.steps, guidance_scale=args.guidance, generator=args.seed + i)
            for (path, _), result, meta, after in zip(group, out.images, out.metadata, pipe.read(out.images)):
                file = result_file(folder, path, i)
                save_png(result, out_dir / file)
                records[file] = {"file": file, "source": str(path.absolute()),
                                 "source_emotion": pipe.class_names[int(before[path].argmax())],
                                 "source_probability": round(float(before[path].max()), 6),
                                 "result_emotion": pipe.class_names[int(after.argmax())],
                                 "target_probability": round(float(after[goal].sum()), 6),
                                 "reached": int(after.argmax()) in goal, **meta}
                bar.update()
            write_metadata(out_dir / METADATA_FILE, records)
    print(f"wrote {bar.n} edit(s) to {out_dir} ({len(records)} listed in {out_dir / METADATA_FILE})")
    return 0


def edit_settings(args: argparse.Namespace) -> dict:
    """What the records of this call's results will say, for a re-run to compare: the sampling
    (inverted edits sample with DDIM whatever --scheduler says), ``invert``, the strength (not
    with --until-target, which records the strength that made it) and the object (not with
    --keep-object or --object-from, which name one per source)."""
    settings = sampling_settings(args) | {"invert": args.invert, "keep_region": args.keep_region}
    if args.invert:
        del settings["scheduler"]
    if not args.until_target:
        settings["strength"] = args.strength
    if not args.keep_object and args.object_from is None:
        settings["object"] = args.object
    return settings


def annotated_sources(data: str, paths: list[Path]) -> dict[Path, str]:
    """--object-from: each source's object as the EmoSet dataset ``data`` annotates it; the sources
    it does not annotate are counted on the console (they are edited without naming one)."""
    from uniemo.data import annotated_objects

    annotated = annotated_objects(data, paths)
    found = {path: annotated[key] for path in paths if (key := str(path.resolve())) in annotated}
    if len(found) < len(paths):
        print(f"{len(paths) - len(found)} of {len(paths)} source(s) have no object annotated in {data}: "
              "edited without naming one")
    return found


def read_all(read, images: list, size: int = 32) -> list:
    """``read`` (one of the pipeline's readings) of ``images``, ``size`` at a time."""
    return [r for k in range(0, len(images), size) for r in read(images[k:k + size])]


def batches(pending: list[tuple[Path, int]], images: dict, size: int = 8):
    """Edits that run as one batch: the same result index (so the same seed) and the same fitted
    size, at most ``size`` at a time."""
    groups: dict = {}
    for path, i in pending:
        groups.setdefault((i, images[path].size), []).append((path, i))
    for group in groups.values():
        yield from (group[k:k + size] for k in range(0, len(group), size))


def target(args: argparse.Namespace, names: tuple[str, ...]) -> tuple[str, dict]:
    """(output folder, pipeline request) of --emotion or --mix."""
    from uniemo.commands.generate import plan

    if args.emotion is not None and args.emotion.strip().lower() == "all":
        raise UniEmoError("--emotion all is not an edit target: name one emotion, or a --mix")
    return plan(args, names)[0]


def request_weights(request: dict) -> dict[str, float]:
    return request["mix"] if "mix" in request else {request["emotion"]: 1.0}


def result_file(folder: str, source: Path, i: int) -> str:
    return f"{folder}/{source.stem}_{i:02d}.png"
