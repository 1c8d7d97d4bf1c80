"""``uniemo serve``: UniEmo in a browser, on this machine only (a Gradio app).

Three actions, each a queued endpoint with a stable name for ``gradio_client``:

- ``/classify`` (image) -> the emotion probabilities, the positive / negative reading, the
  scene and object the expert queries matched, and their attention maps over the image;
- ``/generate`` (target, object, seed, steps, count) -> images, each with its metadata and the
  understanding branch's reading of it;
- ``/edit`` (image, target, strength, seed, steps, keep object, invert, keep region, until target,
  object) -> before / after, with both readings.

A target is an emotion ("awe") or a mix ("awe=0.6,fear=0.4"); the page builds it from a menu,
sliders or a point in the valence-arousal plane. Nothing leaves the machine: system fonts, no
analytics, no share link. Understanding requests wait in one queue and diffusion requests
(generate, edit) in another, each served first come, first served, one at a time.

``Studio`` holds the models and computes each action without Gradio, so it is tested directly;
``build_app`` lays out the page and ``serve`` starts it.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from uniemo.errors import UniEmoError
from uniemo.vocab import EMOTIONS, POSITIVE, VALENCE_AROUSAL


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (``uniemo serve --max-images / --max-steps``)."""

    max_images: int = 8
    max_steps: int = 50
    max_pixels: int = 40_000_000  # an upload's width x height, checked from its header before decoding
    min_side: int = 16
    queue_size: int = 64  # requests waiting per queue; more are turned away with a message


def mix_at(valence: float, arousal: float, spread: float = 1.0) -> dict[str, float]:
    """Mix weights over the 8 emotions for a point in the valence-arousal plane (1-9 scales): a
    Gaussian kernel of std ``spread`` around each emotion's position (``VALENCE_AROUSAL``,
    Warriner et al. 2013), normalised; weights under 1% are dropped and the rest renormalised."""
    for name, value in (("valence", valence), ("arousal", arousal)):
        if not isinstance(value, (int, float)) or not 1 <= value <= 9:
            raise UniEmoError(f"{name} {value!r} is out of range: use a number from 1 to 9")
    kernel = {name: math.exp(-((valence - v) ** 2 + (arousal - a) ** 2) / (2 * spread**2))
              for name, (v, a) in VALENCE_AROUSAL.items()}
    top = max(kernel.values())
    if top == 0:  # far from every emotion (only with a tiny spread): the nearest one
        nearest = min(VALENCE_AROUSAL, key=lambda n: math.dist((valence, arousal), VALENCE_AROUSAL[n]))
        return {nearest: 1.0}
    total = sum(kernel.values())
    kept = {name: w for name, w in kernel.items() if w / total >= 0.01}
    return {name: w / sum(kept.values()) for name, w in kept.items()}


def mix_text(weights: dict[str, float]) -> str:
    """{"awe": 0.6, "fear": 0.4} -> "awe=0.6,fear=0.4" (a target the page and the API accept)."""
    return ",".join(f"{name}={w:.3g}" for name, w in weights.items() if w > 0)


def whole(value) -> bool:
    """A number the page may send for a count or a seed: finite and whole (NaN and infinity are not)."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value == int(value)


class Studio:
    """The models behind the page: a stage-2 run understands, generates and edits; a stage-1 or
    stage-3 run only understands."""

    def __init__(self, run_dir: str | Path, limits: Limits = Limits(), device: str | torch.device | None = None,
                 sd_path: str | Path | None = None):
        from uniemo.data import clip_transforms
        from uniemo.metrics import default_device
        from uniemo.pipeline import UniEmoPipeline
        from uniemo.rundir import STAGE2, RunDir
        from uniemo.understanding import UniEmoUnderstanding, load_attributes, load_image_processor

        self.run_dir, self.limits = Path(run_dir), limits
        self.device = torch.device(device) if device else default_device()
        if not RunDir(self.run_dir).missing(STAGE2):
            self.pipe = UniEmoPipeline.from_pretrained(self.run_dir, sd_path).to(self.device)
            self.pipe.set_progress_bar_config(disable=True)  # no progress bars in the server's log
            self.model, banks = self.pipe.understanding, (self.pipe.scene_bank, self.pipe.object_bank)
        else:
            self.pipe = None
            self.model = UniEmoUnderstanding.from_pretrained(self.run_dir).to(self.device)
            banks = load_attributes(self.run_dir)
        self.processor = load_image_processor(self.run_dir)
        self.transform = clip_transforms(self.processor, train=False)
        self.banks = dict(zip(("scene", "object"), banks))
        self.class_names = tuple(self.model.class_names)

    # ------------------------------------------------------------------ the three actions

    def classify(self, image: str) -> tuple[dict, dict | None, dict, list]:
        """(emotion probabilities, positive/negative probabilities or None for a run whose classes
        are not the 8 emotions, the matched scenes/objects {kind: {name: cosine}}, the gallery
        [(the view the model saw, caption), (scene attention, caption), (object attention, caption)])."""
        from uniemo.data import model_view
        from uniemo.plots import attention_overlay

        picture = self.load(image)
        pixels = self.transform(picture).unsqueeze(0)
        explain = self.model.cfg.queries != "none"
        with torch.no_grad():
            out = self.model(pixels.to(self.device), output_attentions=explain)
        probs = dict(zip(self.class_names, out.logits.float().softmax(-1)[0].tolist()))
        view = model_view(pixels[0], self.processor)
        gallery = [(attention_overlay(view), "the view the model saw")]
        if explain:
            gallery += [(attention_overlay(view, out.attentions[kind][0].cpu()), f"{kind} query attention")
                        for kind in ("scene", "object")]
        matched = {kind: bank.nearest(getattr(out, f"{kind}_embed"), top=3)[0] for kind, bank in self.banks.items()} \
            if explain else {}
        return probs, self.binary(probs), matched, gallery

    def generate(self, target: str, object: str = "", seed: int = 0, steps: int = 25, count: int = 4,
                 draws: int = 1):
        """(gallery of (image, caption), metadata per image with the understanding branch's reading);
        with ``draws`` > 1 each image is the best of that many as the understanding branch reads them."""
        pipe = self.generator()
        self.check_request(count, steps, draws)
        out = pipe(**self.parse_target(target), object=(object or "").strip() or None, num_images=int(count),
                   num_inference_steps=int(steps), generator=self.seed(seed), candidates=int(draws))
        return self.with_readings(out.images, out.metadata)

    def edit(self, image: str, target: str, strength: float = 0.6, seed: int = 0, steps: int = 25,
             keep_object: bool = False, invert: bool = False, keep_region: float = 0.0, until_target: bool = False,
             object: str = ""):
        """(gallery [(source as fitted, "before ..."), (result, "after ...")], metadata with both
        readings); ``keep_object`` names the source's object, as the understanding branch reads
        it, in the prompt, and ``object`` names the user's word instead; ``invert`` starts from the
        source's DDIM inversion, ``keep_region`` (0: off) keeps where the object queries look and
        ``until_target`` raises the strength until the understanding branch reads the target
        (``UniEmoPipeline.edit``)."""
        pipe = self.generator()
        self.check_request(1, steps)
        keep_region = self.region(keep_region, invert)
        named = (object or "").strip() or None
        if named and keep_object:
            raise UniEmoError("name the object or tick 'Keep the object', not both: the box's word would replace "
                              "the understanding branch's reading")
        source = pipe.fit(self.load(image))
        out = pipe.edit(source, **self.parse_target(target), strength=float(strength), num_inference_steps=int(steps),
                        object=pipe.read_objects([source])[0] if keep_object else named, generator=self.seed(seed),
                        invert=bool(invert), keep_region=keep_region, until_target=bool(until_target))
        (before,), _ = self.readings([source])
        gallery, metadata = self.with_readings(out.images, out.metadata, "after: read as")
        return [(source, f"before: {self.caption(before)}")] + gallery, [{**m, "source_reading": before}
                                                                         for m in metadata]

    # ------------------------------------------------------------------ helpers

    def load(self, path: str | None):
        """An upload as RGB, refused with a one-line reason if it is not a usable image."""
        from PIL import Image

        from uniemo.data import UNREADABLE, load_rgb

        if not path:
            raise UniEmoError("no image given: upload a PNG, JPEG or WebP file")
        name = Path(path).name
        try:
            with Image.open(path) as header:
                width, height = header.size
            if width * height > self.limits.max_pixels:
                raise UniEmoError(f"{name} is {width}x{height} pixels, over this server's limit of "
                                  f"{self.limits.max_pixels / 1e6:g} megapixels: upload a smaller image")
            if min(width, height) < self.limits.min_side:
                raise UniEmoError(f"{name} is {width}x{height} pixels: upload an image at least "
                                  f"{self.limits.min_side} px on each side")
            return load_rgb(path)
        except UNREADABLE as e:
            reason = str(e).replace(str(path), name)
            raise UniEmoError(f"{name} cannot be read as an image ({reason}): upload a PNG, JPEG or WebP file") from None

    def binary(self, probs: dict[str, float]) -> dict[str, float] | None:
        if self.class_names != EMOTIONS:
            return None
        positive = sum(p for name, p in probs.items() if name in POSITIVE)
        return {"positive": positive, "negative": 1.0 - positive}

    def generator(self):
        if self.pipe is None:
            raise UniEmoError(f"{self.run_dir} is not a stage-2 run, so it cannot generate: "
                              "serve one made by `uniemo train joint`")
        return self.pipe

    def check_request(self, count, steps, draws=1) -> None:
        """Refuse what is not a positive whole number, or asks more than the limits. Every draw is
        denoised, so the image limit counts images × draws."""
        for name, value in (("images", count), ("steps", steps), ("draws", draws)):
            if not whole(value) or value < 1:
                raise UniEmoError(f"{value!r} {name} is invalid: use a positive whole number")
        images = f"{int(count)} images" + (f" × {int(draws)} draws" if draws > 1 else "")
        for asked, value, limit, flag in ((images, count * draws, self.limits.max_images, "--max-images"),
                                          (f"{int(steps)} steps", steps, self.limits.max_steps, "--max-steps")):
            if value > limit:
                raise UniEmoError(f"{asked} is over this server's limit of {limit} per request: "
                                  f"ask for fewer (the limit is set with `uniemo serve {flag}`)")

    def parse_target(self, target: str) -> dict:
        from uniemo.pipeline import parse_mix

        text = (target or "").strip()
        if not text:
            raise UniEmoError(f"no target: name an emotion ({', '.join(self.class_names)}) or a mix like awe=0.6,fear=0.4")
        return {"mix": parse_mix(text, self.class_names)} if "=" in text else {"emotion": text}

    @staticmethod
    def region(share, invert) -> float | None:
        """The edit's ``keep_region`` from the page's share (0: off), refused with the page's words."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise UniEmoError(f"keep region {share!r} is invalid: use a share in [0, 1] (0: off)")
        if share and not invert:
            raise UniEmoError("keeping the object's region needs the inversion: tick 'Start from the image's "
                              "inversion', or set the region to 0")
        return float(share) or None

    @staticmethod
    def seed(seed) -> int:
        if not whole(seed) or not 0 <= seed < 2**32:
            raise UniEmoError(f"seed {seed!r} is invalid: use a whole number from 0 to {2**32 - 1}")
        return int(seed)

    def readings(self, images: list) -> tuple[list[dict], torch.Tensor]:
        """The understanding branch's reading {emotion, probability} of each image, and all probabilities."""
        probs = self.pipe.read(images)
        top = probs.argmax(-1).tolist()
        return [{"emotion": self.class_names[k], "probability": round(float(p[k]), 4)}
                for k, p in zip(top, probs)], probs

    def with_readings(self, images: list, metadata: list[dict], label: str = "read as"):
        readings, probs = self.readings(images)
        for meta, reading, p in zip(metadata, readings, probs):
            wanted = meta["mix"] or {meta["emotion"]: 1.0}
            reading["target_probability"] = round(float(p[self.pipe.target_classes(wanted)].sum()), 4)
            meta["reading"] = reading
        captions = [f"seed {m['seed']} · {label} {self.caption(m['reading'])}" for m in metadata]
        return list(zip(images, captions)), metadata

    @staticmethod
    def caption(reading: dict) -> str:
        return f"{reading['emotion']} ({reading['probability']:.2f})"


# ---------------------------------------------------------------------------- the page


def answered(fn):
    """``fn`` with a user's mistake (UniEmoError) shown in the page as a message, not a traceback."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args):
        try:
            return fn(*args)
        except UniEmoError as e:
            raise gr.Error(str(e), print_exception=False) from None
    return wrapped


def target_picker(gr, names: tuple[str, ...]):
    """The target textbox and the three ways to fill it: a menu, mix sliders, a valence-arousal point."""
    target = gr.Textbox(value=names[0], label="Target: an emotion, or a mix NAME=WEIGHT,...", elem_classes="target")
    with gr.Tab("Emotion"):
        emotion = gr.Dropdown(list(names), value=names[0], label="Emotion")
        emotion.change(lambda name: name, emotion, target, api_visibility="private")
    with gr.Tab("Mix"):
        sliders = [gr.Slider(0, 1, value=0, step=0.05, label=name) for name in names]
        gr.Button("Use these weights").click(lambda *w: mix_text(dict(zip(names, w))), sliders, target,
                                             api_visibility="private")
    if names == EMOTIONS:
        with gr.Tab("Valence-arousal"):
            gr.Markdown("Weights from the distance of the point to each emotion word's (valence, arousal) "
                        "in Warriner, Kuperman & Brysbaert (2013), 1-9 scales.")
            valence = gr.Slider(1, 9, value=7, step=0.1, label="valence (unpleasant -> pleasant)")
            arousal = gr.Slider(1, 9, value=5, step=0.1, label="arousal (calm -> excited)")
            gr.Button("Use this point").click(lambda v, a: mix_text(mix_at(v, a)), [valence, arousal], target,
                                              api_visibility="private")
    return target


def steps_box(gr, default: int, limits: Limits):
    """A number box, not a bounded slider: a request over the limit gets this module's message."""
    return gr.Number(min(default, limits.max_steps), precision=0, label=f"Steps (at most {limits.max_steps})")


def build_app(studio: Studio):
    """The Gradio page: Understand, Generate and Edit tabs (the last two need a stage-2 run)."""
    import gradio as gr

    limits, names = studio.limits, studio.class_names
    understand = {"concurrency_id": "understand", "concurrency_limit": 1}
    diffusion = {"concurrency_id": "diffusion", "concurrency_limit": 1}
    with gr.Blocks(title="UniEmo", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"# UniEmo\nServing `{studio.run_dir}` on this machine.")
        with gr.Tab("Understand"):
            with gr.Row():
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="understand-image")
                with gr.Column():
                    emotions = gr.Label(label="Emotion", num_top_classes=len(names), elem_id="emotion")
                    binary = gr.Label(label="Positive / negative", elem_id="binary")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
            matched = gr.JSON(label="Scene and object the expert queries matched (cosine)")
            maps = gr.Gallery(label="Where the expert queries looked", columns=3, height="auto", object_fit="contain",
                              elem_id="attention")
            button.click(answered(studio.classify), image, [emotions, binary, matched, maps], api_name="classify",
                         **understand)
        if studio.pipe is None:
            with gr.Tab("Generate"):
                gr.Markdown(f"`{studio.run_dir}` is not a stage-2 run: serve one made by `uniemo train joint` "
                            "to generate and edit.")
            return app
        steps = studio.pipe.cfg.generation.num_inference_steps
        with gr.Tab("Generate"):
            target = target_picker(gr, names)
            with gr.Row():
                obj = gr.Textbox(label="Object (emotion transfer, optional)", placeholder="e.g. house")
                seed, n_steps = gr.Number(0, precision=0, label="Seed"), steps_box(gr, steps, limits)
                count = gr.Number(min(4, limits.max_images), precision=0, label=f"Images (at most {limits.max_images})")
                draws = gr.Number(1, precision=0, label="Draws per image: the understanding branch keeps the best "
                                  "(images × draws at most the limit)", elem_id="draws")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="Generated", columns=4, elem_id="gallery")
            metadata = gr.JSON(label="Metadata and the understanding branch's reading")
            button.click(answered(studio.generate), [target, obj, seed, n_steps, count, draws], [gallery, metadata],
                         api_name="generate", **diffusion)
        with gr.Tab("Edit"):
            source = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="edit-image")
            target = target_picker(gr, names)
            with gr.Row():
                strength = gr.Slider(0.05, 1, value=0.6, step=0.05, label="Strength")
                seed, n_steps = gr.Number(0, precision=0, label="Seed"), steps_box(gr, steps, limits)
                keep = gr.Checkbox(label="Keep the object (named by the understanding branch)")
                invert = gr.Checkbox(label="Start from the image's inversion (keeps more of it; SD 1.5)")
                region = gr.Slider(0, 1, value=0, step=0.05, label="Keep where the object queries look "
                                   "(share of their attention's maximum; 0: off; with the inversion)")
                until = gr.Checkbox(label="Raise the strength until the understanding branch reads the target")
                obj = gr.Textbox(label="Object to keep, in your words (optional; keeps it best)",
                                 placeholder="e.g. house")
            button = gr.Button("Edit", variant="primary", elem_id="edit")
            pair = gr.Gallery(label="Before / after", columns=2, elem_id="before-after")
            metadata = gr.JSON(label="Metadata and both readings")
            button.click(answered(studio.edit),
                         [source, target, strength, seed, n_steps, keep, invert, region, until, obj], [pair, metadata],
                         api_name="edit", **diffusion)
    return app


def serve(studio: Studio, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False):
    """Start the app on ``host:port``, never with a share link; returns the running Blocks (with
    ``block=False``; ``app.close()`` stops it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no call home, whatever the environment says
    import gradio as gr

    app = build_app(studio)
    app.queue(max_size=studio.limits.queue_size, default_concurrency_limit=1)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts from the internet
    stop = threading.Event()
    if block:  # before launch: a Ctrl+C raised inside launch could be lost there (measured), one that sets this is not
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, theme=theme,
                   prevent_thread_lock=True, quiet=quiet, footer_links=["api"], mcp_server=False, pwa=False,
                   enable_monitoring=False, max_file_size="50mb")
    except OSError as e:
        raise UniEmoError(f"cannot serve on {host}:{port} ({e}): pass another --port") from None
    if block:
        while not stop.is_set():
            time.sleep(0.1)
        app.close(verbose=False)
    return app
