"""Load the foundation models a user brings, from local directories in the Hugging Face
layout, never from the network (``local_files_only=True``): a CLIP model (vision tower,
text tower, tokenizer, image processor) and a Stable Diffusion 1.5 or XL pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniemo.errors import UniEmoError


@dataclass
class CLIPBundle:
    model: Any  # transformers.CLIPModel
    tokenizer: Any  # CLIPTokenizer(Fast)
    image_processor: Any  # CLIPImageProcessor
    path: str


def quiet_hf() -> None:
    """Silence the libraries' per-load progress bars and reports; our commands show their own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UniEmoError(f"{path} does not exist: expected {what}")
    if not path.is_dir():
        raise UniEmoError(f"{path} is not a directory: expected {what}")
    return path


def _read_config(path: Path, name: str, what: str) -> dict:
    file = path / name
    if not file.is_file():
        raise UniEmoError(f"no {name} in {path}: expected {what}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UniEmoError(f"malformed {file} ({e}): expected {what}") from None


CLIP_WHAT = "a Hugging Face CLIP directory (config.json with model_type 'clip', weights, tokenizer, preprocessor_config.json)"
SD_WHAT = ("a diffusers Stable Diffusion 1.5 or XL directory (model_index.json, unet/, vae/, text_encoder/, "
           "tokenizer/, scheduler/; SD XL also text_encoder_2/, tokenizer_2/)")


def load_clip(path: str | Path, dtype=None) -> CLIPBundle:
    """Load ``CLIPModel``, its tokenizer and image processor from a local directory."""
    from safetensors import SafetensorError
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    quiet_hf()
    path = _require_dir(path, CLIP_WHAT)
    config = _read_config(path, "config.json", CLIP_WHAT)
    if config.get("model_type") != "clip":
        raise UniEmoError(f"{path}/config.json has model_type {config.get('model_type')!r}: expected {CLIP_WHAT}")
    if not (path / "preprocessor_config.json").is_file():
        raise UniEmoError(f"no preprocessor_config.json in {path}: expected {CLIP_WHAT}")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=dtype, attn_implementation="sdpa")
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, SafetensorError) as e:
        raise UniEmoError(f"could not load CLIP from {path}: {str(e).splitlines()[0]}") from None
    return CLIPBundle(model.eval(), tokenizer, processor, str(path))


SD_LAYOUTS = {"StableDiffusionPipeline": "sd15", "StableDiffusionImg2ImgPipeline": "sd15",
              "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl"}
SD_NAMES = {"sd15": "Stable Diffusion 1.5", "sdxl": "Stable Diffusion XL"}
SD_PARTS = {"sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
            "sdxl": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")}


def sd_layout(pipe) -> str:
    """"sdxl" for a pipeline with a second text encoder, else "sd15"."""
    return "sd15" if getattr(pipe, "text_encoder_2", None) is None else "sdxl"


def sd_scheduler_name(path: str | Path) -> str | None:
    """The class of the scheduler the SD directory at ``path`` samples with, read from its
    ``scheduler/scheduler_config.json`` without loading anything."""
    path = _require_dir(path, SD_WHAT)
    return _read_config(path / "scheduler", "scheduler_config.json", SD_WHAT).get("_class_name")


def load_sd(path: str | Path, dtype=None):
    """Load a ``StableDiffusionPipeline`` (SD 1.5 layout, safety checker off) or a
    ``StableDiffusionXLPipeline`` (SD XL layout, watermarker off) from a local directory; which
    one is read from its ``model_index.json``."""
    import diffusers
    from safetensors import SafetensorError

    quiet_hf()
    path = _require_dir(path, SD_WHAT)
    index = _read_config(path, "model_index.json", SD_WHAT)
    name = index.get("_class_name")
    if name not in SD_LAYOUTS:
        raise UniEmoError(f"{path}/model_index.json names {name!r}: expected {SD_WHAT}")
    layout = SD_LAYOUTS[name]
    for sub in SD_PARTS[layout]:
        if not (path / sub).is_dir():
            raise UniEmoError(f"no {sub}/ in {path}: expected {SD_WHAT}")
    if layout == "sdxl":
        cls, extra = diffusers.StableDiffusionXLPipeline, {"add_watermarker": False}
    else:
        cls, extra = diffusers.StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False,
                                                         "feature_extractor": None}
    try:
        pipe = cls.from_pretrained(path, local_files_only=True, dtype=dtype, **extra)
    except (OSError, ValueError, SafetensorError) as e:
        raise UniEmoError(f"could not load Stable Diffusion from {path}: {str(e).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
