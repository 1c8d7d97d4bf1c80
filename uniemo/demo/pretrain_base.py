"""The embedded default's foundation models: a tiny CLIP and a tiny Stable-Diffusion-layout
pipeline trained from scratch on the synthetic world (``uniemo synth``), saved in the same
Hugging Face layouts as the real pretrained models, so every later step loads them through
:func:`uniemo.loading.load_clip` / :func:`uniemo.loading.load_sd` like real weights.

Recipe (one function per step):

1. Captions from style, scene and object only ("a bright colorful photo of a balloon in a
   candy store", "a balloon", "a dark muted photo"; never an emotion word) and a CLIP-format
   BPE tokenizer trained on them. The style words come from each image's EmoSet brightness and
   colorfulness annotations (measured on the pixels where a dataset has none), so any
   EmoSet-format dataset with scene or object annotations can be captioned.
2. CLIP: symmetric InfoNCE with a learnable logit scale. Captions that mention only a part of
   an image (its object, its scene) or repeat another image's caption are true matches, so
   the targets are multi-positive: caption ``j`` is a positive of image ``i`` when every
   attribute it names is the image's. With a dozen scenes in a batch of 128 the plain
   one-hot targets would push apart images and captions that match.
3. VAE (``AutoencoderKL``, 4x down-sampling, purely convolutional): MSE + L1 reconstruction of
   random crops (a quarter of the pixels of a full image per sample, the same per-pixel task)
   + a small KL term; then every training image and its mirror image is encoded once and
   ``scaling_factor`` set so latents have unit variance.
4. UNet (two resolutions, attention only at the lower one, and no middle block: with two
   levels SD's middle block repeats the lower one, and without it the same steps cost a
   quarter less and draw objects as well, docs/BENCHMARKS.md): epsilon
   prediction on the DDPM schedule of SD 1.5, conditioned on the frozen CLIP text tower's hidden
   states (encoded once per distinct caption), with the caption dropped to "" 10% of the time
   so classifier-free guidance works. Each sample's loss is weighted by min(SNR(t), γ)/SNR(t)
   (Min-SNR-γ, Hang et al. 2023, γ = 5), which stops the many easy low-noise steps from
   dominating: at the same cost, generated scenes and objects are recognised zero-shot at
   0.78-0.86 / 0.51-0.57 instead of 0.66 / 0.34 (docs/BENCHMARKS.md). A DDIM scheduler with
   the same betas is saved for inference.
5. The judge: a second CLIP, the same recipe trained three times as long from its own seed,
   which no model of UniEmo uses: it only measures generated images (the demo's object kept
   and Sem-C), as the paper's metric networks are not the generator's own.
6. Zero-shot check: scene and object accuracy of both CLIPs on held-out images (argmax cosine
   over "a photo of a <name>" for every name of the dataset's vocabulary) and on images the
   SD generates from held-out captions.

The CLIP and the VAE do not depend on each other, so they train side by side in two threads
(``workers``), each on its share of the cores; the judge waits in the pool's queue and takes
the first thread to come free (the CLIP's, at the default steps); then the two halves of
every UNet batch run in the two threads and their gradients add up. These models' ops are too
small to keep two cores busy alone, so this trains the same models in ~15% less time
(docs/BENCHMARKS.md).

Results are cached: ``OUT/pretrain_report.json`` stores a hash of the config and the data,
and a rerun with the same hash does nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from uniemo.demo.synth import world_of
from uniemo.errors import UniEmoError
from uniemo.io import partial_dir, write_json
from uniemo.joint import encode_posterior

REPORT = "pretrain_report.json"
MODELS = ("clip", "judge", "sd")  # OUT's directories
STEP_COUNTS = ("clip_steps", "judge_steps", "vae_steps", "unet_steps")
PAIR_TEMPLATES = ("a {st} photo of {o} in {s}", "a {st} picture of {o} in {s}")
SINGLE_TEMPLATES = ("a photo of {x}", "{x}")
STYLE_TEMPLATES = ("a {x} photo", "{x}")
ZERO_SHOT_TEMPLATE = "a photo of {x}"
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass
class PretrainConfig:
    """Sizes, step counts and learning rates of the tiny foundation models."""

    seed: int = 0
    image_size: int = 64
    vocab_size: int = 400
    max_length: int = 16  # tokens per caption, the tokenizer's model_max_length
    # CLIP
    clip_width: int = 64
    clip_layers: int = 6
    clip_text_layers: int = 3
    clip_heads: int = 4
    patch_size: int = 8
    clip_steps: int = 700
    clip_batch: int = 64
    clip_lr: float = 2e-3
    # The judge: a second CLIP of the same size, trained three times as long on its own seed. It
    # only measures (the demo's object kept, Sem-C): at 700 steps the CLIP names a real tree in
    # 0.30 of test images, at 2,100 in 0.96 (docs/BENCHMARKS.md).
    judge_steps: int = 2100
    # VAE
    vae_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_crop: int = 32  # side of the random crops the VAE trains on
    vae_lr: float = 3e-3
    kl_weight: float = 1e-6
    # UNet
    unet_channels: list[int] = field(default_factory=lambda: [32, 64])
    unet_attention: list[bool] = field(default_factory=lambda: [False, True])  # per level, high to low resolution
    unet_mid_block: bool = False  # SD's middle block; here it repeats the lowest level at ~35% more cost per step
    unet_steps: int = 1000
    unet_batch: int = 32
    unet_lr: float = 2e-3
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0  # Min-SNR-γ loss weighting; 0 = the plain mean
    # threads that train side by side: the CLIP beside the VAE, then the two halves of each UNet batch
    workers: int = 2
    # zero-shot check on generated images
    eval_images: int = 384
    eval_steps: int = 25
    guidance_scale: float = 5.0

    def scaled(self, factor: float) -> "PretrainConfig":
        """The same config with every step count multiplied by ``factor`` (at least 1 step)."""
        steps = {k: max(1, round(getattr(self, k) * factor)) for k in STEP_COUNTS}
        return dataclasses.replace(self, **steps)


# ----------------------------------------------------------------------------- data


@dataclass
class World:
    """One split of the dataset, decoded once: uint8 images and attribute indices (-1 = missing)."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    style: torch.Tensor  # (N,) long, index into synth.STYLES
    scene: torch.Tensor  # (N,) long
    object: torch.Tensor  # (N,) long
    scene_names: list[str]
    object_names: list[str]

    def subset(self, keep: torch.Tensor) -> "World":
        return World(self.images[keep], self.style[keep], self.scene[keep], self.object[keep],
                     self.scene_names, self.object_names)


def load_world(root: str | Path, split: str, image_size: int, scene_names=None, object_names=None) -> World:
    """Decode every image of ``split`` once into one uint8 tensor, with scene/object indices
    into the dataset's vocabularies (or the given names)."""
    import numpy as np
    from PIL import Image, ImageOps

    from uniemo.data import open_dataset
    ds = open_dataset(root, "emoset", split)
    scene_names = list(scene_names or _names(ds.scene_vocab, (it.scene for it in ds.items)))
    object_names = list(object_names or _names(ds.object_vocab, (it.object for it in ds.items)))
    images = torch.empty(len(ds), 3, image_size, image_size, dtype=torch.uint8)
    style, scene, obj = [], [], []
    for i in tqdm(range(len(ds)), desc=f"decode {split}", unit="img", leave=False):
        sample = ds[i]  # a PIL RGB image; an undecodable file is replaced by the next one
        image = sample["pixel_values"]
        if image.size != (image_size, image_size):
            image = ImageOps.fit(image, (image_size, image_size), Image.BICUBIC)  # centre crop + resize
        images[i] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        style.append(_style(ds.items[i].path, sample, image))
        scene.append(_index(scene_names, sample["scene"]))
        obj.append(_index(object_names, sample["object"]))
    return World(images, torch.tensor(style), torch.tensor(scene), torch.tensor(obj), scene_names, object_names)


def _style(path, sample: dict, image) -> int:
    """The style the annotation names, else the one read from its brightness and colorfulness
    (measured on the image where missing) and the image's warmth."""
    import numpy as np

    from uniemo.demo.synth import annotated_style, image_attributes, style_of

    named = annotated_style(path)
    if named is not None:
        return named
    levels = (sample["brightness"], sample["colorfulness"])
    x = np.asarray(image, dtype=np.float32)
    warmth = float((x[..., 0] - x[..., 2]).mean() / 255.0)
    return style_of(*(levels if None not in levels else image_attributes(image)), warmth)


def _names(vocab, seen) -> list[str]:
    names = list(vocab)
    names += sorted({n for n in seen if n is not None} - set(names))
    return names


def _index(names: list[str], name: str | None) -> int:
    return names.index(name) if name in names else -1


def data_hash(root: str | Path) -> str:
    """SHA-256 of info.json, the split files, and every annotation and image they list."""
    root = Path(root)
    h = hashlib.sha256()
    for name in ("info.json", "train.json", "val.json", "test.json"):
        file = root / name
        if not file.is_file():
            continue
        data = file.read_bytes()
        h.update(name.encode() + b"\0" + data)
        if name == "info.json":
            continue
        for entry in json.loads(data):
            for rel in entry[-2:]:  # image and annotation paths, in 3- and 4-field items
                path = root / rel
                h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>"))
    return h.hexdigest()


# ----------------------------------------------------------------------------- captions


def article(name: str) -> str:
    """'amusement park' -> 'an amusement park'."""
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


@dataclass
class Captions:
    """Every caption of the world, the style / scene / object index each names (-1 = not named),
    and lookup tables of caption rows: ``full[st, s, o, t]``, ``scenes[s, t]``, ``objects[o, t]``,
    ``styles[st, t]``."""

    texts: list[str]
    style: torch.Tensor
    scene: torch.Tensor
    object: torch.Tensor
    full: torch.Tensor
    scenes: torch.Tensor
    objects: torch.Tensor
    styles: torch.Tensor

    @classmethod
    def build(cls, scene_names: list[str], object_names: list[str]) -> "Captions":
        from uniemo.demo.synth import STYLES

        texts, named = [], []

        def add(text: str, st: int, s: int, o: int) -> int:
            texts.append(text)
            named.append((st, s, o))
            return len(texts) - 1

        full = [[[[add(t.format(st=style, o=article(on), s=article(sn)), st, s, o) for t in PAIR_TEMPLATES]
                  for o, on in enumerate(object_names)] for s, sn in enumerate(scene_names)]
                for st, style in enumerate(STYLES)]
        scenes = [[add(t.format(x=article(n)), -1, s, -1) for t in SINGLE_TEMPLATES] for s, n in enumerate(scene_names)]
        objects = [[add(t.format(x=article(n)), -1, -1, o) for t in SINGLE_TEMPLATES] for o, n in enumerate(object_names)]
        styles = [[add(t.format(x=n), st, -1, -1) for t in STYLE_TEMPLATES] for st, n in enumerate(STYLES)]
        style, scene, obj = torch.tensor(named).T
        return cls(texts, style, scene, obj, torch.tensor(full).view(len(STYLES), len(scene_names), len(object_names), -1),
                   torch.tensor(scenes), torch.tensor(objects), torch.tensor(styles))

    def sample(self, style: torch.Tensor, scene: torch.Tensor, obj: torch.Tensor, g: torch.Generator,
               full_only: bool = False):
        """A random caption row per image: a full caption or, unless ``full_only``, one that names
        only the scene, only the object or only the style (the only choices when one is missing)."""
        n = len(scene)
        s, o = scene.clamp(min=0), obj.clamp(min=0)
        full = self.full[style, s, o, torch.randint(len(PAIR_TEMPLATES), (n,), generator=g)]
        t = torch.randint(len(SINGLE_TEMPLATES), (n,), generator=g)
        singles = torch.stack([full, self.scenes[s, t], self.objects[o, t], self.styles[style, t]])
        kind = torch.zeros(n, dtype=torch.long) if full_only else torch.randint(4, (n,), generator=g)
        kind = torch.where(scene < 0, 2, torch.where(obj < 0, 1, kind))  # 0 full, 1 scene, 2 object, 3 style
        return singles.gather(0, kind[None]).squeeze(0)

    def positives(self, rows: torch.Tensor, style: torch.Tensor, scene: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
        """(B, B) bool: caption ``rows[j]`` is true of image ``i`` (every attribute it names matches)."""
        def matches(named: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
            return (named[rows][None] < 0) | (named[rows][None] == actual[:, None])

        return matches(self.style, style) & matches(self.scene, scene) & matches(self.object, obj)


def train_tokenizer(captions: Captions, cfg: PretrainConfig):
    """The CLIP-format BPE tokenizer of the captions; long enough for the longest one."""
    from uniemo.demo.foundation import train_clip_tokenizer

    tokenizer = train_clip_tokenizer(captions.texts, vocab_size=cfg.vocab_size, max_length=cfg.max_length)
    longest = max(len(ids) for ids in tokenizer(captions.texts).input_ids)
    tokenizer.model_max_length = max(cfg.max_length, longest)
    return tokenizer


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, as the SD pipeline pads its prompts."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


# ----------------------------------------------------------------------------- training


def optimise(params: list, steps: int, lr: float, gradients: Callable[[int], float], desc: str,
             stop: threading.Event | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay; ``gradients(step)`` puts one batch's gradients
    into the parameters' ``.grad`` and returns its loss. Raises at the next step once ``stop`` is set."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        if stop is not None and stop.is_set():
            raise RuntimeError(f"{desc} training stopped at step {step}: the job beside it failed or was interrupted")
        opt.zero_grad(set_to_none=True)
        losses.append(gradients(step))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def backward(loss: torch.Tensor) -> float:
    loss.backward()
    return loss.item()


@contextmanager
def worker_pool(workers: int):
    """(pool, stop): a pool of ``workers`` threads that share out torch's CPU threads, and an event
    set when the caller fails or is interrupted, so that jobs watching it (``optimise``) end at
    their next step instead of holding the exit until they finish. The tiny models' ops are
    too small to keep several cores busy, so two jobs side by side on one core each finish
    sooner than one after the other on two cores (docs/BENCHMARKS.md). Jobs draw random numbers
    only from their own generators, so results stay repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    stop = threading.Event()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="pretrain") as pool:
            try:
                yield pool, stop
            except BaseException:
                stop.set()
                raise
    finally:
        torch.set_num_threads(threads)


def results(jobs: list[Future]) -> list:
    """The jobs' results in order, or the error of the first job that fails, as soon as it fails."""
    wait(jobs, return_when=FIRST_EXCEPTION)
    for job in jobs:
        if job.done() and job.exception() is not None:
            raise job.exception()
    return [job.result() for job in jobs]


def augment(images: torch.Tensor, g: torch.Generator, shift: int = 4, max_blur: float = 1.5) -> torch.Tensor:
    """Float [0, 1] images, randomly flipped and shifted by up to ``shift`` pixels (reflect pad),
    and half of them blurred (one Gaussian sigma in [0.1, ``max_blur``] per batch). The blur
    teaches the tiny CLIP what a real CLIP already knows: a soft image of a cake is a cake, so
    it can judge the blurry images the tiny VAE and SD make (object zero-shot on VAE
    reconstructions 0.60 -> 0.66, on real images 0.77 -> 0.81, measured on the demo's world)."""
    from torchvision.transforms.functional import gaussian_blur

    x = images.float() / 255.0
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    size = x.shape[-1]
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dx, dy = torch.randint(2 * shift + 1, (2, len(x)), generator=g).tolist()
    x = torch.stack([p[:, y:y + size, x0:x0 + size] for p, x0, y in zip(padded, dx, dy)])
    sigma = float(torch.empty(1).uniform_(0.1, max_blur, generator=g))
    blur = torch.rand(len(x), generator=g) < 0.5
    return torch.where(blur[:, None, None, None], gaussian_blur(x, [5, 5], [sigma, sigma]), x)


def clip_normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to CLIP's input (the mean and std the saved image processor uses)."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return (x - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (image->text and text->image) with targets uniform over each row's positives."""
    pos = positives.float()
    image_to_text = -(F.log_softmax(logits, dim=1) * pos).sum(1) / pos.sum(1)
    text_to_image = -(F.log_softmax(logits.T, dim=1) * pos.T).sum(1) / pos.T.sum(1)
    return (image_to_text.mean() + text_to_image.mean()) / 2


def build_clip(cfg: PretrainConfig, vocab_size: int, max_length: int):
    from transformers import CLIPModel

    from uniemo.demo.foundation import clip_config

    return CLIPModel(clip_config(vocab_size=vocab_size, image_size=cfg.image_size, width=cfg.clip_width,
                                 layers=cfg.clip_layers, text_layers=cfg.clip_text_layers, heads=cfg.clip_heads,
                                 patch_size=cfg.patch_size, max_length=max_length))


def train_clip(model, world: World, captions: Captions, tokenizer, cfg: PretrainConfig, g: torch.Generator,
               stop: threading.Event | None = None, steps: int | None = None, desc: str = "clip"):
    """Train ``model`` (a CLIP) contrastively on the world's images and captions for ``steps``
    (default ``cfg.clip_steps``); returns (model, losses)."""
    model.train()
    ids = tokenize(tokenizer, captions.texts)

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(len(world.images), (cfg.clip_batch,), generator=g)
        style, scene, obj = world.style[idx], world.scene[idx], world.object[idx]
        rows = captions.sample(style, scene, obj, g)
        image = model.get_image_features(pixel_values=clip_normalise(augment(world.images[idx], g))).pooler_output
        text = model.get_text_features(input_ids=ids[rows]).pooler_output
        logits = model.logit_scale.exp().clamp(max=100) * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        return contrastive_loss(logits, captions.positives(rows, style, scene, obj))

    losses = optimise(list(model.parameters()), steps or cfg.clip_steps, cfg.clip_lr,
                      lambda step: backward(loss_fn(step)), desc, stop)
    return model.eval(), losses


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], the VAE's input range."""
    return images.float() / 127.5 - 1.0


def random_crop(images: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """The same random ``size`` x ``size`` window of every image of the batch."""
    dy, dx = torch.randint(images.shape[-1] - size + 1, (2,), generator=g).tolist()
    return images[..., dy:dy + size, dx:dx + size]


def build_vae(cfg: PretrainConfig):
    """A convolutional ``AutoencoderKL``, so it can train on crops."""
    from diffusers import AutoencoderKL

    from uniemo.demo.foundation import vae_config

    return AutoencoderKL(**vae_config(channels=cfg.vae_channels, sample_size=cfg.image_size, mid_attention=False))


def train_vae(vae, world: World, cfg: PretrainConfig, g: torch.Generator, stop: threading.Event | None = None):
    """Train ``vae`` on random flipped crops for MSE + L1 reconstruction with a small KL weight;
    returns (vae, losses)."""
    vae.train()

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(len(world.images), (cfg.vae_batch,), generator=g)
        x = random_crop(to_unit_range(world.images[idx]), min(cfg.vae_crop, cfg.image_size), g)
        x = torch.where((torch.rand(len(x), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=g)).sample
        return F.mse_loss(reconstruction, x) + F.l1_loss(reconstruction, x) + cfg.kl_weight * posterior.kl().mean()

    losses = optimise(list(vae.parameters()), cfg.vae_steps, cfg.vae_lr, lambda step: backward(loss_fn(step)), "vae",
                      stop)
    return vae.eval(), losses


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, computed once; sets ``vae.config.scaling_factor``
    so that scaled latents have unit variance (total variance = var(mean) + E[std^2])."""
    parts = [encode_posterior(vae, to_unit_range(images[start:start + batch])) for start in range(0, len(images), batch)]
    mean, std = torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])
    variance = mean.var() + std.pow(2).mean()
    vae.register_to_config(scaling_factor=float(variance.rsqrt()))
    return mean, std


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    """The frozen text tower's last hidden states (what the SD pipeline conditions on)."""
    return text_encoder(tokenize(tokenizer, texts)).last_hidden_state


def mirrored(world: World) -> World:
    """The world followed by its mirror images (a flip changes neither style, scene nor object)."""
    return World(torch.cat([world.images, world.images.flip(-1)]), world.style.repeat(2), world.scene.repeat(2),
                 world.object.repeat(2), world.scene_names, world.object_names)


def min_snr_weight(noise_schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weight min(SNR(t), γ) / SNR(t) of the epsilon loss (1 everywhere if γ = 0)."""
    from diffusers.training_utils import compute_snr

    if gamma <= 0:
        return torch.ones(len(t))
    snr = compute_snr(noise_schedule, t)
    return snr.clamp(max=gamma) / snr


def train_unet(world: World, latents: tuple[torch.Tensor, torch.Tensor], scaling_factor: float,
               captions: Captions, states: torch.Tensor, cfg: PretrainConfig, g: torch.Generator):
    """A ``UNet2DConditionModel`` trained for epsilon prediction on the ``latents`` of ``world``'s
    images; ``states`` holds the text states of every caption row and, in its last row, of the
    empty prompt. Returns (unet, losses)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from uniemo.demo.foundation import unet_config

    mean, std = latents
    unet = UNet2DConditionModel(**unet_config(states.shape[-1], sample_size=mean.shape[-1],
                                              channels=cfg.unet_channels, attention_at=cfg.unet_attention,
                                              mid_block=cfg.unet_mid_block)).train()
    noise_schedule = DDPMScheduler(**SD_SCHEDULE)
    empty = len(states) - 1

    def batch(step: int) -> tuple[torch.Tensor, ...]:
        """Noisy latents, timesteps, text states, noise and Min-SNR weights of one batch."""
        idx = torch.randint(len(mean), (cfg.unet_batch,), generator=g)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling_factor
        rows = captions.sample(world.style[idx], world.scene[idx], world.object[idx], g, full_only=True)
        rows = torch.where(torch.rand(len(idx), generator=g) < cfg.uncond_prob, empty, rows)
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(noise_schedule.config.num_train_timesteps, (len(idx),), generator=g)
        return (noise_schedule.add_noise(z, noise, t), t, states[rows], noise,
                min_snr_weight(noise_schedule, t, cfg.snr_gamma))

    def part_gradients(noisy, t, text, noise, weight) -> float:
        """Gradients of this part's share of the batch's mean loss (they add up across parts)."""
        prediction = unet(noisy, t, encoder_hidden_states=text).sample
        return backward((weight * (prediction - noise).pow(2).mean((1, 2, 3))).sum() / cfg.unet_batch)

    with worker_pool(cfg.workers) as (pool, _):
        def gradients(step: int) -> float:
            parts = [part for part in zip(*(x.tensor_split(cfg.workers) for x in batch(step))) if len(part[0])]
            return sum(pool.map(lambda part: part_gradients(*part), parts))

        losses = optimise(list(unet.parameters()), cfg.unet_steps, cfg.unet_lr, gradients, "unet")
    return unet.eval(), losses


# ----------------------------------------------------------------------------- zero-shot check


@torch.no_grad()
def zero_shot(clip, tokenizer, images: torch.Tensor, prompts: list[str], batch: int = 256) -> torch.Tensor:
    """Index of the prompt (e.g. "a photo of a <name>") nearest (cosine) to each uint8 image."""
    prompts = tokenize(tokenizer, prompts)
    text = F.normalize(clip.get_text_features(input_ids=prompts).pooler_output, dim=-1)
    predictions = []
    for start in range(0, len(images), batch):
        pixels = clip_normalise(images[start:start + batch].float() / 255.0)
        predictions.append((F.normalize(clip.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
                            @ text.T).argmax(1))
    return torch.cat(predictions)


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of correct predictions among the targets that exist (>= 0)."""
    known = targets >= 0
    return float((predictions[known] == targets[known]).float().mean()) if known.any() else float("nan")


def zero_shot_accuracy(clip, tokenizer, world: World) -> dict:
    from uniemo.demo.synth import STYLES

    def named(names: list[str]) -> list[str]:
        return [ZERO_SHOT_TEMPLATE.format(x=article(n)) for n in names]

    styles = [STYLE_TEMPLATES[0].format(x=n) for n in STYLES]
    return {"style": accuracy(zero_shot(clip, tokenizer, world.images, styles), world.style),
            "scene": accuracy(zero_shot(clip, tokenizer, world.images, named(world.scene_names)), world.scene),
            "object": accuracy(zero_shot(clip, tokenizer, world.images, named(world.object_names)), world.object),
            "images": len(world.images)}


@torch.no_grad()
def generate(pipe, world: World, captions: Captions, cfg: PretrainConfig, batch: int = 16) -> World:
    """Images the SD pipeline generates from the full captions of ``cfg.eval_images`` held-out
    images (``pipe`` guided as in inference), labelled with the style, scene and object they name."""
    has_both = ((world.scene >= 0) & (world.object >= 0)).nonzero().flatten()
    g = torch.Generator().manual_seed(cfg.seed)
    picked = has_both[torch.randperm(len(has_both), generator=g)[:cfg.eval_images]]
    style, scene, obj = world.style[picked], world.scene[picked], world.object[picked]
    prompts = [captions.texts[r] for r in captions.full[style, scene, obj, 0].tolist()]
    images = []
    for start in tqdm(range(0, len(prompts), batch), desc="generate", unit="batch"):
        out = pipe(prompts[start:start + batch], num_inference_steps=cfg.eval_steps,
                   guidance_scale=cfg.guidance_scale, generator=torch.Generator().manual_seed(cfg.seed + start),
                   output_type="pt")
        images.append((out.images.clamp(0, 1) * 255).round().to(torch.uint8))
    return World(torch.cat(images), style, scene, obj, world.scene_names, world.object_names)


# ----------------------------------------------------------------------------- the command


def cache_key(cfg: PretrainConfig, data_digest: str) -> str:
    payload = json.dumps({"config": dataclasses.asdict(cfg), "data": data_digest}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_report(out: Path, key: str) -> dict | None:
    """The report of a finished run in ``out`` with this cache key, else None."""
    file = out / REPORT
    if not (file.is_file() and all((out / m).is_dir() for m in MODELS)):
        return None
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return report if report.get("cache_key") == key else None


def pretrain_base(out: str | Path, data: str | Path, cfg: PretrainConfig | None = None, force: bool = False,
                  log: Callable[[str], None] = print) -> dict:
    """Train the tiny CLIP and SD on the dataset at ``data`` and write ``out/clip``, ``out/sd``
    and ``out/pretrain_report.json`` (all at once: built beside ``out`` and renamed). Returns the
    report; a finished run with the same config and data is reused unless ``force``."""
    cfg = cfg or PretrainConfig()
    out, data = Path(out).expanduser(), Path(data).expanduser()
    if not (data / "train.json").is_file():
        raise UniEmoError(f"no train.json in {data}: --data must be an EmoSet-format dataset (make one with `uniemo synth`)")
    digest = data_hash(data)
    key = cache_key(cfg, digest)
    report = cached_report(out, key)
    if report is not None and not force:
        log(f"cached: {out} was trained on the same data with the same config; nothing to do")
        return report
    if out.exists() and not (out / REPORT).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UniEmoError(f"{out} exists and is not a pretrain-base output: choose a new OUT or delete it")

    start, cpu_start = time.perf_counter(), time.process_time()
    train = load_world(data, "train", cfg.image_size)
    test = load_world(data, "test", cfg.image_size, train.scene_names, train.object_names)
    keep = (train.scene >= 0) | (train.object >= 0)
    if not keep.any():
        raise UniEmoError(f"no training image in {data} has a scene or object annotation: captions need them")
    train = train.subset(keep)
    captions = Captions.build(train.scene_names, train.object_names)
    tokenizer = train_tokenizer(captions, cfg)
    times = {"data": time.perf_counter() - start}

    torch.manual_seed(cfg.seed)  # initial weights, drawn here rather than in the worker threads
    clip, vae = build_clip(cfg, len(tokenizer), tokenizer.model_max_length), build_vae(cfg)
    judge = build_clip(cfg, len(tokenizer), tokenizer.model_max_length)
    clip_g, vae_g, unet_g, judge_g = (torch.Generator().manual_seed(cfg.seed + k) for k in range(4))
    both = mirrored(train)

    with worker_pool(cfg.workers) as (pool, stop):
        def autoencoder():
            trained = _timed(times, "vae", lambda: train_vae(vae, train, cfg, vae_g, stop))
            return trained, _timed(times, "encode", lambda: encode_latents(vae, both.images))

        (clip, clip_losses), ((vae, vae_losses), latents), (judge, judge_losses) = results([
            pool.submit(_timed, times, "clip", lambda: train_clip(clip, train, captions, tokenizer, cfg, clip_g, stop)),
            pool.submit(autoencoder),
            pool.submit(_timed, times, "judge", lambda: train_clip(judge, train, captions, tokenizer, cfg, judge_g,
                                                                  stop, cfg.judge_steps, "judge"))])
    states = encode_captions(clip.text_model, tokenizer, captions.texts + [""])
    unet, unet_losses = _timed(times, "unet", lambda: train_unet(
        both, latents, vae.config.scaling_factor, captions, states, cfg, unet_g))
    times["training"] = time.perf_counter() - start
    times["training_cpu"] = time.process_time() - cpu_start  # CPU seconds, all threads: robust to a busy machine

    report = {
        "cache_key": key, "data": str(data), "data_hash": digest, "world": world_of(data),
        "config": dataclasses.asdict(cfg),
        "loss": {"clip": _ends(clip_losses), "judge": _ends(judge_losses), "vae": _ends(vae_losses),
                 "unet": _ends(unet_losses)},
        "vae_scaling_factor": vae.config.scaling_factor, "threads": torch.get_num_threads(),
    }

    def finish(tmp: Path) -> None:
        _evaluate(tmp, test, captions, cfg, report)
        report["times_s"] = {k: round(v, 1) for k, v in dict(times, total=time.perf_counter() - start).items()}
        write_json(tmp / REPORT, report)

    _write_output(out, clip, judge, tokenizer, vae, unet, cfg, finish)
    _log_report(report, out, log)
    return report


def _timed(times: dict, name: str, fn):
    """``fn()``, recording its wall seconds as ``times[name]``."""
    start = time.perf_counter()
    result = fn()
    times[name] = time.perf_counter() - start
    return result


def _ends(losses: list[float], window: int = 10) -> dict:
    """Mean loss over the first and the last ``window`` steps."""
    head, tail = losses[:window], losses[-window:]
    return {"first": sum(head) / len(head), "last": sum(tail) / len(tail), "steps": len(losses)}


def _evaluate(tmp: Path, test: World, captions: Captions, cfg: PretrainConfig, report: dict) -> None:
    """Zero-shot accuracies of the saved models, loaded back the way every later step loads them."""
    from uniemo.loading import load_clip, load_sd

    start = time.perf_counter()
    generated = generate(load_sd(tmp / "sd"), test, captions, cfg)

    def figures(name: str) -> dict:
        model = load_clip(tmp / name)
        return {kind: zero_shot_accuracy(model.model, model.tokenizer, world)
                for kind, world in (("real", test), ("generated", generated))}

    report["zero_shot"] = {**figures("clip"), "judge": figures("judge")}
    report["evaluation_s"] = round(time.perf_counter() - start, 1)


def _write_output(out: Path, clip, judge, tokenizer, vae, unet, cfg: PretrainConfig,
                  finish: Callable[[Path], None]) -> None:
    """Save clip/, judge/ and sd/ into a temporary sibling of ``out``, let ``finish`` evaluate them and
    write the report there, then swap the whole directory in."""
    from diffusers import DDIMScheduler

    from uniemo.demo.foundation import save_clip, save_sd

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(out)
    tmp.mkdir()
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)  # left by a run killed mid-swap
    try:
        save_clip(tmp / "clip", clip, tokenizer, cfg.image_size)
        save_clip(tmp / "judge", judge, tokenizer, cfg.image_size)
        scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        save_sd(tmp / "sd", clip.text_model, tokenizer, unet, vae, scheduler)
        finish(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def _log_report(report: dict, out: Path, log: Callable[[str], None]) -> None:
    zs, t = report["zero_shot"], report["times_s"]
    for kind, target in (("real", 0.8), ("generated", 0.5)):
        r = zs[kind]
        log(f"zero-shot on {r['images']} {kind} test images: style {r['style']:.3f}, scene {r['scene']:.3f}, "
            f"object {r['object']:.3f} (target >= {target}); the judge's object {zs['judge'][kind]['object']:.3f}")
    log(f"training {t['training']:.0f}s: clip {t['clip']:.0f}s, then the judge {t['judge']:.0f}s, beside vae "
        f"{t['vae']:.0f}s + encode {t['encode']:.0f}s; then unet {t['unet']:.0f}s ({t['training_cpu']:.0f} CPU-s on "
        f"{report['threads']} threads); wrote {', '.join(f'{out}/{m}' for m in MODELS)}, {out}/{REPORT}")
