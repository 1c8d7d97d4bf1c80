"""Typed configs as data (open_clip style): dataclasses, YAML in and out, and every named
preset in one table, ``PRESETS``. A run directory stores its ``config.yaml``; every later
command reads it back with :func:`load_config`."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uniemo.errors import UniEmoError


@dataclass
class UnderstandingConfig:
    """The hierarchical chain with expert queries (SPEC §1, paper §III-A)."""

    queries: str = "multi-stage"  # none | single-step | multi-stage (paper Fig. 6)
    query_len: int = 32  # paper Fig. 7
    stages: list[int] | None = field(default=None, metadata={"length": 2})  # [L1, L2]; None = [N/3, 2N/3]
    interactive_layers: int = 2
    interactive_heads: int | None = None  # None = the backbone's head count
    beta_init: float = 0.1  # layer-scale style modulation, eq. 3
    head_hidden: int = 768
    head_dropout: float = 0.5
    num_classes: int = 8
    temperature: float = 0.07  # eq. 4
    # L_S, L_O, L_cls
    loss_weights: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.5], metadata={"length": 3})


@dataclass
class OptimConfig:
    """AdamW with parameter groups (SPEC §1: paper lr 1e-4; official 8e-6 backbone / 5e-4 queries)."""

    lr: float = 1e-4  # queries, interactive blocks, beta, projections, heads, mappers
    backbone_lr: float = 1e-4  # 0 freezes the CLIP vision tower
    mapper_lr: float | None = None  # stage 2: the fusion's mappers M_f (None: lr)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"length": 2})
    weight_decay: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (after the warmup)
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # a cap: stops early when reached; epochs still end the run
    batch_size: int = 128
    grad_accum: int = 1
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16 (auto: bf16 on GPUs that have it)
    seed: int = 0
    checkpoint_every: int = 500  # steps; also at the end of every epoch
    num_workers: int = 4
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class FusionConfig:
    """Understanding-guided fusion (SPEC §2, paper §III-B) and joint loss weights (eq. 10)."""

    features: list[str] = field(default_factory=lambda: ["cls", "scene", "object"])  # + "patch" (Table V)
    use_alpha: bool = True
    alpha_table: str = "classifier"  # classifier | counts
    cond_loss: str = "cond"  # cond (CE + hard-negative margin) | ce
    margin: float = 0.5
    mapper_hidden: int | None = None  # None = the text encoder's width
    placeholder: str = "<emo>"
    # emotion transfer's prompt (paper Fig. 10a), in stage 2 and at generation; {article} is "a" or "an"
    transfer_prompt: str = "{placeholder} {object}"
    object_prompt_p: float = 0.0  # stage 2: share of samples given the transfer prompt with their object
    # stage 2: such a sample's e is built from another training image of its emotion in the batch,
    # so the word, not e, has to carry the object (as at generation, where e comes from the space)
    object_prompt_partner: bool = False
    # stage 2: recompute the frozen UNet's activations in the backward pass (L_diff's gradient to e
    # runs back through the UNet, so its activations are otherwise kept): less memory, more time
    unet_gradient_checkpointing: bool = False
    # stage 2: encode every training image's VAE posterior once, before the first step, and draw
    # z_0 from it in each step (the VAE view is deterministic); host memory: images x 2 x latent size
    cache_latents: bool = False
    # L_U, L_cond, L_diff
    joint_weights: list[float] = field(default_factory=lambda: [0.3, 0.3, 0.4], metadata={"length": 3})
    cond_warmup_steps: int = 0  # L_cond's weight ramps linearly from 0 over these optimizer steps


@dataclass
class GenerationConfig:
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = None  # None = the UNet's sample size x the VAE's scale factor
    # scale of the emotion space's standard-normal draw z: 1 samples N(mean, std) as SPEC says; below 1
    # draws nearer each emotion's mean, more typical, less diverse (docs/BENCHMARKS.md, session 28)
    truncation: float = 1.0


@dataclass
class FeedbackConfig:
    """Explicit feedback, Algorithm 1 (SPEC §3)."""

    per_emotion: int = 1000
    eta: float = 20.0
    delta: float = 80.0
    proportion: float = 0.2
    criteria: list[str] = field(default_factory=lambda: ["emo-a", "sem-c"])


@dataclass
class UniEmoConfig:
    """Everything one run needs; paths are filled in by the commands and saved with the run."""

    preset: str = "vit-b32"
    clip_path: str | None = None
    sd_path: str | None = None
    sd_layout: str | None = None  # "sd15" | "sdxl": the SD the run was trained with (`train joint` records it)
    image_size: int = 224
    understanding: UnderstandingConfig = field(default_factory=UnderstandingConfig)
    stage1: TrainConfig = field(default_factory=TrainConfig)
    stage2: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=5, batch_size=16, optim=OptimConfig(lr=1e-4, backbone_lr=0.0)))
    fusion: FusionConfig = field(default_factory=FusionConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)


# Architectures of the paper's backbones, for building them with random weights (tests,
# benchmarks). Real runs load the user's weights and take the architecture from them.
CLIP_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit-b32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    patch_size=32, image_size=224, projection_dim=512, text_hidden_size=512),
    "vit-b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    patch_size=16, image_size=224, projection_dim=512, text_hidden_size=512),
    "vit-l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=224, projection_dim=768, text_hidden_size=768),
}
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
# SD XL's second text encoder (OpenCLIP ViT-bigG/14's text tower, with projection); the first is CLIP-L's
SDXL_TEXT_ENCODER_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                           projection_dim=1280, hidden_act="gelu")
# stabilityai/stable-diffusion-xl-base-1.0's UNet: 2.6 B parameters, 128 x 128 latents (1024 px)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280], cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                 transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,  # pooled 1280 + 6 size numbers x 256
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])


def _tiny() -> UniEmoConfig:
    return UniEmoConfig(
        preset="tiny",
        image_size=64,
        understanding=UnderstandingConfig(query_len=8, head_hidden=128, head_dropout=0.1),
        stage1=TrainConfig(epochs=6, batch_size=64, num_workers=0, checkpoint_every=200,
                           optim=OptimConfig(lr=1e-3, backbone_lr=1e-4)),
        stage2=TrainConfig(epochs=2, batch_size=32, num_workers=0, checkpoint_every=200,
                           optim=OptimConfig(lr=1e-2, backbone_lr=0.0)),  # the paper's stage-2 lr
        # No L_cond: at weight 0.05 or 0.3 it fixes e's direction before the tiny UNet's weak
        # L_diff signal can, and Emo-A stays at 0.08-0.22 (docs/DECISIONS.md, measured).
        # Half the samples see the transfer prompt "<emo> a <object>", with e from another image of
        # their emotion; the article because the tiny SD learned its objects with one (docs/DECISIONS.md,
        # measured).
        fusion=FusionConfig(joint_weights=[0.3, 0.0, 0.7], transfer_prompt="{placeholder} {article} {object}",
                            object_prompt_p=0.5, object_prompt_partner=True, cache_latents=True),
        generation=GenerationConfig(num_inference_steps=25, guidance_scale=5.0),
        feedback=FeedbackConfig(per_emotion=40),
    )


def _official() -> UniEmoConfig:
    """Loss weights and learning rates of the authors' public code (SPEC §1)."""
    cfg = UniEmoConfig(preset="official")
    cfg.understanding.loss_weights = [0.05, 0.05, 0.9]
    cfg.stage1.optim = OptimConfig(lr=5e-4, backbone_lr=8e-6)
    return cfg


PRESETS: dict[str, typing.Callable[[], UniEmoConfig]] = {
    "vit-b32": lambda: UniEmoConfig(preset="vit-b32"),
    "vit-b16": lambda: UniEmoConfig(preset="vit-b16"),
    "vit-l14": lambda: UniEmoConfig(preset="vit-l14"),
    "official": _official,
    "tiny": _tiny,
}


def preset(name: str) -> UniEmoConfig:
    if name not in PRESETS:
        raise UniEmoError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build a dataclass from a dict, checking keys, (shallowly) types and the length of the
    lists whose field says one (``metadata={"length": n}``)."""
    if not isinstance(data, dict):
        raise UniEmoError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UniEmoError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = value = _coerce(hints[key], value, f"{where}.{key}")
        length = fields[key].metadata.get("length")
        if length is not None and value is not None and len(value) != length:
            raise UniEmoError(f"{where}.{key}: expected a list of {length} values, got {value!r}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UniEmoError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, where) for v in value] if args else value
    if hint is float:
        return _number(value, where)
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise UniEmoError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    """A float field's value; YAML 1.1 reads ``1e-4`` (no dot) as a string, so a string that
    spells a number is taken as one."""
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise UniEmoError(f"{where}: expected a number, got {value!r}")


def save_config(cfg: UniEmoConfig, path: str | Path) -> None:
    from uniemo.io import write_text

    write_text(path, yaml.safe_dump({"uniemo_version": _version(), **to_dict(cfg)}, sort_keys=False))


def load_config(path: str | Path) -> UniEmoConfig:
    """Read a config YAML (a run's ``config.yaml`` or a user's override file)."""
    data = read_yaml(path, "config (a run directory made by `uniemo train`, or a YAML file)")
    if "uniemo_version" in data:
        check_version(data.pop("uniemo_version"), path)
    return from_dict(UniEmoConfig, data, where=str(path))


def check_version(written: Any, path: str | Path) -> None:
    """Refuse a config written by a newer major version of uniemo than this one."""
    ours = _version()
    try:
        major = int(str(written).split(".")[0])
    except ValueError:
        raise UniEmoError(f"{path}: uniemo_version {written!r} is not a version number; "
                          "restore the file or re-create the run") from None
    if major > int(ours.split(".")[0]):
        raise UniEmoError(f"{path} was written by uniemo {written}, a newer major version than this uniemo {ours}: "
                          "upgrade uniemo to read it, or re-create the run with this version")


def merge(cfg: UniEmoConfig, overrides: dict[str, Any], where: str = "config") -> UniEmoConfig:
    """Apply a (possibly partial, nested) mapping of overrides on top of ``cfg``."""
    merged = _deep_update(to_dict(cfg), overrides)
    return from_dict(UniEmoConfig, merged, where)


def read_yaml(path: str | Path, what: str = "YAML file") -> dict[str, Any]:
    """A YAML mapping, read with the safe loader; problems are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UniEmoError(f"no {what} at {path}: check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UniEmoError(f"malformed YAML in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UniEmoError(f"{path}: expected a mapping at the top level")
    return data


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _version() -> str:
    from uniemo import __version__

    return __version__
