"""Emotion datasets in their real on-disk formats (SPEC §6), CLIP transforms, and the handling
of the images real datasets contain: odd modes, broken files, entries pointing nowhere.

Kinds (``open_dataset(root, kind, split)``):

- ``emoset``: ``info.json``, ``{train,val,test}.json`` whose items are
  ``[emotion, image_path, annotation_path]`` or ``[emotion, image_id, image_path,
  annotation_path]`` (paths relative to the root, and they must stay inside it), per-image
  annotation JSON with optional ``scene`` (str), ``object`` (list of str) and ``brightness`` /
  ``colorfulness`` (numbers in [0, 1]). As the official
  code does, an image's object is the *last* listed object. Names are normalised with
  ``vocab.normalise_attribute``. A missing annotation file, or an optional attribute of the
  wrong type, leaves that attribute ``None`` and is counted in ``problems``; an annotation
  file that is not a JSON object is an error naming the file.
- ``fi`` (8 classes, ``vocab.EMOTIONS`` order), ``emotionroi`` (6 classes), ``twitter1`` /
  ``twitter2`` (``positive`` = 0, ``negative`` = 1, the indices of ``vocab.to_binary``) and
  ``folder`` (any folder-per-class tree; classes sorted by name). Class folders match
  case-insensitively. If the root has ``train/``, ``val/`` or ``test/`` subfolders the split is
  that subfolder; otherwise the split is a deterministic 80/10/10 split of each class's
  images (sorted paths shuffled by a generator seeded with ``seed``, 0 by default).

Broken images. Construction checks every entry cheaply and in parallel (the file exists, is
not empty, and PIL can read its header without a decompression-bomb warning) and skips the
broken ones with one summary line on stderr. A decode that still fails in ``ds[i]``
(truncated data) is replaced by the next readable item, counted in ``decode_failures`` and
warned about once, so an epoch never dies halfway. Images in any mode are converted to RGB:
transparency is composited on white, 16-bit and 32-bit integer images are scaled to 8 bits.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from uniemo.errors import UniEmoError
from uniemo.io import read_json
from uniemo.vocab import FOLDER_CLASSES, KINDS, SPLITS, normalise_attribute

# Real emotion photos are at most a few tens of megapixels; anything beyond this is treated
# as a decompression bomb (PIL warns above the limit and refuses above twice it).
Image.MAX_IMAGE_PIXELS = 64_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Item:
    """One image: its path, class index, normalised scene / object names and EmoSet's global
    attributes brightness / colorfulness in [0, 1] (each None if unknown)."""

    path: Path
    label: int
    scene: str | None = None
    object: str | None = None
    brightness: float | None = None
    colorfulness: float | None = None


# ----------------------------------------------------------------------------- images


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and return it as 8-bit RGB, whatever its mode or orientation."""
    with Image.open(path) as image:
        check_pixels(image)
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def read_image(path: str | os.PathLike) -> Image.Image:
    """``load_rgb`` for a file a user named: one that cannot be decoded is a one-line error."""
    try:
        return load_rgb(path)
    except UNREADABLE as e:
        raise UniEmoError(f"cannot read image {path} ({e}): pass a readable image file") from None


def check_pixels(image: Image.Image) -> None:
    """Refuse an image over PIL's decompression-bomb limit. PIL itself only warns between the limit
    and twice it; compared here, not by turning the warning into an error, because
    ``warnings.catch_warnings`` is process-wide and images are checked in worker threads."""
    if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{image.width * image.height} pixels exceed the limit of "
                                           f"{Image.MAX_IMAGE_PIXELS}")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, 8 bits per channel: transparency over white, high bit depths scaled down."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values / _full_scale(image.mode, values) * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):  # PIL cannot convert "La" at all; no file decodes to it
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _full_scale(mode: str, values: np.ndarray) -> float:
    """The value that means white: 1 for float images in [0, 1], else 255 or 65535 by range."""
    peak = values.max(initial=0)
    if mode == "F" and peak <= 1.0:
        return 1.0
    return 255.0 if peak <= 255 else 65535.0


def check_image(path: Path) -> str | None:
    """Why ``path`` cannot be used ("missing" or "unreadable"), or None: a cheap header check."""
    try:
        if path.stat().st_size == 0:
            return "unreadable"
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    try:
        with Image.open(path) as image:  # parses the header only
            check_pixels(image)
    except UNREADABLE:
        return "unreadable"
    return None


# ---------------------------------------------------------------------------- dataset


class EmotionDataset(torch.utils.data.Dataset):
    """Images with emotion labels (and scene / object names where known).

    ``ds[i]`` is ``{"pixel_values": Tensor(3, H, W) or a PIL RGB image when transform is None,
    "label": int, "scene": str | None, "object": str | None, "index": i}``."""

    def __init__(self, items: list[Item], class_names: tuple[str, ...], transform: Callable | None = None,
                 scene_vocab: tuple[str, ...] = (), object_vocab: tuple[str, ...] = (),
                 source: str = "dataset", problems: Counter | None = None, validate: bool = True):
        self.class_names = tuple(class_names)
        self.transform = transform
        self.scene_vocab = tuple(scene_vocab)
        self.object_vocab = tuple(object_vocab)
        self.source = source
        self.problems: Counter = Counter(problems or {})
        self.skipped: list[tuple[Path, str]] = []
        self.items = self._validated(items) if validate else list(items)
        self.decode_failures = 0
        if not self.items:
            detail = f" (all {len(self.skipped):,} entries were broken)" if self.skipped else ""
            raise UniEmoError(f"no usable images in {source}{detail}: check the dataset path, kind and split")

    def _validated(self, items: list[Item]) -> list[Item]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            reasons = list(pool.map(check_image, (item.path for item in items), chunksize=64))
        kept = []
        for item, reason in zip(items, reasons):
            if reason is None:
                kept.append(item)
            else:
                self.skipped.append((item.path, reason))
                self.problems[reason] += 1
        if self.skipped:
            counts = Counter(reason for _, reason in self.skipped)
            detail = ", ".join(f"{n:,} {reason}" for reason, n in sorted(counts.items()))
            print(f"skipped {len(self.skipped):,} of {len(items):,} images in {self.source}: {detail} "
                  f"— first: {self.skipped[0][0]}", file=sys.stderr)
        return kept

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, image = self._decode(index)
        pixels = self.transform(image) if self.transform is not None else image
        return {"pixel_values": pixels, "label": item.label, "scene": item.scene, "object": item.object,
                "brightness": item.brightness, "colorfulness": item.colorfulness, "index": index}

    def _decode(self, index: int) -> tuple[Item, Image.Image]:
        """Item ``index`` decoded, or the next decodable one (a truncated file must not end the epoch)."""
        for step in range(len(self.items)):
            item = self.items[(index + step) % len(self.items)]
            try:
                return item, load_rgb(item.path)
            except UNREADABLE as e:
                self.decode_failures += 1
                if self.decode_failures == 1:
                    print(f"warning: cannot decode {item.path} ({e}); using the next image instead "
                          "(further failures are counted silently in decode_failures)", file=sys.stderr)
        raise UniEmoError(f"no image in {self.source} could be decoded: the files are corrupt")

    @property
    def labels(self) -> list[int]:
        return [item.label for item in self.items]


def collate(batch: list[dict]) -> dict[str, Any]:
    """Stack pixel values, labels and indices; keep scene / object names as lists."""
    return {
        "pixel_values": torch.stack([b["pixel_values"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "scene": [b["scene"] for b in batch],
        "object": [b["object"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
    }


def open_dataset(root, kind: str = "emoset", split: str = "train", transform: Callable | None = None,
                 seed: int = 0) -> EmotionDataset:
    """Open split ``split`` of the dataset of kind ``kind`` at ``root`` (see the module docstring)."""
    root = Path(root).expanduser()
    if kind not in KINDS:
        raise UniEmoError(f"unknown dataset kind {kind!r}: choose one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise UniEmoError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise UniEmoError(f"{root} is not a directory: expected the root folder of a dataset of kind {kind!r}")
    if kind == "emoset":
        return _open_emoset(root, split, transform)
    return _open_folder(root, kind, split, transform, seed)


# ----------------------------------------------------------------------------- EmoSet


@dataclass(frozen=True)
class SplitEntry:
    emotion: str
    image: str
    annotation: str


def parse_split(value: Any, source: str) -> list[SplitEntry]:
    """Validate the parsed JSON of an EmoSet split file: a list of 3-field
    ``[emotion, image_path, annotation_path]`` or 4-field ``[emotion, image_id, image_path,
    annotation_path]`` items with relative paths that stay inside the root."""
    if not isinstance(value, list):
        raise UniEmoError(f"malformed split file {source}: expected a JSON list of items, got {type(value).__name__}")
    entries = []
    for n, item in enumerate(value):
        if not isinstance(item, list) or len(item) not in (3, 4):
            raise UniEmoError(f"malformed item #{n} in {source}: expected [emotion, image_path, annotation_path] "
                              f"or [emotion, image_id, image_path, annotation_path], got {_short(item)}")
        emotion, image, annotation = item[0], item[-2], item[-1]
        if not all(isinstance(field, str) and field for field in (emotion, image, annotation)):
            raise UniEmoError(f"malformed item #{n} in {source}: emotion and paths must be non-empty strings, "
                              f"got {_short(item)}")
        if len(item) == 4 and not isinstance(item[1], (str, int)):
            raise UniEmoError(f"malformed item #{n} in {source}: image_id must be a string or integer, got {_short(item)}")
        entries.append(SplitEntry(emotion, _relative(image, n, source), _relative(annotation, n, source)))
    return entries


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _relative(path: str, n: int, source: str) -> str:
    """``path`` if it is relative and stays inside the root (symlinks inside the root are allowed)."""
    pure = PurePosixPath(path.replace("\\", "/"))
    normal = os.path.normpath(str(pure))
    if "\x00" in path or pure.is_absolute() or (len(path) > 1 and path[1] == ":") or normal == ".." or normal.startswith("../"):
        raise UniEmoError(f"item #{n} in {source} points outside the dataset root ({path!r}): "
                          "paths in split files must be relative to the root and stay inside it")
    return normal


def _vocabulary(info: dict, key: str, source: Path) -> tuple[str, ...]:
    """Names of ``info[key]`` in index order (``label2idx``); empty if the key is absent."""
    if key not in info:
        return ()
    table = info[key].get("label2idx") if isinstance(info[key], dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
        raise UniEmoError(f"malformed {source}: {key!r} needs a 'label2idx' mapping of names to integers")
    return tuple(name for name, _ in sorted(table.items(), key=lambda kv: kv[1]))


def _open_emoset(root: Path, split: str, transform) -> EmotionDataset:
    info_path = root / "info.json"
    info = read_json(info_path, "EmoSet info.json (is this an EmoSet root? use --dataset for folder datasets)")
    if not isinstance(info, dict) or "emotion" not in info:
        raise UniEmoError(f"malformed {info_path}: expected an object with an 'emotion' vocabulary")
    class_names = _vocabulary(info, "emotion", info_path)
    scene_vocab = tuple(normalise_attribute(n) for n in _vocabulary(info, "scene", info_path))
    object_vocab = tuple(normalise_attribute(n) for n in _vocabulary(info, "object", info_path))
    split_path = root / f"{split}.json"
    entries = parse_split(read_json(split_path, f"EmoSet split file {split}.json"), str(split_path))
    label_of = {name: i for i, name in enumerate(class_names)}
    for n, entry in enumerate(entries):
        if entry.emotion not in label_of:
            raise UniEmoError(f"item #{n} in {split_path} has emotion {entry.emotion!r}, which {info_path} "
                              f"does not list: use one of {', '.join(class_names)}")
    problems: Counter = Counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        attributes = list(pool.map(lambda e: _read_annotation(root / e.annotation), entries, chunksize=64))
    items = []
    for entry, (attributes_of, issues) in zip(entries, attributes):
        problems.update(issues)
        items.append(Item(root / entry.image, label_of[entry.emotion], **attributes_of))
    return EmotionDataset(items, class_names, transform, scene_vocab, object_vocab,
                          source=f"{root} ({split})", problems=problems)


def _read_annotation(path: Path) -> tuple[dict, list[str]]:
    """(scene, object, brightness and colorfulness as Item fields, problems) of one annotation
    file; the object is the last listed one."""
    if not path.is_file():
        return {}, ["annotation missing"]
    annotation = read_json(path, "EmoSet annotation")
    if not isinstance(annotation, dict):
        raise UniEmoError(f"malformed annotation {path}: expected a JSON object, got {type(annotation).__name__}")
    issues = []
    scene = annotation.get("scene")
    if scene is not None and not isinstance(scene, str):
        scene, issues = None, issues + ["scene of wrong type"]
    objects = annotation.get("object")
    obj = None
    if objects is not None:
        if isinstance(objects, list) and all(isinstance(o, str) for o in objects):
            obj = objects[-1] if objects else None
        else:
            issues.append("object of wrong type")
    levels = {}
    for name in ("brightness", "colorfulness"):
        value = annotation.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        if value is not None and not ok:
            issues.append(f"{name} not in [0, 1]")
        levels[name] = float(value) if ok else None
    return {"scene": normalise_attribute(scene) if scene else None,
            "object": normalise_attribute(obj) if obj else None, **levels}, issues


# ---------------------------------------------------------------------- folder datasets


def _class_folders(base: Path, kind: str, names: tuple[str, ...] | None = None
                   ) -> tuple[tuple[str, ...], dict[int, list[Path]]]:
    """Class names (the kind's, else ``names``, else the folders') and the class folders under
    ``base`` (matched case-insensitively)."""
    folders = _subfolders(base)
    class_names = FOLDER_CLASSES[kind] or names or tuple(sorted({p.name for p in folders}))
    index = {name.lower(): i for i, name in enumerate(class_names)}
    by_class: dict[int, list[Path]] = {}
    for folder in folders:
        if folder.name.lower() not in index:
            raise UniEmoError(f"unexpected folder {folder}: a {kind} dataset has one folder per class, "
                              f"named {', '.join(class_names)}")
        by_class.setdefault(index[folder.name.lower()], []).append(folder)
    if not by_class:
        raise UniEmoError(f"no class folders in {base}: a {kind} dataset has one folder per class "
                          f"({', '.join(class_names) if FOLDER_CLASSES[kind] else 'any names'})")
    return class_names, by_class


def _subfolders(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folders: list[Path]) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))


def split_exists(root, kind: str, split: str) -> bool:
    """Whether ``root`` has split ``split`` (folder datasets without split folders have all three)."""
    root = Path(root).expanduser()
    if kind == "emoset":
        return (root / f"{split}.json").is_file()
    return (root / split).is_dir() or not any((root / name).is_dir() for name in SPLITS)


def annotated_objects(root, paths, kind: str = "emoset", opened: dict[str, EmotionDataset] | None = None
                      ) -> dict[str, str]:
    """The annotated object of each of ``paths`` that is an image of the dataset at ``root`` (any
    split it has; ``opened``: splits already read, by name), keyed by the resolved path. Only the
    annotations of ``paths`` are read, and only EmoSet annotates objects."""
    root, opened = Path(root).expanduser(), opened or {}
    splits = [split for split in SPLITS if split in opened or split_exists(root, kind, split)]
    if not splits:
        raise UniEmoError(f"{root} holds none of the splits ({', '.join(SPLITS)}) of a dataset of kind {kind!r}: "
                          "pass the root of the dataset the images come from")
    wanted = {str(Path(p).resolve()) for p in paths}
    found: dict[str, str | None] = {}
    for split in splits if kind == "emoset" and wanted else ():
        if split in opened:
            found.update({path: item.object for item in opened[split].items
                          if (path := str(Path(item.path).resolve())) in wanted})
            continue
        source = root / f"{split}.json"
        for entry in parse_split(read_json(source, f"EmoSet split file {split}.json"), str(source)):
            if (path := str((root / entry.image).resolve())) in wanted:
                found[path] = _read_annotation(root / entry.annotation)[0]["object"]
    return {path: name for path, name in found.items() if name}


def _open_folder(root: Path, kind: str, split: str, transform, seed: int) -> EmotionDataset:
    has_splits = any((root / name).is_dir() for name in SPLITS)
    if not split_exists(root, kind, split):
        raise UniEmoError(f"{root} has split folders but no {split}/: add it or choose another split")
    base = root / split if has_splits else root
    names = None
    if has_splits and not FOLDER_CLASSES[kind]:  # any names: every split indexes the classes of all of them
        names = tuple(sorted({p.name for s in SPLITS if (root / s).is_dir() for p in _subfolders(root / s)}))
    class_names, by_class = _class_folders(base, kind, names)
    items = []
    for label, folders in sorted(by_class.items()):
        paths = _images_under(folders)
        if not has_splits:
            paths = _seeded_split(paths, split, seed)
        items += [Item(path, label) for path in paths]
    return EmotionDataset(items, class_names, transform, source=f"{root} ({split})")


def _seeded_split(paths: list[Path], split: str, seed: int) -> list[Path]:
    """This split's share of one class's images: a seeded 80/10/10 split (val/test get at least
    one image when the class has three or more)."""
    order = np.random.default_rng(seed).permutation(len(paths))
    held = max(1, round(0.1 * len(paths))) if len(paths) >= 3 else 0
    bounds = {"val": (0, held), "test": (held, 2 * held), "train": (2 * held, len(paths))}[split]
    return sorted(paths[i] for i in order[bounds[0]:bounds[1]])


# ---------------------------------------------------------------------------- transforms


def clip_transforms(image_processor, train: bool):
    """Torchvision transforms matching a ``CLIPImageProcessor``'s own config (size, crop, mean,
    std, resampling). Train: random resized crop (scale 0.5-1, keeping most of the scene and
    the object in view) + horizontal flip; eval: resize the shortest edge + center crop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    crop = _side(image_processor.crop_size, "crop_size")
    resize = _field(image_processor.size, "shortest_edge") or _side(image_processor.size, "size")
    interpolation = InterpolationMode.BICUBIC if getattr(image_processor, "resample", 3) == 3 else InterpolationMode.BILINEAR
    if train:
        geometry = [v2.RandomResizedCrop(crop, scale=(0.5, 1.0), interpolation=interpolation, antialias=True),
                    v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop(crop)]
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(image_processor.image_mean), std=list(image_processor.image_std))])


def model_view(pixels: torch.Tensor, image_processor):
    """What the model saw: pixels (3, H, W) of ``clip_transforms`` undone to (H, W, 3) in [0, 1]."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (image_processor.image_mean, image_processor.image_std))
    return (pixels.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _field(value, key: str):
    """``value[key]`` for a dict, ``value.key`` for transformers' ``SizeDict``; None if absent."""
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)


def _side(value, name: str) -> int:
    """The side of a square size given as an int or as height/width."""
    if isinstance(value, int):
        return value
    height, width = _field(value, "height"), _field(value, "width")
    if height is None or width is None:
        raise UniEmoError(f"the image processor's {name} {value!r} is not understood: expected an int or height/width")
    if height != width:
        raise UniEmoError(f"the image processor's {name} {value} is not square: CLIP expects square inputs")
    return int(height)
