"""``UniEmoPipeline``: emotional image generation from a stage-2 run, diffusers style (paper
§III-B, SPEC §4).

For every image: sample CLS / scene / object features from the emotion space N(mean, std) of
the requested emotion, pick α from the nearest scene / object attribute, fuse them into e,
inject e at the placeholder token, and let Stable Diffusion's own denoising loop run on
``prompt_embeds`` with classifier-free guidance against the empty prompt. A mix of emotions
(paper Fig. 10b) fuses e = Σ_k w_k e_k with normalised non-negative weights. ``edit`` turns a
given photo toward an emotion (SDEdit with the same condition), and ``read`` gives the
understanding branch's reading of any image.

Seeds: image i of a call with seed s uses seed s + i for both its feature sample and its
initial latents, so any image is reproduced alone from the seed in its metadata.

    pipe = UniEmoPipeline.from_pretrained("runs/stage2")
    out = pipe(emotion="awe", object="bench", num_images=4, generator=0)
    out.images[0].save("awe.png"); out.metadata[0]["alpha_scene"]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniemo.config import UniEmoConfig, load_config
from uniemo.errors import UniEmoError
from uniemo.fusion import (CorrelationTable, UniEmoFusion, add_placeholder, check_word, condition_prompt,
                           match_alpha, tokenize)
from uniemo.io import load_state_dict_checked, load_tensors, read_json
from uniemo.joint import EmotionSpace

STAGE2_FILES = ("config.yaml", "fusion.safetensors", "alpha_table.json", "emotion_space.safetensors")
MAX_IMAGES_PER_EMOTION = 100_000  # per command call: its to-do list stays small in memory


@dataclass
class UniEmoPipelineOutput:
    images: list  # PIL images
    metadata: list[dict[str, Any]]  # one per image: seed, emotion / mix, object, α, matched attributes, ...


def parse_mix(text: str, class_names: tuple[str, ...]) -> dict[str, float]:
    """``"awe=0.7,fear=0.3"`` -> {"awe": 0.7, "fear": 0.3}; malformed text is a one-line error."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not name or weight is None:
            raise UniEmoError(f"malformed --mix {text!r}: write NAME=WEIGHT pairs separated by commas, "
                              f"e.g. awe=0.7,fear=0.3 (emotions: {', '.join(class_names)})")
        if name in weights:
            raise UniEmoError(f"--mix names {name!r} twice: give each emotion once")
        weights[name] = weight
    return weights


def normalise_weights(mix: dict[str, float], class_names: tuple[str, ...]) -> dict[str, float]:
    """Check names and weights (finite, ≥ 0, not all zero); return weights summing to 1."""
    if not isinstance(mix, dict) or not mix:
        raise UniEmoError("mix must be a non-empty mapping emotion -> weight, e.g. {'awe': 0.7, 'fear': 0.3}")
    clean = {}
    for name, weight in mix.items():
        key = emotion_key(name, class_names)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise UniEmoError(f"weight {weight!r} for {key!r} is invalid: weights must be finite and >= 0")
        clean[key] = float(weight)
    total = sum(clean.values())
    if not math.isfinite(total):
        raise UniEmoError(f"mix weights {mix} are too large to add up: use weights like awe=0.7,fear=0.3")
    if total <= 0:
        raise UniEmoError("all mix weights are zero: give at least one emotion a positive weight")
    return {k: w / total for k, w in clean.items() if w > 0}


def emotion_key(name: Any, class_names: tuple[str, ...]) -> str:
    key = str(name).strip().lower()
    if key not in class_names:
        raise UniEmoError(f"unknown emotion {name!r}: choose one of {', '.join(class_names)}")
    return key


class UniEmoPipeline:
    """Understanding-guided emotional generation with a frozen Stable Diffusion pipeline."""

    def __init__(self, understanding, fusion: UniEmoFusion, table: CorrelationTable, space: EmotionSpace,
                 scene_bank, object_bank, sd_pipe, cfg: UniEmoConfig, transform=None):
        self.understanding, self.fusion = understanding.eval(), fusion.eval()
        self.transform = transform  # the understanding branch's image preprocessing (``read``)
        self._img2img = None  # built on first use by ``edit``
        self.table, self.space, self.cfg = table, space, cfg
        self.scene_bank, self.object_bank = scene_bank, object_bank
        self.sd = sd_pipe
        self.placeholder_id = add_placeholder(sd_pipe.tokenizer, cfg.fusion.placeholder)
        self.class_names = tuple(understanding.class_names)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, sd_path: str | Path | None = None, dtype=None,
                        scheduler: str | None = None) -> "UniEmoPipeline":
        """Load a stage-2 run (``uniemo train joint``) and the Stable Diffusion it was trained with,
        its denoising modules in ``dtype`` (default float32) and sampling with ``scheduler`` (a
        diffusers scheduler class name; default the SD's own)."""
        from uniemo.data import clip_transforms
        from uniemo.loading import load_sd
        from uniemo.understanding import UniEmoUnderstanding, load_attributes, load_image_processor

        run_dir = Path(run_dir)
        missing = [f for f in STAGE2_FILES if not (run_dir / f).is_file()]
        if not run_dir.is_dir() or missing:
            raise UniEmoError(f"{run_dir} is not a stage-2 run (missing {', '.join(missing) or 'directory'}): "
                              "make one with `uniemo train joint`")
        cfg = load_config(run_dir / "config.yaml")
        sd_path = sd_path or cfg.sd_path
        if sd_path is None:
            raise UniEmoError(f"{run_dir}/config.yaml records no sd_path: pass the Stable Diffusion directory")
        understanding = UniEmoUnderstanding.from_pretrained(run_dir)
        scene_bank, object_bank = load_attributes(run_dir)
        table = CorrelationTable.from_json(read_json(run_dir / "alpha_table.json", "alpha table"),
                                           run_dir / "alpha_table.json")
        space = EmotionSpace.load(run_dir / "emotion_space.safetensors")
        sd = load_sd(sd_path, dtype=dtype)
        fusion = UniEmoFusion.for_models(cfg.fusion, understanding, sd.text_encoder)
        load_state_dict_checked(fusion, load_tensors(run_dir / "fusion.safetensors", "fusion weights"),
                                run_dir / "fusion.safetensors")
        if dtype is not None:
            fusion.to(dtype)
        pipe = cls(understanding, fusion, table, space, scene_bank, object_bank, sd, cfg,
                   clip_transforms(load_image_processor(run_dir), train=False))
        if scheduler is not None:
            pipe.scheduler = scheduler_named(scheduler, sd.scheduler.config)
        return pipe

    def to(self, device) -> "UniEmoPipeline":
        self.understanding.to(device)
        self.fusion.to(device)
        self.sd.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.sd.unet.device

    @property
    def scheduler(self):
        """The sampler, swapped the diffusers way:
        ``pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)``."""
        return self.sd.scheduler

    @scheduler.setter
    def scheduler(self, scheduler) -> None:
        self.sd.scheduler = scheduler

    def prompt(self, object: str | None = None) -> str:
        """"<emo>" or, for emotion transfer, "<emo> <object>"."""
        if object is None:
            return self.cfg.fusion.placeholder
        check_word(self.sd.tokenizer, object, self.placeholder_id)
        return f"{self.cfg.fusion.placeholder} {object.strip()}"

    @torch.no_grad()
    def conditions(self, weights: dict[str, float], seeds: list[int], object_named: bool = False):
        """Fused conditions e (B,W) for one seed each, the generators (positioned after the feature
        draws, ready for the latents) and each image's α / matched attributes per emotion. With
        ``object_named`` (emotion transfer) e leaves out the object term, as in stage 2."""
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        noise = [self.space.draw(g) for g in generators]
        e = 0
        infos = [{"alpha": {}, "matched": {}} for _ in seeds]
        named = torch.full((len(seeds),), object_named)
        for name, weight in weights.items():
            k = self.class_names.index(name)
            samples = [self.space.at(k, z) for z in noise]
            feats = {f: torch.stack([s[f] for s in samples]).to(self.device, self.fusion.cond_proj.weight.dtype)
                     for f in self.fusion.cfg.features}
            alphas = self._alphas(feats, k, infos, name)
            e = e + weight * self.fusion(feats, alphas, named)
        return e, generators, infos

    def _alphas(self, feats, emotion: int, infos, name: str) -> dict[str, torch.Tensor]:
        alphas = {}
        for kind, bank in (("scene", self.scene_bank), ("object", self.object_bank)):
            if kind not in feats or not len(bank.names):
                continue
            proj = getattr(self.understanding, f"{kind}_proj")
            embed = proj(feats[kind].to(proj.weight.dtype))
            target = torch.full((len(infos),), emotion, dtype=torch.long)
            alphas[kind], best = match_alpha(embed, bank.embeds, self.table.rows(kind)[1], target)
            for info, a, b in zip(infos, alphas[kind].tolist(), best.tolist()):
                info["alpha"].setdefault(kind, {})[name] = round(a, 6) if self.fusion.cfg.use_alpha else None
                info["matched"].setdefault(kind, {})[name] = bank.names[b]
        return alphas

    @torch.no_grad()
    def __call__(self, emotion: str | None = None, object: str | None = None, mix: dict[str, float] | None = None,
                 num_images: int = 4, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: int | torch.Generator | None = None, batch_size: int | None = None,
                 height: int | None = None, width: int | None = None) -> UniEmoPipelineOutput:
        """Generate ``num_images`` images for ``emotion`` (a name) or ``mix`` ({name: weight}).
        ``generator``: an int seed, a ``torch.Generator`` (a base seed is drawn from it) or None
        (a random base seed, recorded in the metadata)."""
        weights, steps, guidance = self._request(emotion, mix, num_inference_steps, guidance_scale)
        batch = num_images if batch_size is None else batch_size
        check_positive(num_images=num_images, batch_size=batch)
        size = self.cfg.generation.resolution
        height, width = height or size, width or size
        base = base_seed(generator)
        prompt = self.prompt(object)
        images, metadata = [], []
        for start in range(0, num_images, batch):
            seeds = [base + i for i in range(start, min(start + batch, num_images))]
            e, generators, infos = self.conditions(weights, seeds, object is not None)
            out = self.sd(**self._embeds(prompt, e), num_inference_steps=steps, guidance_scale=guidance,
                          generator=generators, height=height, width=width, output_type="pil")
            images += out.images
            metadata += [self._metadata(seed, weights, emotion, object, prompt, steps, guidance, info)
                         for seed, info in zip(seeds, infos)]
        return UniEmoPipelineOutput(images, metadata)

    @torch.no_grad()
    def edit(self, image, emotion: str | None = None, mix: dict[str, float] | None = None, strength: float = 0.6,
             num_images: int = 1, num_inference_steps: int | None = None, guidance_scale: float | None = None,
             generator: int | torch.Generator | None = None) -> UniEmoPipelineOutput:
        """Emotion editing (SPEC §4; SDEdit, Meng et al. 2022): ``image`` (a PIL image, or a list
        of them that fit to one size, edited as one batch) is fitted to the run's resolution,
        encoded by the VAE, noised to ``strength`` of the schedule and denoised with the fused
        condition e at the placeholder, by diffusers' img2img pipeline. Result i of every image
        uses seed s + i, as in generation; outputs are image-major, and their metadata adds the
        strength."""
        weights, steps, guidance = self._request(emotion, mix, num_inference_steps, guidance_scale)
        check_positive(num_images=num_images)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise UniEmoError(f"strength={strength!r} is out of range: use a number in (0, 1], e.g. 0.6")
        if int(steps * strength) < 1:
            raise UniEmoError(f"strength {strength} of {steps} steps denoises no step: raise the strength or the steps")
        sources = [self.fit(im) for im in (image if isinstance(image, (list, tuple)) else [image])]
        if len({s.size for s in sources}) > 1:
            raise UniEmoError("images edited in one call must fit to one size: edit images of other shapes apart")
        base = base_seed(generator)
        seeds = [base + i for _ in sources for i in range(num_images)]
        e, generators, infos = self.conditions(weights, seeds)
        prompt = self.prompt()
        out = self.img2img(image=[s for s in sources for _ in range(num_images)], **self._embeds(prompt, e),
                           strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                           generator=generators, output_type="pil")
        metadata = [{**self._metadata(seed, weights, emotion, None, prompt, steps, guidance, info), "strength": strength}
                    for seed, info in zip(seeds, infos)]
        return UniEmoPipelineOutput(out.images, metadata)

    @property
    def img2img(self):
        """diffusers' ``StableDiffusionImg2ImgPipeline`` on this pipeline's components (shared, not copied)."""
        from diffusers import StableDiffusionImg2ImgPipeline

        if self._img2img is None:
            self._img2img = StableDiffusionImg2ImgPipeline.from_pipe(self.sd)
        self._img2img.scheduler = self.sd.scheduler  # a swapped sampler serves editing too
        return self._img2img

    def fit(self, image):
        """``image`` as RGB, scaled so that its short side is the run's resolution (by default the
        UNet's), each side a multiple of the VAE's downsampling factor (centre-cropped to it)."""
        from PIL import Image, ImageOps

        image = image.convert("RGB")
        factor = self.sd.vae_scale_factor
        size = self.cfg.generation.resolution or self.sd.unet.config.sample_size * factor
        scale = size / min(image.size)
        shape = tuple(max(factor, int(round(side * scale)) // factor * factor) for side in image.size)
        return ImageOps.fit(image, shape, method=Image.Resampling.BICUBIC)

    @torch.no_grad()
    def read(self, images: list) -> torch.Tensor:
        """The understanding branch's emotion probabilities (N, classes) of PIL images."""
        pixels = torch.stack([self.transform(image.convert("RGB")) for image in images]).to(self.device)
        return self.understanding(pixels).logits.float().softmax(-1).cpu()

    def _request(self, emotion, mix, steps, guidance) -> tuple[dict[str, float], int, float]:
        """(normalised weights, denoising steps, guidance) of a call, the run's defaults filled in."""
        if (emotion is None) == (mix is None):
            raise UniEmoError("give exactly one of emotion (a name) or mix (a mapping name -> weight)")
        weights = {emotion_key(emotion, self.class_names): 1.0} if emotion is not None else \
            normalise_weights(mix, self.class_names)
        steps = steps or self.cfg.generation.num_inference_steps
        guidance = self.cfg.generation.guidance_scale if guidance is None else guidance
        check_positive(num_inference_steps=steps)
        if not math.isfinite(guidance) or guidance < 0:
            raise UniEmoError(f"guidance_scale={guidance!r} is invalid: use a finite number >= 0 (e.g. 7.5)")
        return weights, steps, guidance

    def _embeds(self, prompt: str, e: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prompt's embeddings with e at the placeholder, and the empty prompt's (guidance)."""
        encoder = self.sd.text_encoder
        ids = tokenize(self.sd.tokenizer, [prompt]).to(self.device)
        negative = encoder(tokenize(self.sd.tokenizer, [""]).to(self.device))[0]
        return {"prompt_embeds": condition_prompt(encoder, ids, self.placeholder_id, e.to(encoder.dtype)),
                "negative_prompt_embeds": negative.expand(len(e), -1, -1)}

    def _metadata(self, seed, weights, emotion, object, prompt, steps, guidance, info) -> dict[str, Any]:
        def per_emotion(values: dict | None):
            if values is None:
                return None
            return values[next(iter(weights))] if emotion is not None else values

        return {"seed": seed, "emotion": None if emotion is None else next(iter(weights)),
                "mix": None if emotion is not None else {k: round(w, 6) for k, w in weights.items()},
                "object": object, "alpha_scene": per_emotion(info["alpha"].get("scene")),
                "alpha_object": per_emotion(info["alpha"].get("object")),
                "matched_scene": per_emotion(info["matched"].get("scene")),
                "matched_object": per_emotion(info["matched"].get("object")),
                "prompt": prompt, "steps": steps, "guidance": guidance,
                "scheduler": type(self.sd.scheduler).__name__, "dtype": str(self.sd.unet.dtype).removeprefix("torch.")}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def scheduler_named(name: str, config):
    """A diffusers scheduler of class ``name`` (e.g. "UniPCMultistepScheduler") made from the
    noise schedule ``config`` of the one it replaces."""
    import diffusers

    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UniEmoError(f"unknown scheduler {name!r}: use a diffusers scheduler class name, e.g. "
                          "UniPCMultistepScheduler, DPMSolverMultistepScheduler or DDIMScheduler")
    return cls.from_config(config)


def base_seed(generator: int | torch.Generator | None) -> int:
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    if generator is None:
        return random.SystemRandom().randrange(2**31 - 1)
    if isinstance(generator, bool) or not isinstance(generator, int) or generator < 0:
        raise UniEmoError(f"seed {generator!r} is invalid: use a non-negative integer")
    return generator


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UniEmoError(f"{name}={value!r} is invalid: use a positive integer")
