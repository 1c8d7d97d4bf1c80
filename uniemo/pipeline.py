"""``UniEmoPipeline``: emotional image generation from a stage-2 run, diffusers style (paper
§III-B, SPEC §4).

For every image: sample CLS / scene / object features from the emotion space N(mean, std) of
the requested emotion, pick α from the nearest scene / object attribute, fuse them into e,
inject e at the placeholder token, and let Stable Diffusion's own denoising loop (1.5 or XL)
run on the prompt embeddings with classifier-free guidance against the empty prompt (zeros for
an SD XL whose config asks for them, as diffusers does). A mix of emotions (paper Fig. 10b)
fuses e = Σ_k w_k e_k with normalised non-negative weights, rescaled to the token norm as each
e_k is. ``edit`` turns a given photo toward an emotion (SDEdit with the same condition, or from
the photo's DDIM inversion under the condition the understanding branch reads in it), and
``read`` gives the understanding branch's reading of any image.

Seeds: image i of a call with seed s uses seed s + i for both its feature sample and its
initial latents, so any image is reproduced alone from the seed in its metadata.

    pipe = UniEmoPipeline.from_pretrained("runs/stage2", dtype=torch.float16).to("cuda")
    out = pipe(emotion="awe", object="bench", num_images=4, generator=0)
    out.images[0].save("awe.png"); out.metadata[0]["alpha_scene"]
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from uniemo.config import UniEmoConfig, load_config
from uniemo.errors import UniEmoError
from uniemo.fusion import CorrelationTable, PromptEncoder, UniEmoFusion, transfer_prompt
from uniemo.io import load_state_dict_checked, load_tensors, read_json
from uniemo.joint import EmotionSpace, attribute_alphas, fused_condition
from uniemo.loading import SD_PARTS
from uniemo.rundir import STAGE2, RunDir

COMPONENTS = SD_PARTS["sdxl"]  # the SD components of either layout (SD 1.5's are a subset)
DENOISERS = {"sd15": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),  # text-to-image, image-to-image
             "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")}
MAX_IMAGES_PER_EMOTION = 100_000  # per command call: its to-do list stays small in memory
CANDIDATE_STRIDE = MAX_IMAGES_PER_EMOTION  # draw c of seed s uses s + c·stride, no other image's seed in its call


@dataclass
class UniEmoPipelineOutput:
    images: list  # PIL images
    metadata: list[dict[str, Any]]  # one per image: seed, emotion / mix, object, α, matched attributes, ...


STRENGTH_STEP = 0.1  # edit(until_target=True): how much stronger the next attempt is


def as_rgb(image):
    """A PIL image, or the path of an image file, as 8-bit RGB, as the datasets read images
    (``data.to_rgb``: 16-bit scaled, transparency over white); anything else is a one-line error."""
    import os

    from PIL import Image

    from uniemo.data import read_image, to_rgb

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if not isinstance(image, Image.Image):
        raise UniEmoError(f"an image must be a PIL image or an image file's path, not {type(image).__name__}: "
                          "e.g. PIL.Image.open(path)")
    return to_rgb(image)


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


@dataclass
class Stage2Contents:
    """What a stage-2 run holds besides models: its config, the α table P, the emotion space,
    the attribute banks and the understanding branch's image transform (for ``read``)."""

    cfg: UniEmoConfig
    table: CorrelationTable
    space: EmotionSpace
    scene_bank: Any
    object_bank: Any
    transform: Any = None


class UniEmoPipeline(DiffusionPipeline):
    """Understanding-guided emotional generation with a frozen Stable Diffusion 1.5 or XL.

    A diffusers ``DiffusionPipeline``: the SD's components and the run's understanding branch
    and mappers are registered, so ``.to()``, ``enable_model_cpu_offload()``,
    ``set_progress_bar_config`` and scheduler swaps work as on any diffusers pipeline. The
    denoising loop is diffusers' own SD (XL) pipeline, built on these components for each call."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]
    # the understanding branch and the mappers are called through their submodules: they stay on the device
    _exclude_from_cpu_offload = ["understanding", "fusion"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, understanding, fusion: UniEmoFusion,
                 text_encoder_2=None, tokenizer_2=None, contents: Stage2Contents | None = None,
                 force_zeros_for_empty_prompt: bool = False):
        super().__init__()
        if contents is None:
            raise UniEmoError("UniEmoPipeline needs a stage-2 run: load one with UniEmoPipeline.from_pretrained(RUN)")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              understanding=understanding.eval(), fusion=fusion.eval(), text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.cfg, self.table, self.space = contents.cfg, contents.table, contents.space
        self.scene_bank, self.object_bank, self.transform = contents.scene_bank, contents.object_bank, contents.transform
        self.prompts = PromptEncoder.of(self, contents.cfg.fusion.placeholder)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.class_names = tuple(understanding.class_names)
        self.progress_bar_settings: dict = {}

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, sd_path: str | Path | None = None, dtype=None,
                        scheduler: str | None = None) -> "UniEmoPipeline":
        """Load a stage-2 run (``uniemo train joint``) and the Stable Diffusion (1.5 or XL) it was
        trained with (``sd_path``, default the directory the run recorded), the SD's modules and
        the mappers in ``dtype`` (default float32), sampling with ``scheduler`` (a diffusers
        scheduler class name; default the SD's own)."""
        from uniemo.data import clip_transforms
        from uniemo.loading import SD_NAMES, load_sd, sd_layout
        from uniemo.understanding import UniEmoUnderstanding, load_attributes, load_image_processor

        run = RunDir(run_dir)
        missing = run.missing(STAGE2)
        if not run.root.is_dir() or missing:
            raise UniEmoError(f"{run_dir} is not a stage-2 run (missing {', '.join(missing) or 'directory'}): "
                              "make one with `uniemo train joint`")
        cfg = load_config(run.config)
        sd_path = run_sd_path(run, cfg, sd_path)
        sd = load_sd(sd_path, dtype=dtype)
        if cfg.sd_layout is not None and sd_layout(sd) != cfg.sd_layout:
            raise UniEmoError(f"{run_dir} was trained with {SD_NAMES.get(cfg.sd_layout, cfg.sd_layout)} but {sd_path} holds "
                              f"{SD_NAMES[sd_layout(sd)]}: pass the Stable Diffusion directory the run was trained with")
        understanding = UniEmoUnderstanding.from_pretrained(run_dir)
        fusion = UniEmoFusion.for_models(cfg.fusion, understanding, PromptEncoder.of(sd, cfg.fusion.placeholder))
        load_state_dict_checked(fusion, load_tensors(run.fusion, "fusion weights"), run.fusion)
        if dtype is not None:
            fusion.to(dtype)
        table = CorrelationTable.from_json(read_json(run.alpha_table, "alpha table"), run.alpha_table)
        contents = Stage2Contents(cfg, table, EmotionSpace.load(run.emotion_space),
                                  *load_attributes(run_dir), clip_transforms(load_image_processor(run_dir), train=False))
        pipe = cls.from_parts(sd, understanding, fusion, contents)
        if scheduler is not None:
            pipe.scheduler = scheduler_named(scheduler, sd.scheduler.config)
        return pipe

    @classmethod
    def from_parts(cls, sd_pipe, understanding, fusion: UniEmoFusion, contents: Stage2Contents) -> "UniEmoPipeline":
        """A pipeline on a loaded diffusers SD (XL) pipeline's components (shared, not copied)."""
        parts = {name: module for name, module in sd_pipe.components.items() if name in COMPONENTS}
        return cls(**parts, understanding=understanding, fusion=fusion, contents=contents,
                   force_zeros_for_empty_prompt=bool(sd_pipe.config.get("force_zeros_for_empty_prompt", False)))

    @property
    def layout(self) -> str:
        """"sd15" or "sdxl": which Stable Diffusion this pipeline runs."""
        return "sd15" if self.text_encoder_2 is None else "sdxl"

    def denoiser(self, img2img: bool = False, invert: bool = False):
        """diffusers' own SD (XL) text-to-image or image-to-image pipeline or, with ``invert`` (SD
        1.5), its DiffEdit pipeline sampling with DDIM and DDIM's inverse, on this pipeline's
        current components (shared, not copied), with its progress-bar settings."""
        import diffusers

        parts = {name: getattr(self, name) for name in COMPONENTS if getattr(self, name) is not None}
        if invert:
            cls = diffusers.StableDiffusionDiffEditPipeline
            parts.update(scheduler=diffusers.DDIMScheduler.from_config(self.scheduler.config),
                         inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(self.scheduler.config))
        else:
            cls = getattr(diffusers, DENOISERS[self.layout][img2img])
        if self.layout == "sdxl":
            extra = {"force_zeros_for_empty_prompt": self.config.force_zeros_for_empty_prompt, "add_watermarker": False}
        else:
            extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        pipe = cls(**parts, **extra)
        pipe.set_progress_bar_config(**self.progress_bar_settings)
        return pipe

    def set_progress_bar_config(self, **kwargs) -> None:
        """As diffusers' (e.g. ``disable=True``), for the denoising loop of every later call."""
        super().set_progress_bar_config(**kwargs)
        self.progress_bar_settings = dict(kwargs)

    def prompt(self, object: str | None = None) -> str:
        """"<emo>" or, for emotion transfer, ``fusion.transfer_prompt`` with the object ("<emo> a house")."""
        if object is None:
            return self.cfg.fusion.placeholder
        self.prompts.check_word(object)
        return transfer_prompt(self.cfg.fusion.transfer_prompt, self.cfg.fusion.placeholder, object.strip())

    def conditions(self, weights: dict[str, float], seeds: list[int], object_named: bool | list[bool] = False):
        """Fused conditions e (B,W) for one seed each, the generators (positioned after the feature
        draws, ready for the latents) and each image's α / matched attributes per emotion. Where
        ``object_named`` (emotion transfer; one for all, or one per seed) e leaves out the object
        term, as in stage 2. A mix Σ_k w_k e_k is brought back to the token norm that each e_k has.
        Each draw z is scaled by the run's ``generation.truncation`` (1: N(mean, std))."""
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        scale = self.cfg.generation.truncation
        with torch.no_grad():  # not a decorator: mutmut skips decorated functions
            noise = [{f: z * scale for f, z in self.space.draw(g).items()} for g in generators]
            e = 0
            infos = [{"alpha": {}, "matched": {}} for _ in seeds]
            named = torch.tensor(object_named if isinstance(object_named, list) else [object_named] * len(seeds))
            for name, weight in weights.items():
                k = self.class_names.index(name)
                samples = [self.space.at(k, z) for z in noise]
                feats = {f: torch.stack([s[f] for s in samples]).to(self.fusion.device, self.fusion.dtype)
                         for f in self.fusion.cfg.features}
                alphas = self._alphas(feats, k, infos, name)
                e = e + weight * self.fusion(feats, alphas, named)
        # one emotion's e is at the token norm already; rescaling it again would move its last bits
        return (self.fusion.at_token_norm(e) if len(weights) > 1 else e), generators, infos

    def _alphas(self, feats, emotion: int, infos, name: str) -> dict[str, torch.Tensor]:
        """α of sampled features at ``emotion``; each image's α and matched attributes go to ``infos``."""
        banks = {"scene": self.scene_bank, "object": self.object_bank}
        projections = {kind: getattr(self.understanding, f"{kind}_proj") for kind in banks if kind in feats}
        embeds = {kind: proj(feats[kind].to(proj.weight.dtype)) for kind, proj in projections.items()}
        target = torch.full((len(infos),), emotion, dtype=torch.long)
        alphas, best = attribute_alphas(self.fusion, embeds, target, banks, self.table)
        for kind, matched in best.items():
            for info, a, b in zip(infos, alphas[kind].tolist(), matched.tolist()):
                info["alpha"].setdefault(kind, {})[name] = round(a, 6) if self.fusion.cfg.use_alpha else None
                info["matched"].setdefault(kind, {})[name] = banks[kind].names[b]
        return alphas

    @torch.no_grad()
    def __call__(self, emotion: str | None = None, object: str | None = None, mix: dict[str, float] | None = None,
                 num_images: int = 4, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 generator: int | torch.Generator | None = None, batch_size: int | None = None,
                 height: int | None = None, width: int | None = None, candidates: int = 1) -> UniEmoPipelineOutput:
        """Generate ``num_images`` images for ``emotion`` (a name) or ``mix`` ({name: weight}).
        ``generator``: an int seed, a ``torch.Generator`` (a base seed is drawn from it) or None
        (a random base seed, recorded in the metadata).

        ``candidates`` > 1: each image is the best of that many draws as the understanding branch
        reads them (:meth:`reading_score`): generation guided by understanding. Draw c of the
        image with seed s uses seed s + c·CANDIDATE_STRIDE (draw 0 is the image ``candidates=1``
        gives); the metadata records ``candidates`` and the ``candidate`` kept."""
        weights, steps, guidance = self._request(emotion, mix, num_inference_steps, guidance_scale)
        batch = num_images if batch_size is None else batch_size
        check_positive(num_images=num_images, batch_size=batch, candidates=candidates)
        size = self.cfg.generation.resolution
        height, width = height or size, width or size
        base = base_seed(generator)
        prompt = self.prompt(object)
        denoiser = self.denoiser()

        def draw(seeds: list[int]) -> tuple[list, list]:
            e, generators, infos = self.conditions(weights, seeds, object is not None)
            out = denoiser(**self._embeds(prompt, e), num_inference_steps=steps, guidance_scale=guidance,
                           generator=generators, height=height, width=width, output_type="pil")
            return out.images, infos

        images, metadata = [], []
        for start in range(0, num_images, batch):
            seeds = [base + i for i in range(start, min(start + batch, num_images))]
            kept, infos = draw(seeds)
            chosen = [0] * len(seeds)
            if candidates > 1:
                scores = self.reading_score(kept, weights, object)
                for c in range(1, candidates):
                    more, more_infos = draw([s + c * CANDIDATE_STRIDE for s in seeds])
                    for k, score in enumerate(self.reading_score(more, weights, object)):
                        if score > scores[k]:
                            kept[k], infos[k], scores[k], chosen[k] = more[k], more_infos[k], score, c
            images += kept
            metadata += [{**self._metadata(seed, weights, emotion, object, prompt, steps, guidance, info),
                          "candidates": candidates, "candidate": c} for seed, info, c in zip(seeds, infos, chosen)]
        self.maybe_free_model_hooks()
        return UniEmoPipelineOutput(images, metadata)

    def reading_score(self, images: list, weights: dict[str, float], object: str | None = None) -> torch.Tensor:
        """How near the understanding branch's reading of each image is to a request (N,): Σ_k w_k
        log p_k over the requested emotions (the negated cross-entropy of the weights with its
        emotion probabilities) plus, when ``object`` is one of the run's object names, log p of it
        from the object expert's projection against the object bank at eq. 4's temperature (a
        run without queries projects nothing, so only its emotions count)."""
        out = self._understand(images)
        log_p = out.logits.float().log_softmax(-1).cpu()
        score = sum(w * log_p[:, self.class_names.index(name)] for name, w in weights.items())
        row = int(self.object_bank.index([object])[0]) if object is not None else -1
        if row >= 0:
            sims = out.object_embed.float().cpu() @ self.object_bank.embeds.float().T / self.understanding.cfg.temperature
            score = score + sims.log_softmax(-1)[:, row]
        return score

    @torch.no_grad()
    def edit(self, image, emotion: str | None = None, mix: dict[str, float] | None = None, strength: float = 0.6,
             num_images: int = 1, num_inference_steps: int | None = None, guidance_scale: float | None = None,
             generator: int | torch.Generator | None = None,
             object: str | Sequence[str] | None = None, invert: bool = False,
             keep_region: float | None = None, until_target: bool = False) -> UniEmoPipelineOutput:
        """Emotion editing (SPEC §4; SDEdit, Meng et al. 2022): ``image`` (a PIL image or an image
        file's path, or a list of them that fit to one size, edited as one batch) is fitted to the
        run's resolution, encoded by the VAE, noised to ``strength`` of the schedule and denoised
        with the fused condition e at the placeholder, by diffusers' img2img pipeline. ``object``
        (a word, or one per image, e.g. from :meth:`read_objects`) keeps what the photo shows: the
        prompt is the transfer prompt ("<emo> a house") and e leaves out the object term, as in
        emotion transfer. Result i of every image uses seed s + i, as in generation; outputs are
        image-major, and their metadata adds the strength and ``invert``.

        ``invert`` (SD 1.5): instead of random noise, the photo is DDIM-inverted to ``strength``
        under its own condition, the e (eq. 6) the understanding branch builds from it at the
        emotion it reads there, and denoised from that latent with the target's e (diffusers'
        DiffEdit pipeline, its mask the whole image). The noise then holds the photo's layout, so
        more of it stays at the same strength (docs/BENCHMARKS.md); sampling is DDIM's.

        ``keep_region`` (with ``invert``): DiffEdit's mask keeps, following the inversion, where
        the understanding branch's object queries look in the photo (their attention map, as a
        share of its maximum, at least ``keep_region``: see :meth:`redrawn_region`) and redraws
        the rest: more objects kept, fewer emotions read (docs/BENCHMARKS.md, session 24).

        ``until_target``: a result the understanding branch does not read as the target (for a
        mix: as one of its emotions) is edited again, STRENGTH_STEP stronger, up to 1.0; its
        metadata records the strength that made it and whether it ``reached`` the target."""
        weights, steps, guidance = self._request(emotion, mix, num_inference_steps, guidance_scale)
        check_positive(num_images=num_images)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise UniEmoError(f"strength={strength!r} is out of range: use a number in (0, 1], e.g. 0.6")
        if keep_region is not None and not invert:
            raise UniEmoError("keep_region needs invert: the kept region follows the photo's inversion")
        if keep_region is not None and (isinstance(keep_region, bool) or not isinstance(keep_region, (int, float))
                                        or not 0 < keep_region <= 1):
            raise UniEmoError(f"keep_region={keep_region!r} is out of range: use a share of the object queries' "
                              "attention maximum in (0, 1], e.g. 0.3")
        if invert and self.layout == "sdxl":
            raise UniEmoError("inverted edits need Stable Diffusion 1.5 (diffusers' DiffEdit has no SD XL version): "
                              "edit this run without invert")
        if int(steps * strength) < 1:
            raise UniEmoError(f"strength {strength} of {steps} steps denoises no step: raise the strength or the steps")
        sources = [self.fit(im) for im in (image if isinstance(image, (list, tuple)) else [image])]
        if len({s.size for s in sources}) > 1:
            raise UniEmoError("images edited in one call must fit to one size: edit images of other shapes apart")
        objects = [object] * len(sources) if object is None or isinstance(object, str) else list(object)
        if len(objects) != len(sources):
            raise UniEmoError(f"{len(objects)} objects for {len(sources)} images: give one object, or one per image")
        request = dict(weights=weights, emotion=emotion, steps=steps, guidance=guidance, invert=invert,
                       keep_region=keep_region)
        base = base_seed(generator)
        out = self._edit(sources, objects, num_images, base, strength, **request)
        if until_target:
            self._until_target(out, sources, objects, num_images, base, strength, request)
        self.maybe_free_model_hooks()
        return out

    def _until_target(self, out: UniEmoPipelineOutput, sources: list, objects: list, num_images: int, base: int,
                      strength: float, request: dict) -> None:
        """``edit(until_target=True)``: result k (source k // n, seed base + k % n) edited again at
        each next strength until it is read as the target; ``out`` is updated in place."""
        goal = self.target_classes(request["weights"])
        missed = [k for k, p in enumerate(self.read(out.images)) if int(p.argmax()) not in goal]
        while missed and strength < 1.0:
            strength = min(1.0, round(strength + STRENGTH_STEP, 6))
            for i in range(num_images):  # one call per seed, as a first attempt with one result per image
                rows = [k for k in missed if k % num_images == i]
                if rows:
                    redo = self._edit([sources[k // num_images] for k in rows], [objects[k // num_images] for k in rows],
                                      1, base + i, strength, **request)
                    for k, image, meta in zip(rows, redo.images, redo.metadata):
                        out.images[k], out.metadata[k] = image, meta
            missed = [k for k, p in zip(missed, self.read([out.images[k] for k in missed])) if int(p.argmax()) not in goal]
        for k, meta in enumerate(out.metadata):
            meta["reached"] = k not in missed

    def target_classes(self, weights: dict[str, float]) -> list[int]:
        """The class indices a result must be read as (its top-1) to count as the target: the
        emotions of ``weights`` (an emotion or a mix) with a positive weight."""
        return [self.class_names.index(name) for name, w in weights.items() if w > 0]

    def _edit(self, sources: list, objects: list, num_images: int, base: int, strength: float, *, weights, emotion,
              steps, guidance, invert, keep_region) -> UniEmoPipelineOutput:
        """One editing pass at ``strength``: ``num_images`` results per fitted source, seeds base + i."""
        results = [o for o in objects for _ in range(num_images)]  # one object per result, image-major
        seeds = [base + i for _ in sources for i in range(num_images)]
        e, generators, infos = self.conditions(weights, seeds, [o is not None for o in results])
        prompts = [self.prompt(o) for o in results]
        embeds = self._embeds(prompts, e)
        if invert:
            out, sampler = self._edit_inverted(sources, objects, num_images, embeds, strength, steps, guidance,
                                               generators, keep_region)
        else:
            out = self.denoiser(img2img=True)(
                image=[s for s in sources for _ in range(num_images)], **embeds, strength=strength,
                num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="pil")
            sampler = type(self.scheduler).__name__
        metadata = [{**self._metadata(seed, weights, emotion, o, prompt, steps, guidance, info), "strength": strength,
                     "invert": invert, "keep_region": keep_region, "scheduler": sampler}
                    for seed, o, prompt, info in zip(seeds, results, prompts, infos)]
        return UniEmoPipelineOutput(list(out.images), metadata)

    def _edit_inverted(self, sources: list, objects: list, num_images: int, embeds: dict, strength: float, steps: int,
                       guidance: float, generators: list, keep_region: float | None):
        """``edit(invert=True)``'s denoising: each source DDIM-inverted under its own condition
        (``objects``: one per source, named as in the edit's prompt), then denoised with ``embeds``
        (``num_images`` rows per source, image-major) where the mask says so (everywhere, or
        outside the object's region with ``keep_region``). Returns diffusers' output and the
        sampler's name."""
        editor = self.denoiser(invert=True)
        named = torch.tensor([o is not None for o in objects])
        own = self._embeds([self.prompt(o) for o in objects], self.own_conditions(sources, named))
        latents = editor.invert(image=sources, prompt_embeds=own["prompt_embeds"], guidance_scale=1.0,
                                negative_prompt_embeds=own["negative_prompt_embeds"], num_inference_steps=steps,
                                inpaint_strength=strength, generator=generators[::num_images]).latents
        size = latents.shape[-2:]
        mask = torch.ones(len(sources), 1, *size) if keep_region is None else self.redrawn_region(sources, keep_region, size)
        latents, mask = latents.repeat_interleave(num_images, dim=0), mask.repeat_interleave(num_images, dim=0)
        out = editor(mask_image=mask, image_latents=latents, **embeds,
                     inpaint_strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                     generator=generators, output_type="pil")
        return out, type(editor.scheduler).__name__

    @torch.no_grad()
    def own_conditions(self, images: list, object_named: torch.Tensor | None = None) -> torch.Tensor:
        """The fused condition e (eq. 6) of each PIL image at the emotion the understanding branch
        reads in it, built as stage 2 builds a training image's from its label."""
        out = self._understand(images)
        named = None if object_named is None else object_named.to(self.fusion.device)
        return fused_condition(self.fusion, out, out.logits.argmax(-1), self.scene_bank, self.object_bank, self.table,
                               named)[0]

    def fit(self, image):
        """``image`` (a PIL image or an image file's path) as RGB, scaled so that its short side is
        the run's resolution (by default the UNet's), each side a multiple of the VAE's
        downsampling factor (centre-cropped to it)."""
        from PIL import Image, ImageOps

        image = as_rgb(image)
        factor = self.vae_scale_factor
        size = self.cfg.generation.resolution or self.unet.config.sample_size * factor
        scale = size / min(image.size)
        shape = tuple(max(factor, int(round(side * scale)) // factor * factor) for side in image.size)
        return ImageOps.fit(image, shape, method=Image.Resampling.BICUBIC)

    def read(self, images: list) -> torch.Tensor:
        """The understanding branch's emotion probabilities (N, classes) of PIL images (or image files' paths)."""
        return self._understand(images).logits.float().softmax(-1).cpu()

    def read_objects(self, images: list) -> list[str]:
        """The object the understanding branch names in each PIL image: its object expert's
        projection matched against the object bank, as in training (eq. 4)."""
        if self.understanding.cfg.queries == "none" or not len(self.object_bank.names):
            raise UniEmoError("this run's understanding branch has no object expert (queries: none, or no object "
                              "names): name the object yourself (`uniemo edit --object`, `pipe.edit(object=...)`)")
        return [next(iter(best)) for best in self.object_bank.nearest(self._understand(images).object_embed)]

    @torch.no_grad()
    def _understand(self, images: list, output_attentions: bool = False):
        pixels = torch.stack([self.transform(as_rgb(image)) for image in images])
        return self.understanding(pixels.to(self.understanding.device, self.understanding.dtype), output_attentions)

    def redrawn_region(self, images: list, keep_region: float, size) -> torch.Tensor:
        """DiffEdit's mask (1: redrawn, 0: kept), (n, 1, *size): kept where the object queries'
        cross-attention over the photo's patches, as a share of its maximum, is at least
        ``keep_region`` (the map ``uniemo classify --explain`` draws), bilinearly resized to ``size``."""
        maps = self._understand(images, output_attentions=True).attentions
        if maps is None:
            raise UniEmoError("keep_region needs the object queries' attention, and this run's understanding has "
                              "no queries (queries: none): edit without it")
        share = maps["object"].float().cpu()
        share = share / share.flatten(1).amax(-1).clamp_min(1e-12).view(-1, 1, 1)
        share = torch.nn.functional.interpolate(share[:, None], size=tuple(size), mode="bilinear", align_corners=False)
        return (share < keep_region).float()

    def _request(self, emotion, mix, steps, guidance) -> tuple[dict[str, float], int, float]:
        """(normalised weights, denoising steps, guidance) of a call, the run's defaults filled in."""
        if (emotion is None) == (mix is None):
            raise UniEmoError("give exactly one of emotion (a name) or mix (a mapping name -> weight)")
        weights = {emotion_key(emotion, self.class_names): 1.0} if emotion is not None else \
            normalise_weights(mix, self.class_names)
        steps, guidance = with_defaults(self.cfg.generation, steps, guidance)
        check_positive(num_inference_steps=steps)
        if not math.isfinite(guidance) or guidance < 0:
            raise UniEmoError(f"guidance_scale={guidance!r} is invalid: use a finite number >= 0 (e.g. 7.5)")
        return weights, steps, guidance

    def _embeds(self, prompt: str | list[str], e: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prompt's (or one per row of e) embeddings with e at the placeholder, and the empty
        prompt's (guidance)."""
        positive = self.prompts(self.prompts.ids([prompt] if isinstance(prompt, str) else prompt), e)
        return {**positive, **self.prompts.negative(positive)}

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
                "prompt": prompt, **self.sampling_settings(steps, guidance)}

    def sampling_settings(self, steps: int | None = None, guidance: float | None = None) -> dict[str, Any]:
        """The sampling part of an image's metadata for ``steps`` and ``guidance`` (the run's
        defaults where None) and the truncation: a re-run that would sample otherwise can tell."""
        steps, guidance = with_defaults(self.cfg.generation, steps, guidance)
        return {"steps": steps, "guidance": guidance, "truncation": self.cfg.generation.truncation,
                "scheduler": type(self.scheduler).__name__, "dtype": dtype_name(self.unet.dtype)}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_sd_path(run: RunDir, cfg, sd_path: str | Path | None = None) -> str | Path:
    """The Stable Diffusion directory a stage-2 run samples with: ``sd_path`` if given, else the
    one its config ``cfg`` records, which must be a directory here."""
    if sd_path is None and (cfg.sd_path is None or not Path(cfg.sd_path).is_dir()):
        where = "no sd_path" if cfg.sd_path is None else f"sd_path {cfg.sd_path}, which is not a directory here"
        raise UniEmoError(f"{run.config} records {where}: pass the Stable Diffusion directory it was trained "
                          "with (--sd DIR; sd_path= in Python)")
    return sd_path or cfg.sd_path


def with_defaults(generation, steps: int | None, guidance: float | None) -> tuple[int, float]:
    """A call's denoising steps and guidance scale, the run's ``generation`` config where None."""
    return (generation.num_inference_steps if steps is None else steps,
            generation.guidance_scale if guidance is None else guidance)


def dtype_name(dtype: torch.dtype) -> str:
    """How metadata.jsonl names a dtype: "float32"."""
    return str(dtype).removeprefix("torch.")


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
