"""One module per ``uniemo`` command (see ``uniemo/cli.py``), plus the option checks they share."""

from __future__ import annotations

from uniemo.errors import UniEmoError


def require_positive(**options: int | None) -> None:
    """Refuse a given integer option below 1: ``require_positive(max_steps=args.max_steps)``
    checks ``--max-steps``; options left out (None) are skipped."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise UniEmoError(f"--{name.replace('_', '-')} {value} is invalid: use a positive integer")


def require_finite_positive(**options: float | None) -> None:
    """Refuse a given number option that is not finite and above 0 (``--lr nan``, ``--steps-scale 0``)."""
    import math

    for name, value in options.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UniEmoError(f"--{name.replace('_', '-')} {value} is invalid: use a finite number above 0")


def override(section, args, *names: str) -> None:
    """Set on the config ``section`` each option in ``names`` that the user gave (not None):
    ``override(cfg.stage2, args, "epochs", "seed")``; option and config field share the name."""
    for name in names:
        if (value := getattr(args, name)) is not None:
            setattr(section, name, value)


def check_sampling_values(args) -> None:
    """Refuse a given ``--guidance`` or ``--truncation`` that is not a finite number >= 0."""
    import math

    for flag, value, hint in (("--guidance", args.guidance, "e.g. 7.5"),
                              ("--truncation", args.truncation,
                               "1 samples the emotion space as trained, 0.5 nearer each emotion's mean")):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise UniEmoError(f"{flag} {value} is invalid: use a finite number >= 0 ({hint})")


def add_sampling_arguments(parser) -> None:
    """``--scheduler``, ``--dtype`` and ``--sd``: how a stage-2 run samples (``generate``, ``edit``, ``feedback``)."""
    parser.add_argument("--scheduler", metavar="NAME", help="a diffusers scheduler class, e.g. "
                        "UniPCMultistepScheduler or DPMSolverMultistepScheduler (default: the SD's own)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="precision of the denoising modules (default fp32; fp16 or bf16 on a GPU)")
    add_sd_argument(parser)


def add_truncation_argument(parser) -> None:
    """``--truncation``: where in each emotion's space ``generate`` and ``edit`` draw e (``load_pipeline``
    applies it; explicit feedback samples the space as trained)."""
    parser.add_argument("--truncation", type=float, metavar="T", help="scale of the emotion space's standard-normal "
                        "draw: 1 samples N(mean, std), below 1 nearer each emotion's mean (default: the run's, 1)")


def add_sd_argument(parser) -> None:
    """``--sd``: where a stage-2 run's Stable Diffusion is now, if not where the run recorded it."""
    parser.add_argument("--sd", metavar="DIR", help="the Stable Diffusion directory the run was trained with "
                        "(default: the one its config.yaml records; give it when the models moved)")


def sampling_settings(args) -> dict:
    """What the metadata of an image this ``generate`` or ``edit`` call would write says of its
    sampling, read before anything loads: steps, guidance and truncation (the config of the run
    --run where not given), the dtype and the scheduler (--scheduler, or the SD's own). A re-run
    compares them with what is already written."""
    from uniemo.config import load_config
    from uniemo.loading import sd_scheduler_name
    from uniemo.pipeline import DTYPES, dtype_name, run_sd_path, with_defaults
    from uniemo.rundir import RunDir

    cfg = load_config(RunDir(args.run).config)
    steps, guidance = with_defaults(cfg.generation, args.steps, args.guidance)
    truncation = cfg.generation.truncation if args.truncation is None else args.truncation
    return {"steps": steps, "guidance": guidance, "truncation": truncation, "dtype": dtype_name(DTYPES[args.dtype]),
            "scheduler": args.scheduler or sd_scheduler_name(run_sd_path(RunDir(args.run), cfg, args.sd))}


def already_written(out, records: dict, file: str, settings: dict) -> bool:
    """Whether ``file`` is already in ``out`` and its metadata.jsonl record: a re-run skips it.
    One made with other ``settings`` (record key -> value; a key an older record lacks is not
    compared) is refused, so that one folder never holds images of two settings under one name."""
    from uniemo.io import check_same_settings

    if file not in records or not (out / file).is_file():
        return False
    check_same_settings(out / file, records[file], settings)
    return True


def resolve_device(name: str | None):
    """``--device`` as a torch device (default: cuda if available, else cpu); a name torch does
    not know, or a device this machine does not have, is a one-line error."""
    import torch

    from uniemo.metrics import default_device

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UniEmoError(f"--device {name!r} is not a torch device: use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if not (hasattr(backend, "is_available") and backend.is_available()):
        raise UniEmoError(f"--device {name}: torch finds no {device.type} device on this machine: "
                          "use --device cpu, or leave --device out to take a GPU when there is one")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise UniEmoError(f"--device {name}: torch sees {count} {device.type} device(s), "
                          f"{device.type}:0 to {device.type}:{count - 1}: pick one of them")
    return device


def load_pipeline(args):
    """The stage-2 run ``args.run`` as a ``UniEmoPipeline`` with the sampling arguments, on
    --device (see :func:`resolve_device`)."""
    from uniemo.pipeline import DTYPES, UniEmoPipeline

    device = resolve_device(args.device)
    pipe = UniEmoPipeline.from_pretrained(args.run, args.sd, dtype=DTYPES[args.dtype], scheduler=args.scheduler)
    if args.truncation is not None:
        pipe.cfg.generation.truncation = args.truncation
    return pipe.to(device)


def image_files(names: list[str], clash: str | None = None) -> list:
    """The files named, and the images of the folders named (sorted), each with a readable image
    header (a file cut short inside its pixels is found when it is decoded, still before anything
    is written). With ``clash`` (why, e.g. "their edits would overwrite each other: ..."), two
    images with one stem would write to one name, so they are refused."""
    from pathlib import Path

    from uniemo.data import IMAGE_SUFFIXES, check_image
    from uniemo.metrics import GRID_FILE

    files = []
    for name in names:
        path = Path(name).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name != GRID_FILE)
            if not found:
                raise UniEmoError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass image files or a folder of them")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UniEmoError(f"{path} does not exist: pass image files or folders of images")
    stems = {}
    for path in files:
        reason = check_image(path)
        if reason is not None:
            raise UniEmoError(f"cannot read image {path} ({reason}): pass a readable image file")
        if clash and stems.setdefault(path.stem, path) != path:
            raise UniEmoError(f"{stems[path.stem]} and {path} share the name {path.stem!r}, so {clash}")
    return files

