"""Stage 2: joint training of understanding and generation, the emotion space, and the implicit
feedback figure (paper §III-C, SPEC §3).

    L_joint = γ1·L_U + γ2·L_cond + γ3·L_diff,   (γ1, γ2, γ3) = (0.3, 0.3, 0.4)       eq. 10

L_diff is Stable Diffusion's ε-prediction MSE with the fused condition e injected at the
placeholder token. VAE, text encoder and UNet are frozen and in eval mode; gradients pass
*through* them to e, and from e into the mappers and the understanding branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uniemo.config import FusionConfig
from uniemo.errors import UniEmoError
from uniemo.fusion import ALPHA_FEATURES, CorrelationTable, PromptEncoder, UniEmoFusion, match_alpha, transfer_prompt
from uniemo.io import load_tensors, save_tensors
from uniemo.rundir import RunDir


class FrozenDiffusion(nn.Module):
    """The frozen parts of Stable Diffusion (1.5 or XL) and L_diff. Always in eval mode, no
    parameter trains."""

    def __init__(self, sd_pipe, cfg: FusionConfig):
        from diffusers import DDPMScheduler

        super().__init__()
        self.vae, self.unet = sd_pipe.vae, sd_pipe.unet
        self.prompts = PromptEncoder.of(sd_pipe, cfg.placeholder)
        self.text_encoders = nn.ModuleList(self.prompts.text_encoders)  # moved, frozen and in eval mode with the rest
        self.placeholder, self.transfer_prompt = cfg.placeholder, cfg.transfer_prompt
        self.object_prompt_p = cfg.object_prompt_p
        self.requires_grad_(False)
        if cfg.unet_gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler.from_config(sd_pipe.scheduler.config)
        self.prompt_ids = self.prompts.ids([cfg.placeholder])
        self.vae_scale_factor = sd_pipe.vae_scale_factor
        self.posteriors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.eval()

    def train(self, mode: bool = True) -> "FrozenDiffusion":
        return super().train(False)

    def prompt_ids_for(self, objects: list[str | None]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Token ids (one tensor per tokenizer) of "<emo>" per sample or, with probability
        ``object_prompt_p`` where the image's object is known, of the transfer prompt
        (``fusion.transfer_prompt``: "<emo> a house"), and which samples got it (B,) bool: e then
        learns to carry what the object word does not, so the transfer prompt at generation is one
        stage 2 has seen."""
        named = (torch.rand(len(objects)) < self.object_prompt_p) & torch.tensor([bool(o) for o in objects])
        if not named.any():
            return self.prompt_ids, named
        prompts = [transfer_prompt(self.transfer_prompt, self.placeholder, o) if n else self.placeholder
                   for o, n in zip(objects, named.tolist())]
        return self.prompts.ids(prompts), named

    def posterior(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(z|x) for the batch's images: looked up by dataset index once
        ``posteriors`` holds every training image's (``fusion.cache_latents``), else encoded now."""
        if self.posteriors is None:
            return encode_posterior(self.vae, batch["vae_pixels"])
        index = batch["index"].cpu()
        return tuple(p[index].to(self.vae.device) for p in self.posteriors)

    def loss(self, e: torch.Tensor, posterior: tuple[torch.Tensor, torch.Tensor],
             ids: list[torch.Tensor] | None = None) -> torch.Tensor:
        """L_diff = E‖ε − ε_θ(z_t, t, c(e))‖² (or the v-target for v-prediction schedulers), z_0
        drawn from the VAE ``posterior`` (mean, std), with the prompt ``ids`` ("<emo>" if None;
        see ``prompt_ids_for``). SD XL's UNet also gets the pooled embedding and its size
        conditioning: the training images are resized and centre-cropped to the resolution, so
        original and target size are it, the crop (0, 0)."""
        mean, std = posterior
        # randn of the shape, as latent_dist.sample() draws: randn_like keeps the memory layout,
        # and a VAE's output may come channels-last (the tiny SD XL's does), so its draws differ
        draw = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
        latents = (mean + std * draw) * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        cond = self.prompts(self.prompt_ids if ids is None else ids, e)
        added = None
        if self.prompts.xl:
            height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
            time_ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device)
            added = {"text_embeds": cond["pooled_prompt_embeds"],
                     "time_ids": time_ids.to(cond["prompt_embeds"].dtype).expand(len(latents), -1)}
        pred = self.unet(noisy, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE's latent distribution q(z|x) for ``pixels`` in [-1, 1]."""
    posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    return posterior.mean, posterior.std


class JointModel(nn.Module):
    """Understanding + fusion, trained against the frozen diffusion model (stage 2).

    The frozen diffusion model is held outside the module tree so that checkpoints, optimizers
    and DDP see only the trainable branch; ``_apply`` still moves it along with ``.to()``."""

    def __init__(self, understanding, fusion: UniEmoFusion, diffusion: FrozenDiffusion, scene_bank, object_bank,
                 table: CorrelationTable):
        super().__init__()
        self.understanding, self.fusion = understanding, fusion
        object.__setattr__(self, "diffusion", diffusion)
        self.scene_bank, self.object_bank, self.table = scene_bank, object_bank, table

    def _apply(self, fn, recurse: bool = True):
        self.diffusion._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def condition(self, out, labels: torch.Tensor, object_named: torch.Tensor | None = None,
                  source: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused condition e for understanding outputs ``out`` and target emotions ``labels``: see
        ``fused_condition``."""
        return fused_condition(self.fusion, out, labels, self.scene_bank, self.object_bank, self.table, object_named,
                               source)

    def forward(self, batch: dict, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """L_joint (eq. 10) of a batch; at optimizer ``step`` L_cond's weight γ2 is ramped by
        ``cond_warmup_steps`` (None: the full weight)."""
        labels = batch["label"]
        out = self.understanding(batch["pixel_values"])
        device = labels.device
        l_u = self.understanding.loss(out, labels, self.scene_bank.index(batch["scene"]).to(device),
                                      self.object_bank.index(batch["object"]).to(device),
                                      self.scene_bank, self.object_bank)
        ids, object_named = self.diffusion.prompt_ids_for(batch["object"])
        source = same_emotion_partners(labels, object_named) if self.fusion.cfg.object_prompt_partner else None
        e, alphas = self.condition(out, labels, object_named.to(device), source)
        l_cond = self.fusion.condition_loss(e, labels, self.understanding.emotion_head[-1], out.logits)
        l_diff = self.diffusion.loss(e, self.diffusion.posterior(batch), ids)
        w_u, w_cond, w_diff = self.fusion.cfg.joint_weights
        warmup = self.fusion.cfg.cond_warmup_steps
        if step is not None and warmup > 0:
            w_cond = w_cond * min(1.0, step / warmup)
        loss = w_u * l_u["total"] + w_cond * l_cond["cond"] + w_diff * l_diff
        logs = {"loss_u": l_u["total"], "loss_cond": l_cond["cond"], "loss_diff": l_diff,
                **{f"alpha_{k}": a.mean() for k, a in alphas.items()}}
        return loss, {k: float(v.detach()) for k, v in logs.items()}


def fused_condition(fusion: UniEmoFusion, out, labels: torch.Tensor, scene_bank, object_bank, table: CorrelationTable,
                    object_named: torch.Tensor | None = None,
                    source: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fused condition e (eq. 6) of understanding outputs ``out`` for emotions ``labels``, with α
    matched at those emotions, and the α's (``object_named``: see ``UniEmoFusion.forward``);
    sample i's e is built from sample ``source[i]``'s outputs (default: its own)."""
    pick = (lambda t: t) if source is None else (lambda t: t[source])
    embeds = {"scene": pick(out.scene_embed), "object": pick(out.object_embed)}
    alphas, _ = attribute_alphas(fusion, embeds, labels, {"scene": scene_bank, "object": object_bank}, table)
    features = {name: pick(f).to(fusion.dtype) for name, f in features_of(out, fusion.cfg.features).items()}
    return fusion(features, alphas, object_named), alphas


def attribute_alphas(fusion: UniEmoFusion, embeds: dict, labels: torch.Tensor, banks: dict,
                     table: CorrelationTable) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """α (SPEC §2) of each attribute kind the fusion maps, for the projected queries ``embeds``
    at emotions ``labels``, and the matched attribute's index in its bank. A kind the run has no
    names of (a folder dataset: no scenes, no objects) weighs 1 and matches nothing."""
    alphas, best = {}, {}
    for kind, bank in banks.items():
        if kind not in fusion.mappers:
            continue
        if len(bank.names):
            alphas[kind], best[kind] = match_alpha(embeds[kind], bank.embeds, table.rows(kind)[1], labels)
        else:
            alphas[kind] = torch.ones_like(labels, dtype=embeds[kind].dtype)
    return alphas, best


def same_emotion_partners(labels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the sample each sample's e is built from: a random other sample of the same
    emotion for each ``chosen`` one that has such a partner in the batch, else itself."""
    index = torch.arange(len(labels))
    source, cpu_labels = index.clone(), labels.cpu()
    for i in chosen.nonzero().flatten().tolist():
        others = ((cpu_labels == cpu_labels[i]) & (index != i)).nonzero().flatten()
        if len(others):
            source[i] = others[torch.randint(len(others), ())]
    return source.to(labels.device)


def features_of(out, names) -> dict[str, torch.Tensor]:
    """The understanding features the fusion reads (cls, scene, object, patch)."""
    missing = [n for n in names if getattr(out, n, None) is None]
    if missing:
        raise UniEmoError(f"the understanding model gives no {', '.join(missing)} feature: "
                          "remove it from fusion.features")
    return {n: getattr(out, n) for n in names}


def joint_step(model: JointModel, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The ``step_fn`` of the shared training loop."""
    return model(batch, step)


# ---------------------------------------------------------------------------------------------
# Batches: one image, two views (CLIP for understanding, VAE for L_diff)
# ---------------------------------------------------------------------------------------------

class JointCollate:
    """Collate PIL samples into a CLIP view (``pixel_values``, unless ``clip_transform`` is None)
    and, when ``vae_size`` is set, a VAE view in [-1, 1] at the diffusion resolution
    (``vae_pixels``: resized and centre-cropped, the same in every epoch)."""

    def __init__(self, clip_transform=None, vae_size: int | None = None):
        from torchvision import transforms

        self.clip_transform = clip_transform
        self.vae_transform = None if vae_size is None else transforms.Compose([
            transforms.Resize(vae_size), transforms.CenterCrop(vae_size), transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5])])

    def __call__(self, samples: list[dict]) -> dict:
        images = [s["pixel_values"] for s in samples]
        batch = {"label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
                 "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
                 "scene": [s["scene"] for s in samples], "object": [s["object"] for s in samples]}
        if self.clip_transform is not None:
            batch["pixel_values"] = torch.stack([self.clip_transform(im) for im in images])
        if self.vae_transform is not None:
            batch["vae_pixels"] = torch.stack([self.vae_transform(im) for im in images])
        return batch


def cache_posteriors(vae, train_set, vae_size: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x)'s mean and std of every training image, row i for dataset index i, kept on the CPU
    (``fusion.cache_latents``): the VAE view does not change between epochs, so stage 2 encodes
    it once instead of in every step; each step still draws its own z_0 from it."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    loader = DataLoader(train_set, batch_size=batch_size, collate_fn=JointCollate(vae_size=vae_size))
    vae.to(device)
    parts = [encode_posterior(vae, batch["vae_pixels"].to(device))
             for batch in tqdm(loader, desc="VAE latents", leave=False, dynamic_ncols=True)]
    return tuple(torch.cat([part[i] for part in parts]).cpu() for i in (0, 1))


# ---------------------------------------------------------------------------------------------
# The emotion space (SPEC §3)
# ---------------------------------------------------------------------------------------------

@dataclass
class EmotionSpace:
    """Per-emotion mean and std of each fused feature over the training set; generation samples
    N(mean, std) per emotion."""

    mean: dict[str, torch.Tensor]  # feature -> (C, D)
    std: dict[str, torch.Tensor]
    count: torch.Tensor  # (C,)

    @classmethod
    def from_sums(cls, sums: dict, squares: dict, count: torch.Tensor) -> "EmotionSpace":
        n = count.clamp(min=1).double().unsqueeze(1)
        mean = {k: (s / n) for k, s in sums.items()}
        std = {k: (squares[k] / n - mean[k] ** 2).clamp(min=0).sqrt() for k in sums}
        return cls({k: v.float() for k, v in mean.items()}, {k: v.float() for k, v in std.items()}, count)

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Standard-normal noise z for one sample, one vector per feature, drawn in the features'
        sorted order: a space made in memory and the same space loaded draw the same z."""
        return {k: torch.randn(self.mean[k].shape[1], generator=generator) for k in sorted(self.mean)}

    def at(self, emotion: int, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The point mean + std·z of ``emotion``'s space: the same z gives corresponding points in
        every emotion's space, so a mix of emotions blends like with like."""
        if self.count[emotion] == 0:
            raise UniEmoError(f"emotion {emotion} had no training images, so it has no emotion space; "
                              "train on data that covers it")
        return {k: self.mean[k][emotion] + self.std[k][emotion] * z[k] for k in self.mean}

    def save(self, path: str | Path) -> None:
        tensors = {"count": self.count}
        for k in self.mean:
            tensors[f"{k}.mean"], tensors[f"{k}.std"] = self.mean[k], self.std[k]
        save_tensors(path, tensors)

    @classmethod
    def load(cls, path: str | Path) -> "EmotionSpace":
        tensors = load_tensors(path, "emotion space")
        names = sorted({k.split(".")[0] for k in tensors if k != "count"})
        if "count" not in tensors or any(f"{k}.std" not in tensors or f"{k}.mean" not in tensors for k in names):
            raise UniEmoError(f"{path} is not an emotion space file; re-run `uniemo train joint`")
        return cls({k: tensors[f"{k}.mean"] for k in names}, {k: tensors[f"{k}.std"] for k in names},
                   tensors["count"])


def compute_emotion_space(understanding, loader, features, num_classes: int, device="cpu") -> EmotionSpace:
    """Accumulate per-emotion sums over the training set (eval mode, float64 sums)."""
    from tqdm.auto import tqdm

    understanding.eval()
    sums, squares, count = {}, {}, torch.zeros(num_classes, dtype=torch.long)
    with torch.no_grad():  # not a decorator: mutmut skips decorated functions
        for batch in tqdm(loader, desc="emotion space", leave=False):
            out = understanding(batch["pixel_values"].to(device))
            labels = batch["label"]
            one_hot = F.one_hot(labels, num_classes).double()
            count += one_hot.sum(0).long()
            for name, value in features_of(out, features).items():
                value = value.double().cpu()
                sums[name] = sums.get(name, 0) + one_hot.T @ value
                squares[name] = squares.get(name, 0) + one_hot.T @ value ** 2
    return EmotionSpace.from_sums(sums, squares, count)


# ---------------------------------------------------------------------------------------------
# Stage 2 as a run: RUN1 + SD + data -> RUN2
# ---------------------------------------------------------------------------------------------

def build_joint_model(run1: str | Path, sd_pipe, cfg, table: CorrelationTable) -> JointModel:
    """The stage-2 model from a stage-1 run directory and a loaded Stable Diffusion pipeline."""
    from uniemo.understanding import UniEmoUnderstanding, load_attributes

    understanding = UniEmoUnderstanding.from_pretrained(run1)
    scene_bank, object_bank = load_attributes(run1)
    diffusion = FrozenDiffusion(sd_pipe, cfg.fusion)
    fusion = UniEmoFusion.for_models(cfg.fusion, understanding, diffusion.prompts)
    return JointModel(understanding, fusion, diffusion, scene_bank, object_bank, table)


@torch.no_grad()
def image_features(clip_model, loader, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen CLIP image features (projection space) and labels of every image in ``loader``."""
    from tqdm.auto import tqdm

    feats, labels = [], []
    for batch in tqdm(loader, desc="CLIP image features", leave=False):
        out = clip_model.get_image_features(pixel_values=batch["pixel_values"].to(device))
        feats.append(getattr(out, "pooler_output", out).float().cpu())
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


def build_table(method: str, train_set, scene_bank, object_bank, clip_bundle, loader, seed: int) -> CorrelationTable:
    """The correlation table P by ``classifier`` (paper) or ``counts`` (SPEC §2)."""
    from uniemo.fusion import table_from_classifier, table_from_counts

    labels = torch.tensor(train_set.labels, dtype=torch.long)
    c = len(train_set.class_names)
    if method == "counts":
        if len(scene_bank.names) + len(object_bank.names) and not any(it.scene or it.object for it in train_set.items):
            raise UniEmoError("--alpha-table counts counts the scenes and objects of the training images, and this "
                              "dataset annotates none: use --alpha-table classifier")
        scene = table_from_counts(labels, scene_bank.index([it.scene for it in train_set.items]), len(scene_bank.names), c)
        obj = table_from_counts(labels, object_bank.index([it.object for it in train_set.items]),
                                len(object_bank.names), c)
    elif method == "classifier":
        features, labels = image_features(clip_bundle.model, loader, next(clip_bundle.model.parameters()).device)
        tables = table_from_classifier(features, labels, {"scene": scene_bank.embeds, "object": object_bank.embeds},
                                       num_classes=c, seed=seed)
        scene, obj = tables["scene"], tables["object"]
    else:
        raise UniEmoError(f"unknown alpha table method {method!r}: choose classifier or counts")
    return CorrelationTable(train_set.class_names, scene_bank.names, scene, object_bank.names, obj, method)


def save_stage2(run_dir: str | Path, model: JointModel, space: EmotionSpace, cfg, image_processor) -> None:
    """RUN2: the understanding run files (the CLIP's ``image_processor`` among them) plus
    fusion.safetensors, alpha_table.json, emotion_space.safetensors and config.yaml."""
    from uniemo.config import save_config
    from uniemo.io import write_json
    from uniemo.understanding import save_attributes, save_image_processor

    model.understanding.save_pretrained(run_dir)
    save_attributes(run_dir, model.scene_bank, model.object_bank)
    save_image_processor(run_dir, image_processor)
    run = RunDir(run_dir)
    save_tensors(run.fusion, model.fusion.state_dict())
    write_json(run.alpha_table, model.table.to_json())
    space.save(run.emotion_space)
    save_config(cfg, run.config)


@torch.no_grad()
def implicit_feedback(run1: str | Path, understanding, data_root, collate, batch_size: int, device,
                      kind: str = "emoset") -> dict:
    """Understanding accuracy after stage 2 vs after stage 1 on val / test (paper Fig. 8): both
    models read each batch as it is decoded."""
    from torch.utils.data import DataLoader

    from uniemo.data import open_dataset, split_exists
    from uniemo.metrics import top1_accuracy
    from uniemo.understanding import UniEmoUnderstanding

    models = {"run1": UniEmoUnderstanding.from_pretrained(run1).to(device), "run2": understanding.eval().to(device)}
    result = {}
    for split in (s for s in ("val", "test") if split_exists(data_root, kind, s)):
        predicted, labels = {name: [] for name in models}, []
        for batch in DataLoader(open_dataset(data_root, kind, split), batch_size=batch_size, collate_fn=collate):
            pixels = batch["pixel_values"].to(device)
            for name, model in models.items():
                predicted[name].append(model(pixels).logits.argmax(-1).cpu())
            labels.append(batch["label"])
        result[split] = {name: top1_accuracy(torch.cat(p), torch.cat(labels)) for name, p in predicted.items()}
    return result


def check_same_emotions(run: str | Path, train_set, data_root,
                        fix: str = "train stage 2 on the dataset stage 1 learned (the same --dataset), or train stage 1 "
                                   "on this one") -> None:
    """A later stage learns the emotions ``run`` learned: its labels index the same class names."""
    from uniemo.understanding import run_class_names

    learned, given = run_class_names(run), tuple(train_set.class_names)
    if learned != given:
        raise UniEmoError(f"{run} was trained on {', '.join(learned)} but {data_root} has {', '.join(given)}: {fix}")


def train_joint(run1: str | Path, data_root: str | Path, out: str | Path, cfg, resume: bool = False,
                kind: str = "emoset") -> dict:
    """Stage 2 end to end: P, L_joint training with the shared loop, emotion space, feedback figure.
    Returns the implicit-feedback figures (also written to OUT/implicit_feedback.json) on the
    main process, None on the others (only the main one writes and evaluates)."""
    from torch.utils.data import DataLoader

    from uniemo.config import save_config
    from uniemo.data import clip_transforms, open_dataset
    from uniemo.io import read_json, write_json
    from uniemo.loading import SD_NAMES, load_clip, load_sd, sd_layout
    from uniemo.training import fit, on_main, param_groups

    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UniEmoError(f"{out} is not empty: pass --resume to continue it, or choose a new --out")
    expert = sorted(set(cfg.fusion.features) & set(ALPHA_FEATURES))
    if cfg.understanding.queries == "none" and expert:
        raise UniEmoError(f"{run1} has no expert queries (queries: none), so there are no {' or '.join(expert)} "
                          "features to fuse: give --config a fusion: {features: [cls]} (or [cls, patch])")
    on_main(lambda: None)  # every process has looked before the main one writes
    if cfg.clip_path is None:
        raise UniEmoError(f"{RunDir(run1).config} records no clip_path: stage 2 needs the CLIP directory of stage 1")
    train_set = open_dataset(data_root, kind, "train")
    check_same_emotions(run1, train_set, data_root)
    clip, sd = load_clip(cfg.clip_path), load_sd(cfg.sd_path)
    cfg.sd_layout = sd_layout(sd)
    on_main(lambda: print(f"found {SD_NAMES[cfg.sd_layout]} in {cfg.sd_path}"))
    eval_collate = JointCollate(clip_transforms(clip.image_processor, train=False))
    batch = cfg.stage2.batch_size
    table_path = RunDir(out).alpha_table
    if resume and table_path.is_file():
        table = CorrelationTable.from_json(read_json(table_path, "alpha table"), table_path)
    else:
        from uniemo.understanding import load_attributes

        loader = DataLoader(train_set, batch_size=batch, collate_fn=eval_collate)
        table = build_table(cfg.fusion.alpha_table, train_set, *load_attributes(run1), clip, loader, cfg.stage2.seed)
        on_main(lambda: write_json(table_path, table.to_json()))
    on_main(lambda: save_config(cfg, RunDir(out).config))
    torch.manual_seed(cfg.stage2.seed)  # the mappers' initial weights: the same in every process and run
    model = build_joint_model(run1, sd, cfg, table)
    vae_size = cfg.generation.resolution or sd.unet.config.sample_size * sd.vae_scale_factor
    if cfg.fusion.cache_latents:
        from accelerate import PartialState

        model.diffusion.posteriors = cache_posteriors(sd.vae, train_set, vae_size, batch, PartialState().device)
    collate = JointCollate(clip_transforms(clip.image_processor, train=True),
                           None if cfg.fusion.cache_latents else vae_size)
    groups = param_groups(model, cfg.stage2.optim, backbone=model.understanding.backbone, mappers=model.fusion.mappers)
    fit(out, model, train_set, collate, joint_step, cfg.stage2, groups, resume=resume, desc="joint")

    def finish() -> dict:
        device = next(model.parameters()).device
        loader = DataLoader(train_set, batch_size=batch, collate_fn=eval_collate)
        space = compute_emotion_space(model.understanding, loader, cfg.fusion.features, len(train_set.class_names),
                                      device)
        save_stage2(out, model, space, cfg, clip.image_processor)
        feedback = implicit_feedback(run1, model.understanding, data_root, eval_collate, batch, device, kind)
        write_json(RunDir(out).implicit_feedback, feedback)
        return feedback

    return on_main(finish)
