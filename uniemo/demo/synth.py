"""The embedded default's world (version 3): a synthetic emotional image dataset in EmoSet's
exact on-disk format, so the demo and the tests run the real EmoSet loader.

Every image shows one *scene* (a procedural background) and one *object* (a foreground shape
spanning about 40-70% of the image side), both named from EmoSet's own vocabularies, under one
*style*: EmoSet's brightness (bright / dark) and colorfulness (colorful / muted), a tone (warm /
cool, a colour cast) and a pattern (stripes, waves, dots, rings, blotches...), imposed on the
surroundings (the colours also at half strength on the object, the pattern not at all), so
that the object stays recognisable in every style (a house is a house, lit, coloured and
framed by its surroundings' mood, as in the paper's Fig. 10a). The annotation's brightness and
colorfulness are measured on the styled surroundings, and it names the style (a field EmoSet
does not have; the captions of ``pretrain-base`` read it). Emotion is carried by three channels
that combine freely:

- **Style**, always, one per emotion (``EMOTION_STYLES``): valence sets brightness (bright =
  positive), arousal sets colorfulness (colorful = high arousal), the tone tells apart the
  two emotions of each quadrant, and the pattern (``PATTERNS``) is each emotion's own. A style is
  a global look that any object can take on, which is what emotion transfer needs. The colours
  are shared axes, so a blend of two emotions' colours can be a third emotion's; the patterns
  are not, so a blend of two emotions can show both (emotion fusion).
- **Scene**: with probability ``EMOTIONAL_SCENE_P`` the emotion's own scene (one per emotion,
  ``EMOTION_SCENES``), otherwise one of the *neutral* scenes, drawn uniformly whatever the emotion.
- **Object**: with probability ``EMOTIONAL_OBJECT_P`` the emotion's own object
  (``EMOTION_OBJECTS``), otherwise one of the *neutral* objects, drawn uniformly.

So neutral scenes and objects (a house, a tree, the sky) occur in every emotion with the same
frequency and carry nothing, while emotional ones point at one emotion: the correlation
coefficient α has something to weigh. With label noise (an image's label is a uniformly random
*other* emotion with probability ``label_noise``) the best achievable test accuracy is
:func:`ceiling` (1 - label_noise: the style alone tells the emotion), computed exactly from this
generative rule.

Labels are balanced (image ``i`` is labelled emotion ``i % 8``); each emotion is split
80/10/10 into train/val/test (at least one image per emotion in val and test), and
``train_per_emotion`` keeps only the first N training images of each emotion (the data-scarce
split; val and test unchanged). The output is byte-identical for the same arguments: every
image draws from its own ``numpy.random.Generator`` seeded with ``(seed, i)`` and JPEGs are
written at fixed quality.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from uniemo.errors import UniEmoError
from uniemo.io import partial_dir, read_json, write_json
from uniemo.vocab import EMOTIONS, SPLITS

WORLD_VERSION = "3.3"  # 3.3: a pattern per emotion; 3.2: one style per emotion; 3.1: one per quadrant
WORLD_FILE = "world.json"  # beside EmoSet's files: which world, drawn how (not an EmoSet file)
TONES = {"warm": (42.0, 10.0, -50.0), "cool": (-46.0, -4.0, 46.0)}  # the cast a tone adds, per RGB channel
PATTERNS = ("striped", "rising", "wavy", "dotted", "falling", "ringed", "blotchy", "banded")  # one per style, in order
STYLES = tuple(f"{b} {c} {t} {p}"
               for (b, c, t), p in zip(itertools.product(("bright", "dark"), ("colorful", "muted"), TONES), PATTERNS))
EMOTION_STYLES = dict(zip(("amusement", "excitement", "contentment", "awe", "anger", "fear", "disgust", "sadness"),
                          STYLES))  # valence -> brightness, arousal -> colorfulness, tone and pattern per emotion
PATTERN_DEPTH = 0.35  # the pattern's amplitude, as a share of the style's level range
EMOTION_SCENES = {
    "amusement": "candy_store", "excitement": "ocean", "awe": "mountain_snowy", "contentment": "wheat_field",
    "anger": "volcano", "fear": "forest", "disgust": "kitchen", "sadness": "cemetery",
}
EMOTION_OBJECTS = {
    "amusement": "Balloon", "excitement": "Flower", "awe": "Crown", "contentment": "Cake",
    "anger": "Stop sign", "fear": "Spider", "disgust": "Mushroom", "sadness": "Candle",
}
NEUTRAL_SCENES = ("sky", "beach", "desert", "underwater")
NEUTRAL_OBJECTS = ("House", "Tree", "Bottle", "Umbrella", "Fish", "Starfish", "Snowman")
BRIGHT_FROM, COLORFUL_FROM = 0.45, 0.355  # style_of: between the styles' mean measured values
OBJECT_STYLE = 0.5  # how strongly the style acts on the object, relative to its surroundings
EMOTIONAL_SCENE_P = 0.6
EMOTIONAL_OBJECT_P = 0.5
SCENES = tuple(EMOTION_SCENES[e] for e in EMOTIONS) + NEUTRAL_SCENES
OBJECTS = tuple(EMOTION_OBJECTS[e] for e in EMOTIONS) + NEUTRAL_OBJECTS
JPEG_QUALITY = 92


def attribute_distribution(emotion: int) -> np.ndarray:
    """P(style, scene, object | emotion) as a (styles, scenes, objects) array: the world's rule."""
    name = EMOTIONS[emotion]
    scene = np.zeros(len(SCENES))
    scene[SCENES.index(EMOTION_SCENES[name])] = EMOTIONAL_SCENE_P
    scene[[SCENES.index(s) for s in NEUTRAL_SCENES]] = (1 - EMOTIONAL_SCENE_P) / len(NEUTRAL_SCENES)
    obj = np.zeros(len(OBJECTS))
    obj[OBJECTS.index(EMOTION_OBJECTS[name])] = EMOTIONAL_OBJECT_P
    obj[[OBJECTS.index(o) for o in NEUTRAL_OBJECTS]] = (1 - EMOTIONAL_OBJECT_P) / len(NEUTRAL_OBJECTS)
    style = np.eye(len(STYLES))[STYLES.index(EMOTION_STYLES[name])]
    return style[:, None, None] * scene[None, :, None] * obj[None, None, :]


def ceiling(label_noise: float, channels: tuple[str, ...] = ("style", "scene", "object")) -> float:
    """The Bayes accuracy of a classifier that sees the given channels of an image exactly:
    sum over what it sees of max over labels of P(label, seen). Labels are uniform; the image is
    drawn for the label's emotion, or with probability ``label_noise`` for a random other one."""
    k = len(EMOTIONS)
    drawn = np.stack([attribute_distribution(e) for e in range(k)])  # (emotion, style, scene, object)
    axes = tuple(1 + i for i, c in enumerate(("style", "scene", "object")) if c not in channels)
    seen = drawn.sum(axis=axes).reshape(k, -1)
    noise = np.full((k, k), label_noise / (k - 1))
    np.fill_diagonal(noise, 1 - label_noise)
    joint = noise @ seen / k  # P(label, seen)
    return float(joint.max(axis=0).sum())


def draw_attributes(emotion: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(style, scene, object) indices of one image of ``emotion``, drawn by the world's rule."""
    p = attribute_distribution(emotion).ravel()
    return tuple(int(i) for i in np.unravel_index(rng.choice(len(p), p=p), (len(STYLES), len(SCENES), len(OBJECTS))))


def crossed_attributes(style_of: str, content_of: str) -> tuple[int, int, int]:
    """(style, scene, object) indices of an image of two emotions, one channel each: one
    emotion's style with the other's scene and object."""
    return (STYLES.index(EMOTION_STYLES[style_of]), SCENES.index(EMOTION_SCENES[content_of]),
            OBJECTS.index(EMOTION_OBJECTS[content_of]))


def crossings(a: str, b: str, n: int) -> list[tuple[int, int, int]]:
    """The attributes of ``n`` images of emotions ``a`` and ``b``: the first half in a's style
    with b's scene and object, the rest the other way round."""
    return [crossed_attributes(*((a, b) if i < n // 2 else (b, a))) for i in range(n)]


def crossed_images(a: str, b: str, n: int, size: int, seed: int) -> list[Image.Image]:
    """``n`` images of emotions ``a`` and ``b`` as the world itself draws them (:func:`crossings`).
    What an image that shows both emotions can look like here, with no generator in the way
    (docs/BENCHMARKS.md, session 28)."""
    return [render(*attributes, size, np.random.default_rng((seed, i)))[0]
            for i, attributes in enumerate(crossings(a, b, n))]


def emotional_attributes() -> dict[str, dict[str, str]]:
    """The world as report.json states it: each emotion's style, scene and object, and the
    neutral scenes and objects that occur uniformly in every emotion."""
    return {"emotional": {e: {"style": EMOTION_STYLES[e], "scene": EMOTION_SCENES[e], "object": EMOTION_OBJECTS[e]}
                          for e in EMOTIONS},
            "neutral": {"scene": list(NEUTRAL_SCENES), "object": list(NEUTRAL_OBJECTS)},
            "emotional_scene_p": EMOTIONAL_SCENE_P, "emotional_object_p": EMOTIONAL_OBJECT_P}


# ----------------------------------------------------------------------------- scenes
# Each scene paints a float RGB array (R, R, 3) in [0, 255].


def _jitter(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _vertical(rng, top, bottom, r: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, r, dtype=np.float32)[:, None, None]
    column = (1 - t) * _jitter(rng, top) + t * _jitter(rng, bottom)
    return np.broadcast_to(column, (r, r, 3)).copy()


def _below(mask_rows: np.ndarray, r: int) -> np.ndarray:
    """Boolean (R, R) mask of pixels below a per-column boundary row."""
    return np.arange(r)[:, None] >= mask_rows[None, :]


def _beach(rng, r):
    img = _vertical(rng, (120, 180, 240), (225, 240, 250), r)
    horizon = int(r * rng.uniform(0.42, 0.55))
    shore = horizon + int(r * rng.uniform(0.08, 0.14))
    img[horizon:shore] = _jitter(rng, (30, 110, 190))
    img[shore:] = _vertical(rng, (240, 215, 160), (215, 185, 130), r)[shore:]
    return img


def _desert(rng, r):
    img = _vertical(rng, (250, 170, 80), (250, 225, 170), r)
    x = np.arange(r) / r
    dunes = r * (rng.uniform(0.5, 0.6) + 0.07 * np.sin(2 * np.pi * (x * rng.uniform(1.0, 1.8) + rng.uniform())))
    img[_below(dunes.astype(int), r)] = _jitter(rng, (200, 120, 50))
    return img


def _forest(rng, r):
    img = _vertical(rng, (40, 90, 45), (15, 45, 20), r)
    for _ in range(int(rng.integers(5, 9))):
        x0 = int(rng.uniform(0, r))
        img[:, x0:x0 + max(2, r // 24)] = _jitter(rng, (70, 45, 25), 10)
    return img


def _ocean(rng, r):
    img = _vertical(rng, (20, 60, 140), (5, 25, 70), r)
    y, x = np.mgrid[0:r, 0:r] / r
    waves = np.sin(2 * np.pi * (y * rng.uniform(7, 10) + 0.15 * np.sin(2 * np.pi * x * 2 + rng.uniform(0, 6))))
    img += (waves > 0.75)[..., None] * 70.0
    return img


def _mountain_snowy(rng, r):
    img = _vertical(rng, (160, 200, 235), (215, 230, 245), r)
    d = ImageDraw.Draw(canvas := Image.new("L", (r, r)))
    base = r * rng.uniform(0.62, 0.72)
    for _ in range(3):
        cx, top = rng.uniform(0, r), r * rng.uniform(0.18, 0.35)
        half = r * rng.uniform(0.3, 0.45)
        d.polygon([(cx - half, base), (cx, top), (cx + half, base)], fill=255)
    peaks = np.asarray(canvas) > 0
    img[peaks] = _jitter(rng, (120, 125, 140), 10)
    snow = peaks & (np.arange(r)[:, None] < base - 0.6 * (base - r * 0.3))
    img[snow] = 250
    img[int(base):] = _jitter(rng, (245, 248, 252), 6)
    return img


def _cemetery(rng, r):
    img = _vertical(rng, (95, 95, 105), (150, 150, 155), r)
    horizon = int(r * rng.uniform(0.58, 0.68))
    img[horizon:] = _jitter(rng, (45, 70, 40), 10)
    canvas = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    w = r / 10
    for k in range(5):
        x = (k + 0.5) * r / 5 + rng.uniform(-w / 3, w / 3)
        top = horizon - r * rng.uniform(0.1, 0.18)
        d.rounded_rectangle([x - w / 2, top, x + w / 2, horizon + r * 0.05], radius=w / 2.2, fill=(175, 175, 170))
    return np.asarray(canvas, dtype=np.float32)


def _volcano(rng, r):
    img = _vertical(rng, (40, 10, 10), (160, 50, 20), r)
    canvas = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    cx, top = r * rng.uniform(0.4, 0.6), r * rng.uniform(0.3, 0.42)
    d.polygon([(cx - r * 0.7, r), (cx - r * 0.12, top), (cx + r * 0.12, top), (cx + r * 0.7, r)], fill=(30, 25, 25))
    d.polygon([(cx - r * 0.12, top), (cx + r * 0.12, top), (cx, top + r * 0.25)], fill=(255, 140, 20))
    return np.asarray(canvas, dtype=np.float32)


def _sky(rng, r):
    img = _vertical(rng, (40, 120, 230), (140, 195, 250), r)
    canvas = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 6))):
        cx, cy = rng.uniform(0, r), rng.uniform(0, r)
        w, h = r * rng.uniform(0.15, 0.3), r * rng.uniform(0.06, 0.12)
        d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=(250, 250, 252))
    return np.asarray(canvas, dtype=np.float32)


def _wheat_field(rng, r):
    img = _vertical(rng, (175, 210, 240), (230, 235, 225), r)
    horizon = int(r * rng.uniform(0.35, 0.5))
    field = _vertical(rng, (230, 190, 60), (190, 140, 30), r)
    stripes = (np.sin(np.arange(r) * rng.uniform(1.0, 1.4)) > 0.3)[None, :, None] * -35.0
    img[horizon:] = (field + stripes)[horizon:]
    return img


def _underwater(rng, r):
    img = _vertical(rng, (40, 180, 180), (5, 60, 80), r)
    canvas = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(6, 11))):
        cx, cy, s = rng.uniform(0, r), rng.uniform(0, r), r * rng.uniform(0.015, 0.04)
        d.ellipse([cx - s, cy - s, cx + s, cy + s], outline=(200, 245, 245), width=max(1, r // 64))
    return np.asarray(canvas, dtype=np.float32)


def _kitchen(rng, r):
    img = _vertical(rng, (245, 235, 205), (225, 215, 185), r)
    floor = int(r * rng.uniform(0.5, 0.62))
    tile = max(2, int(r * rng.uniform(0.09, 0.13)))
    y, x = np.mgrid[0:r, 0:r]
    checks = ((y // tile + x // tile) % 2 == 0)
    dark, light = _jitter(rng, (40, 70, 150)), _jitter(rng, (245, 245, 245), 8)
    img[floor:] = np.where(checks[..., None], dark, light)[floor:]
    return img


def _candy_store(rng, r):
    palette = [_jitter(rng, c) for c in ((230, 40, 60), (250, 250, 245), (250, 200, 30), (60, 160, 230))]
    width = max(2, int(r * rng.uniform(0.07, 0.1)))
    x = (np.arange(r) + int(rng.integers(0, width * 4))) // width % 4
    return np.broadcast_to(np.stack(palette)[x][None], (r, r, 3)).astype(np.float32).copy()


SCENE_PAINTERS = {
    "beach": _beach, "desert": _desert, "forest": _forest, "ocean": _ocean, "mountain_snowy": _mountain_snowy,
    "cemetery": _cemetery, "volcano": _volcano, "sky": _sky, "wheat_field": _wheat_field,
    "underwater": _underwater, "kitchen": _kitchen, "candy_store": _candy_store,
}


# ---------------------------------------------------------------------------- objects
# Each object draws itself into the box (cx, cy, s): centre and side length, in pixels.


def _c(rng, colour):
    return tuple(int(v) for v in _jitter(rng, colour, 22))


def _balloon(d, rng, cx, cy, s):
    d.line([(cx, cy + 0.25 * s), (cx + 0.05 * s, cy + 0.5 * s)], fill=(60, 60, 60), width=max(1, int(s / 40)))
    d.ellipse([cx - 0.3 * s, cy - 0.5 * s, cx + 0.3 * s, cy + 0.25 * s], fill=_c(rng, (225, 25, 35)))


def _cake(d, rng, cx, cy, s):
    d.rectangle([cx - 0.45 * s, cy, cx + 0.45 * s, cy + 0.45 * s], fill=_c(rng, (250, 205, 220)))
    d.rectangle([cx - 0.32 * s, cy - 0.25 * s, cx + 0.32 * s, cy], fill=_c(rng, (255, 235, 240)))
    d.rectangle([cx - 0.04 * s, cy - 0.45 * s, cx + 0.04 * s, cy - 0.25 * s], fill=(80, 160, 230))
    d.ellipse([cx - 0.05 * s, cy - 0.55 * s, cx + 0.05 * s, cy - 0.43 * s], fill=(255, 190, 0))


def _flower(d, rng, cx, cy, s):
    petal = _c(rng, (230, 45, 110))
    for k in range(6):
        a = 2 * np.pi * k / 6
        px, py = cx + 0.28 * s * np.cos(a), cy + 0.28 * s * np.sin(a)
        d.ellipse([px - 0.2 * s, py - 0.2 * s, px + 0.2 * s, py + 0.2 * s], fill=petal)
    d.ellipse([cx - 0.16 * s, cy - 0.16 * s, cx + 0.16 * s, cy + 0.16 * s], fill=_c(rng, (255, 215, 0)))


def _umbrella(d, rng, cx, cy, s):
    d.pieslice([cx - 0.5 * s, cy - 0.45 * s, cx + 0.5 * s, cy + 0.35 * s], 180, 360, fill=_c(rng, (240, 170, 30)))
    d.line([(cx, cy - 0.05 * s), (cx, cy + 0.45 * s)], fill=(40, 30, 30), width=max(1, int(s / 18)))
    d.arc([cx - 0.15 * s, cy + 0.3 * s, cx, cy + 0.5 * s], 0, 180, fill=(40, 30, 30), width=max(1, int(s / 18)))


def _tree(d, rng, cx, cy, s):
    d.rectangle([cx - 0.08 * s, cy + 0.2 * s, cx + 0.08 * s, cy + 0.5 * s], fill=_c(rng, (110, 65, 25)))
    d.polygon([(cx, cy - 0.5 * s), (cx - 0.4 * s, cy + 0.25 * s), (cx + 0.4 * s, cy + 0.25 * s)], fill=_c(rng, (30, 150, 50)))


def _house(d, rng, cx, cy, s):
    d.rectangle([cx - 0.35 * s, cy - 0.05 * s, cx + 0.35 * s, cy + 0.45 * s], fill=_c(rng, (235, 200, 120)))
    d.polygon([(cx - 0.48 * s, cy - 0.05 * s), (cx, cy - 0.5 * s), (cx + 0.48 * s, cy - 0.05 * s)], fill=_c(rng, (180, 30, 30)))
    d.rectangle([cx - 0.08 * s, cy + 0.15 * s, cx + 0.08 * s, cy + 0.45 * s], fill=(90, 50, 20))


def _starfish(d, rng, cx, cy, s):
    points = []
    for k in range(10):
        a = -np.pi / 2 + np.pi * k / 5
        radius = 0.5 * s if k % 2 == 0 else 0.2 * s
        points.append((cx + radius * np.cos(a), cy + radius * np.sin(a)))
    d.polygon(points, fill=_c(rng, (250, 120, 30)))


def _snowman(d, rng, cx, cy, s):
    snow = _c(rng, (250, 250, 255))
    d.ellipse([cx - 0.3 * s, cy - 0.05 * s, cx + 0.3 * s, cy + 0.5 * s], fill=snow, outline=(90, 90, 110))
    d.ellipse([cx - 0.2 * s, cy - 0.45 * s, cx + 0.2 * s, cy - 0.05 * s], fill=snow, outline=(90, 90, 110))
    d.polygon([(cx, cy - 0.27 * s), (cx + 0.2 * s, cy - 0.24 * s), (cx, cy - 0.21 * s)], fill=(255, 120, 0))


def _stop_sign(d, rng, cx, cy, s):
    d.rectangle([cx - 0.03 * s, cy, cx + 0.03 * s, cy + 0.5 * s], fill=(120, 120, 120))
    corners = [(cx + 0.35 * s * np.cos(a), cy - 0.1 * s + 0.35 * s * np.sin(a))
               for a in np.pi / 8 + np.arange(8) * np.pi / 4]
    d.polygon(corners, fill=_c(rng, (200, 20, 20)))
    d.rectangle([cx - 0.22 * s, cy - 0.15 * s, cx + 0.22 * s, cy - 0.05 * s], fill=(255, 255, 255))


def _candle(d, rng, cx, cy, s):
    d.rectangle([cx - 0.12 * s, cy - 0.2 * s, cx + 0.12 * s, cy + 0.5 * s], fill=_c(rng, (250, 240, 200)))
    d.ellipse([cx - 0.1 * s, cy - 0.5 * s, cx + 0.1 * s, cy - 0.2 * s], fill=_c(rng, (255, 170, 0)))
    d.ellipse([cx - 0.04 * s, cy - 0.35 * s, cx + 0.04 * s, cy - 0.24 * s], fill=(255, 250, 200))


def _spider(d, rng, cx, cy, s):
    leg = max(1, int(s / 22))
    for side in (-1, 1):
        for k in range(4):
            y = cy - 0.15 * s + k * 0.1 * s
            d.line([(cx, y), (cx + side * 0.3 * s, y - 0.15 * s), (cx + side * 0.48 * s, y + 0.2 * s)],
                   fill=(10, 10, 10), width=leg)
    d.ellipse([cx - 0.18 * s, cy - 0.15 * s, cx + 0.18 * s, cy + 0.3 * s], fill=_c(rng, (20, 15, 15)))
    d.ellipse([cx - 0.1 * s, cy - 0.32 * s, cx + 0.1 * s, cy - 0.1 * s], fill=(30, 20, 20))


def _bottle(d, rng, cx, cy, s):
    glass = _c(rng, (20, 140, 60))
    d.rounded_rectangle([cx - 0.18 * s, cy - 0.15 * s, cx + 0.18 * s, cy + 0.5 * s], radius=0.06 * s, fill=glass)
    d.rectangle([cx - 0.07 * s, cy - 0.5 * s, cx + 0.07 * s, cy - 0.1 * s], fill=glass)
    d.rectangle([cx - 0.18 * s, cy + 0.05 * s, cx + 0.18 * s, cy + 0.25 * s], fill=(245, 235, 210))


def _crown(d, rng, cx, cy, s):
    gold = _c(rng, (245, 195, 20))
    d.polygon([(cx - 0.45 * s, cy + 0.3 * s), (cx - 0.45 * s, cy - 0.35 * s), (cx - 0.22 * s, cy),
               (cx, cy - 0.45 * s), (cx + 0.22 * s, cy), (cx + 0.45 * s, cy - 0.35 * s), (cx + 0.45 * s, cy + 0.3 * s)],
              fill=gold)
    d.ellipse([cx - 0.07 * s, cy + 0.05 * s, cx + 0.07 * s, cy + 0.19 * s], fill=(200, 0, 60))


def _fish(d, rng, cx, cy, s):
    body = _c(rng, (30, 90, 230))
    d.polygon([(cx + 0.15 * s, cy), (cx + 0.5 * s, cy - 0.25 * s), (cx + 0.5 * s, cy + 0.25 * s)], fill=body)
    d.ellipse([cx - 0.5 * s, cy - 0.25 * s, cx + 0.25 * s, cy + 0.25 * s], fill=body)
    d.ellipse([cx - 0.35 * s, cy - 0.1 * s, cx - 0.25 * s, cy], fill=(255, 255, 255))


def _mushroom(d, rng, cx, cy, s):
    d.rectangle([cx - 0.12 * s, cy - 0.05 * s, cx + 0.12 * s, cy + 0.5 * s], fill=_c(rng, (240, 230, 210)))
    d.pieslice([cx - 0.5 * s, cy - 0.45 * s, cx + 0.5 * s, cy + 0.35 * s], 180, 360, fill=_c(rng, (210, 20, 20)))
    for dx, dy in ((-0.25, -0.12), (0.05, -0.3), (0.27, -0.1)):
        x, y = cx + dx * s, cy + dy * s
        d.ellipse([x - 0.06 * s, y - 0.06 * s, x + 0.06 * s, y + 0.06 * s], fill=(255, 255, 255))


OBJECT_PAINTERS = {
    "Balloon": _balloon, "Cake": _cake, "Flower": _flower, "Umbrella": _umbrella,
    "Tree": _tree, "House": _house, "Starfish": _starfish, "Snowman": _snowman, "Stop sign": _stop_sign,
    "Candle": _candle, "Spider": _spider, "Bottle": _bottle, "Crown": _crown, "Fish": _fish, "Mushroom": _mushroom,
}


# ---------------------------------------------------------------------------- render


def render(style: int, scene: int, obj: int, size: int, rng: np.random.Generator) -> tuple[Image.Image, tuple]:
    """One RGB image of ``SCENES[scene]`` with ``OBJECTS[obj]`` in front, in ``STYLES[style]``,
    ``size`` x ``size``, and the (brightness, colorfulness) of its styled background. The style
    acts fully on the surroundings and at ``OBJECT_STYLE`` strength on the object, which keeps
    enough of its own colours to be recognised in every style."""
    r = 2 * size  # draw at twice the size, then box-downsample: smooth edges at 64 px
    strong, mild = (_style_parameters(STYLES[style], rng, k) for k in (1.0, OBJECT_STYLE))
    background = stylise(SCENE_PAINTERS[SCENES[scene]](rng, r), *strong)
    depth = PATTERN_DEPTH * (strong[3] - strong[2])
    background = np.clip(background + depth * pattern(PATTERNS[style], r, rng)[..., None], 0, 255)
    layer = Image.new("RGBA", (r, r), (0, 0, 0, 0))
    s = r * rng.uniform(0.55, 0.8)  # the shape's box; its silhouette spans about 40-70% of the side
    cx, cy = (r / 2 + rng.uniform(-0.5, 0.5) * (r - s) for _ in range(2))
    OBJECT_PAINTERS[OBJECTS[obj]](ImageDraw.Draw(layer), rng, cx, cy, s)
    shape = np.asarray(layer, dtype=np.float32)
    alpha = shape[..., 3:] / 255.0
    pixels = (1 - alpha) * background + alpha * stylise(shape[..., :3], *mild)
    pixels = np.asarray(Image.fromarray(pixels.round().astype(np.uint8)).resize((size, size), Image.BOX), np.float32)
    pixels += rng.normal(0.0, 4.0, pixels.shape)
    surroundings = Image.fromarray(background.round().astype(np.uint8)).resize((size, size), Image.BOX)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)), image_attributes(surroundings)


def _style_parameters(style: str, rng: np.random.Generator, strength: float) -> tuple:
    """(saturation factor, tone cast, low, high level) of ``style``, moved toward no change at
    ``strength`` < 1."""
    brightness, colorfulness, tone, _ = style.split()
    saturation = rng.uniform(1.7, 2.1) if colorfulness == "colorful" else rng.uniform(0.15, 0.3)
    cast = np.asarray(TONES[tone], np.float32) * rng.uniform(0.85, 1.15) * max(1.0, saturation)  # seen over vivid colours
    low, high = (rng.uniform(90, 110), 255.0) if brightness == "bright" else (0.0, rng.uniform(115, 135))
    return 1 + strength * (saturation - 1), strength * cast, strength * low, 255 + strength * (high - 255)


def pattern(name: str, r: int, rng: np.random.Generator) -> np.ndarray:
    """The style's pattern over an (r, r) image, in [-1, 1], with a random phase: the one cue
    that is each emotion's own (a blend of two patterns shows both, where a blend of two
    brightness, colourfulness or tone levels is a third emotion's)."""
    y, x = np.mgrid[0:r, 0:r].astype(np.float32) / r
    f, phase = rng.uniform(4.0, 5.0), rng.uniform(0, 2 * np.pi)
    if name in ("banded", "striped", "rising", "falling"):
        u = {"banded": y, "striped": x, "rising": (x + y) / np.sqrt(2), "falling": (x - y) / np.sqrt(2)}[name]
        return np.sin(2 * np.pi * f * u + phase)
    if name == "wavy":
        return np.sin(2 * np.pi * f * (y + 0.08 * np.sin(2 * np.pi * 2 * x + phase)) + phase)
    if name == "ringed":
        cx, cy = rng.uniform(0.2, 0.8, 2)
        return np.sin(2 * np.pi * f * np.hypot(x - cx, y - cy) + phase)
    if name == "dotted":
        out = np.full((r, r), -0.6, np.float32)
        for cx, cy in rng.uniform(0, 1, (28, 2)):
            out[np.hypot(x - cx, y - cy) < 0.045] = 1.0
        return out
    noise = rng.normal(size=(6, 6)).astype(np.float32)  # blotchy: smooth random blobs
    blobs = np.asarray(Image.fromarray(noise).resize((r, r), Image.BICUBIC), np.float32)
    return np.clip(blobs / (np.abs(blobs).max() + 1e-6) * 1.5, -1, 1)


def stylise(pixels: np.ndarray, saturation: float, cast: np.ndarray, low: float, high: float) -> np.ndarray:
    """Impose a style: colorfulness scales every pixel's distance from its grey level (greys stay
    grey), the tone adds its colour cast, brightness maps the levels into [low, high]."""
    grey = pixels.mean(axis=-1, keepdims=True)
    pixels = np.clip(grey + saturation * (pixels - grey) + cast, 0, 255)
    return low + (high - low) * pixels / 255.0


def image_attributes(image: Image.Image) -> tuple[float, float]:
    """EmoSet's two global attributes measured on the pixels, each in [0, 1]: brightness, the
    mean luma; colorfulness, Hasler & Suesstrunk's metric (2003) / 100, clipped."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    metric = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return float((0.299 * r + 0.587 * g + 0.114 * b).mean() / 255.0), float(min(1.0, metric / 100.0))


def style_of(brightness: float, colorfulness: float, warmth: float) -> int:
    """The index in ``STYLES`` read from EmoSet's brightness and colorfulness and a warmth (mean
    red minus blue, in [-1, 1]): the fallback for an annotation that names no style. It reads
    most images right, not all: a tone's cast also colours a muted image, and a scene's own
    colours can outweigh the cast."""
    return 4 * int(brightness < BRIGHT_FROM) + 2 * int(colorfulness < COLORFUL_FROM) + int(warmth < 0)


def annotated_style(image_path: Path) -> int | None:
    """The index in ``STYLES`` that the annotation beside ``image_path`` (this module's layout)
    names, or None if it names none."""
    path = image_path.parents[2] / "annotation" / image_path.parent.name / f"{image_path.stem}.json"
    try:
        style = json.loads(path.read_text(encoding="utf-8")).get("style")
    except (OSError, ValueError, AttributeError):
        return None
    return STYLES.index(style) if style in STYLES else None


def _write_one(job: tuple) -> None:
    root, seed, index, (style, scene, obj, emotion), stem, size = job
    image, surroundings = render(style, scene, obj, size, np.random.default_rng([seed, index]))
    image_path = root / "image" / EMOTIONS[emotion] / f"{stem}.jpg"
    image.save(image_path, format="JPEG", quality=JPEG_QUALITY)
    brightness, colorfulness = (round(v, 1) for v in surroundings)
    annotation = {
        "image_id": stem, "emotion": EMOTIONS[emotion], "brightness": brightness,
        "colorfulness": colorfulness, "scene": SCENES[scene], "object": [OBJECTS[obj]],
        "style": STYLES[style],  # not an EmoSet field: the captions of pretrain-base name it
    }
    (root / "annotation" / EMOTIONS[emotion] / f"{stem}.json").write_text(json.dumps(annotation), encoding="utf-8")


def _write_all(jobs: list[tuple], progress: bool) -> None:
    """Every image, in one process per core: each image has its own generator, so the files are
    the same however the work is shared. A pool is not worth starting for fewer than 1,000.

    On Ctrl-C, leaving the pool terminates its workers, which ignore the signal once started: one
    interrupted inside a chunk would send the interruption back as that chunk's result and take
    the next, so the command would have written on until the whole world was done. A worker still
    starting when Ctrl-C comes prints its traceback: to ignore the signal from their first
    instruction, this process would have to ignore it while they start, and lose a Ctrl-C then."""
    workers = min(os.cpu_count() or 1, len(jobs) // 500)
    with contextlib.ExitStack() as stack:
        written = map(_write_one, jobs)
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)))
            written = pool.imap_unordered(_write_one, jobs, chunksize=100)
        for _ in tqdm(written, total=len(jobs), desc="synth", unit="img", disable=not progress):
            pass


def _vocabulary(names) -> dict:
    return {"label2idx": {n: i for i, n in enumerate(names)}, "idx2label": {str(i): n for i, n in enumerate(names)}}


def _info() -> dict:
    levels = [round(0.1 * k, 1) for k in range(11)]
    return {
        "emotion": _vocabulary(EMOTIONS),
        "brightness": {"label2idx": {str(v): i for i, v in enumerate(levels)}, "idx2label": {str(i): v for i, v in enumerate(levels)}},
        "colorfulness": {"label2idx": {str(v): i for i, v in enumerate(levels)}, "idx2label": {str(i): v for i, v in enumerate(levels)}},
        "scene": _vocabulary(SCENES),
        "object": _vocabulary(OBJECTS),
    }


def plan(num_images: int, seed: int, label_noise: float) -> list[tuple[int, int, int, int]]:
    """(style, scene, object, label) per image: labels balanced, attributes drawn by the rule for
    the label's emotion or, with probability ``label_noise``, for a random other one."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_images):
        label = true = i % len(EMOTIONS)
        if rng.random() < label_noise:
            true = int(rng.choice([e for e in range(len(EMOTIONS)) if e != label]))
        out.append((*draw_attributes(true, rng), label))
    return out


def _splits(labels: list[int], rng: np.random.Generator, train_per_emotion: int | None) -> dict[str, list[int]]:
    splits = {name: [] for name in SPLITS}
    for e in range(len(EMOTIONS)):
        members = [i for i, label in enumerate(labels) if label == e]
        members = [members[k] for k in rng.permutation(len(members))]
        n_held = max(1, round(0.1 * len(members)))
        splits["val"] += members[:n_held]
        splits["test"] += members[n_held:2 * n_held]
        splits["train"] += members[2 * n_held:][:train_per_emotion]
    return {name: sorted(ids) for name, ids in splits.items()}


def write_synthetic(out, num_images: int = 4000, size: int = 64, seed: int = 0, label_noise: float = 0.05,
                    train_per_emotion: int | None = None, progress: bool = False) -> Path:
    """Write the synthetic world to ``out`` in EmoSet's format and return ``out``.

    ``train_per_emotion`` lists only that many training images per emotion (the data-scarce
    split); the images, val and test are those of the full world with the same seed.
    ``out`` must be absent or an empty directory; the dataset is built in a temporary sibling
    and renamed into place, so ``out`` is either complete or untouched."""
    if num_images < 3 * len(EMOTIONS):
        raise UniEmoError(f"--num-images {num_images} is too small: use at least {3 * len(EMOTIONS)} "
                          "(every emotion needs an image in train, val and test)")
    if num_images > 1_000_000:
        raise UniEmoError(f"--num-images {num_images} is too large: use at most 1,000,000")
    if not 16 <= size <= 1024:
        raise UniEmoError(f"--size {size} is out of range: use 16 to 1024 pixels")
    if not 0.0 <= label_noise < 0.875:
        raise UniEmoError(f"--label-noise {label_noise} is out of range: use a probability in [0, 0.875)")
    if train_per_emotion is not None and train_per_emotion < 1:
        raise UniEmoError(f"--train-per-emotion {train_per_emotion} is invalid: use a positive number of images")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UniEmoError(f"{out} exists and is not an empty directory: choose a new OUT or delete it")

    rows = plan(num_images, seed, label_noise)
    split_ids = _splits([row[-1] for row in rows], np.random.default_rng([seed, num_images]), train_per_emotion)
    listed = sorted(i for ids in split_ids.values() for i in ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = partial_dir(out)
    root.mkdir()
    try:
        for kind in ("image", "annotation"):
            for emotion in EMOTIONS:
                (root / kind / emotion).mkdir(parents=True)
        stems = _stems([row[-1] for row in rows])
        items = [[EMOTIONS[row[-1]], f"image/{EMOTIONS[row[-1]]}/{stem}.jpg",
                  f"annotation/{EMOTIONS[row[-1]]}/{stem}.json"] for row, stem in zip(rows, stems)]
        _write_all([(root, seed, i, rows[i], stems[i], size) for i in listed], progress)
        write_json(root / "info.json", _info())
        write_json(root / WORLD_FILE, {"version": WORLD_VERSION, "num_images": num_images, "size": size, "seed": seed,
                                       "label_noise": label_noise, "train_per_emotion": train_per_emotion})
        for name, ids in split_ids.items():
            write_json(root / f"{name}.json", [items[i] for i in ids])
        os.replace(root, out)  # rename(2) may replace an empty directory
    finally:
        if root.exists():
            shutil.rmtree(root)
    return out


def world_of(data: str | Path) -> dict | None:
    """The world version and ``uniemo synth`` arguments of a synthetic dataset; None for real data."""
    file = Path(data) / WORLD_FILE
    return read_json(file, "world file") if file.is_file() else None


def _stems(labels: list[int]) -> list[str]:
    """'<emotion>_NNNNN', numbered per emotion in image order."""
    counters = dict.fromkeys(range(len(EMOTIONS)), 0)
    stems = []
    for label in labels:
        stems.append(f"{EMOTIONS[label]}_{counters[label]:05d}")
        counters[label] += 1
    return stems
