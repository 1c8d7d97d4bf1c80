"""Build foundation models in the Hugging Face layouts a real user downloads: a CLIP
directory (``CLIPModel`` + tokenizer + image processor) and a Stable Diffusion 1.5 or XL
directory. Used with random weights by the tests and benchmarks (any size, up to the paper's),
and as the starting point that ``uniemo pretrain-base`` trains for the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from uniemo.config import CLIP_ARCHITECTURES, SD15_UNET, SDXL_TEXT_ENCODER_2, SDXL_UNET

SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789")


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 1000, max_length: int = 32):
    """A byte-pair tokenizer trained with ``tokenizers`` and wrapped as a ``CLIPTokenizer``
    (end-of-word suffix ``</w>``, CLIP's special tokens), so it saves in CLIP's format."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token=SPECIALS[1], end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, end_of_word_suffix="</w>",
                                  initial_alphabet=ALPHABET, show_progress=False)
    bpe.train_from_iterator(list(texts), trainer)
    merges = _merges(bpe.model)
    return CLIPTokenizer(vocab=_numbered(bpe.get_vocab(), merges), merges=merges, model_max_length=max_length)


def _numbered(trained: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token ids in a fixed order: special tokens, single symbols, merged tokens, each sorted by
    text, then every character as a word end (so any lowercase word can be encoded). The
    trainer's own ids depend on hash-map order, and so does the order of merges of equal count,
    both changing from one process to the next: numbered by either, the same seed would train a
    different CLIP, or give a word outside the captions (an emotion word) other token ids."""
    merged = sorted(set("".join(pair) for pair in merges))
    symbols = sorted(set(trained) - set(SPECIALS) - set(merged))
    ordered = list(dict.fromkeys([*SPECIALS, *symbols, *merged, *(ch + "</w>" for ch in ALPHABET)]))
    return {token: i for i, token in enumerate(ordered)}


def _merges(model) -> list[tuple[str, str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp)
        lines = Path(tmp, "merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split()) for line in lines if line and not line.startswith("#version")]


def clip_config(preset: str | None = None, vocab_size: int = 49408, image_size: int = 64, **tiny):
    """``CLIPConfig`` of a paper backbone (``preset`` in CLIP_ARCHITECTURES) or a tiny one."""
    from transformers import CLIPConfig

    if preset is not None:
        a = CLIP_ARCHITECTURES[preset]
        vision = dict(hidden_size=a["hidden_size"], intermediate_size=a["intermediate_size"],
                      num_hidden_layers=a["num_hidden_layers"], num_attention_heads=a["num_attention_heads"],
                      patch_size=a["patch_size"], image_size=a["image_size"])
        width = a["text_hidden_size"]
        text = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=12,
                    num_attention_heads=width // 64, vocab_size=vocab_size, max_position_embeddings=77)
        projection = a["projection_dim"]
    else:
        width = tiny.get("width", 64)
        vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=tiny.get("layers", 6),
                      num_attention_heads=tiny.get("heads", 4), patch_size=tiny.get("patch_size", 8),
                      image_size=image_size)
        text = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=tiny.get("text_layers", 3),
                    num_attention_heads=tiny.get("heads", 4), vocab_size=vocab_size,
                    max_position_embeddings=tiny.get("max_length", 32))
        projection = tiny.get("projection_dim", width)
    text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


def save_clip(out: str | Path, model, tokenizer, image_size: int) -> Path:
    """Write a CLIP directory: model weights (safetensors), tokenizer, image processor."""
    from transformers import CLIPImageProcessor

    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(out)
    return out


def unet_config(cross_attention_dim: int, preset: str | None = None, sample_size: int = 16,
                channels: Sequence[int] = (32, 64), attention_at: Sequence[bool] = (True, False),
                mid_block: bool = True, pooled_dim: int | None = None) -> dict:
    """The SD 1.5 or SD XL UNet config (``preset`` 'sd15' or 'sdxl') or a tiny one with the same
    block types, one level per entry of ``channels``, with (cross-)attention at the levels
    ``attention_at`` marks and, unless ``mid_block`` is False, SD's cross-attention middle block.
    With ``pooled_dim`` the tiny UNet takes SD XL's added conditions (a pooled text embedding of
    that width and the 6 size numbers)."""
    if preset == "sd15":
        return dict(SD15_UNET, cross_attention_dim=cross_attention_dim)
    if preset == "sdxl":
        return dict(SDXL_UNET)
    xl = {} if pooled_dim is None else dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                                            projection_class_embeddings_input_dim=pooled_dim + 6 * 8)
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_at]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_at)]
    return dict(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=list(channels), cross_attention_dim=cross_attention_dim, attention_head_dim=4,
                norm_num_groups=8, down_block_types=down, up_block_types=up,
                mid_block_type="UNetMidBlock2DCrossAttn" if mid_block else None, **xl)


def text_encoder_2(text_config, preset: str | None = None):
    """SD XL's second text encoder, a ``CLIPTextModelWithProjection`` on the tokenizer of
    ``text_config``: full size (``preset='sdxl'``) or tiny (narrower than the first: width 48,
    pooled width 40), random weights."""
    from transformers import CLIPTextModelWithProjection

    size = SDXL_TEXT_ENCODER_2 if preset == "sdxl" else dict(hidden_size=48, intermediate_size=192, projection_dim=40)
    return CLIPTextModelWithProjection(text_config.__class__(**{**text_config.to_dict(), **size}))


def vae_config(preset: str | None = None, channels: Sequence[int] = (32, 64, 64), sample_size: int = 64,
               mid_attention: bool = True) -> dict:
    """SD's VAE config (8x down-sampling; ``preset`` 'sd15' or 'sdxl', the same architecture) or a
    tiny one, one level per entry of ``channels`` (3 levels: 4x); without ``mid_attention`` the
    tiny one is purely convolutional, so it can train on crops."""
    if preset in ("sd15", "sdxl"):
        return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                    up_block_types=["UpDecoderBlock2D"] * 4)
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=sample_size,
                block_out_channels=list(channels), norm_num_groups=8,
                down_block_types=["DownEncoderBlock2D"] * len(channels), up_block_types=["UpDecoderBlock2D"] * len(channels),
                mid_block_add_attention=mid_attention)


def sd_pipeline(text_encoder, tokenizer, unet, vae, scheduler=None, text_encoder_2=None):
    """A Stable Diffusion 1.5 pipeline in memory (no safety checker, no feature extractor) or, with
    ``text_encoder_2`` (its tokenizer: ``tokenizer``), an SD XL one with SD XL's Euler sampler."""
    from diffusers import (DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    if text_encoder_2 is not None:
        return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                         scheduler=scheduler or EulerDiscreteScheduler(**betas),
                                         add_watermarker=False)
    scheduler = scheduler or DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_sd(out: str | Path, text_encoder, tokenizer, unet, vae, scheduler=None, text_encoder_2=None) -> Path:
    """Write ``sd_pipeline(...)`` as a diffusers directory."""
    sd_pipeline(text_encoder, tokenizer, unet, vae, scheduler, text_encoder_2).save_pretrained(out, safe_serialization=True)
    return Path(out)


def random_sd(text_config, tokenizer, sd_preset: str | None = None, xl: bool = False, text_encoder=None):
    """A random-weight SD 1.5 (with ``xl``: SD XL) pipeline in memory on ``tokenizer``, its first
    text encoder ``text_encoder`` or a new one of ``text_config``; full size with ``sd_preset``
    ('sd15' / 'sdxl'), else tiny."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = text_encoder or CLIPTextModel(text_config)
    second = text_encoder_2(text_config, sd_preset) if xl else None
    width = text_config.hidden_size + (0 if second is None else second.config.hidden_size)
    pooled = None if second is None else second.config.projection_dim
    unet = UNet2DConditionModel(**unet_config(width, sd_preset, pooled_dim=pooled))
    return sd_pipeline(text_encoder, tokenizer, unet, AutoencoderKL(**vae_config(sd_preset)), text_encoder_2=second)


def build_random(out: str | Path, texts: Iterable[str], clip_preset: str | None = None,
                 sd_preset: str | None = None, image_size: int = 64, seed: int = 0, xl: bool = False) -> tuple[Path, Path]:
    """Random-weight CLIP and SD directories (``out/clip``, ``out/sd``) sharing one text tower;
    with ``xl`` a tiny SD XL (a second, narrower text encoder with projection)."""
    import torch
    from transformers import CLIPModel, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = train_clip_tokenizer(texts, vocab_size=400)
    if clip_preset is not None:
        tokenizer.model_max_length = 77
        image_size = CLIP_ARCHITECTURES[clip_preset]["image_size"]
    clip = CLIPModel(clip_config(clip_preset, vocab_size=len(tokenizer), image_size=image_size))
    clip_dir = save_clip(Path(out) / "clip", clip, tokenizer, image_size)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    sd_dir = Path(out) / "sd"
    random_sd(clip.config.text_config, tokenizer, sd_preset, xl, text_encoder).save_pretrained(sd_dir, safe_serialization=True)
    return clip_dir, sd_dir
