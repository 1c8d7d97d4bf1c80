"""The hierarchical emotional understanding chain with expert queries (paper §III-A, SPEC §1).

A CLIP vision tower of N layers is run layer by layer so that learnable expert queries can be
inserted into its token sequence. Token layout (B = batch, P = 1 + patches, q = query_len)::

    layers 1..L1        [CLS, patches, Q_scene]                      eq. 1
    Interactive Block   Q_scene, patches -> Q~_scene                 eq. 2
    beta modulation     Q^_scene = Q_scene + beta * Q~_scene         eq. 3
    layers L1+1..L2     [CLS, patches, Q^_scene, Q_object]
    Interactive Block + beta on Q_object
    layers L2+1..N      [CLS, patches, Q^_scene, Q^_object]

``queries="none"`` is plain CLIP fine-tuning with the same head; ``queries="single-step"``
(paper Fig. 6) inserts both query sets at the input, keeping both Interactive Blocks at L1 and
L2, so the insertion point is the only thing the ablation changes.

The pooled scene / object vectors (means of Q^ right after their Interactive Block) are
projected into the CLIP text-embedding space and contrasted with the frozen text tower's
embedding of the image's scene / object name (eq. 4). The emotion head reads the
post-layernorm CLS token after layer N.

Run-directory files written by :meth:`UniEmoUnderstanding.save_pretrained`:
``vision_config.json`` (the CLIP vision config), ``model.safetensors`` (all weights, backbone
included) and ``understanding.json`` (the UnderstandingConfig, text width and class names), so
:meth:`UniEmoUnderstanding.from_pretrained` needs no CLIP directory. The full ``config.yaml``
(clip_path, training settings) is written by the command that trains the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ModuleUtilsMixin  # .device and .dtype, as diffusers pipelines expect

from uniemo.config import UnderstandingConfig, from_dict, load_config, to_dict
from uniemo.errors import UniEmoError
from uniemo.io import load_state_dict_checked, load_tensors, read_json, save_tensors, write_json
from uniemo.rundir import RunDir
from uniemo.vocab import EMOTIONS, normalise_attribute

QUERY_MODES = ("none", "single-step", "multi-stage")
ATTRIBUTE_PROMPT = "a photo of a {}"


class CrossAttention(nn.Module):
    """Multi-head attention where queries read a context that is not updated."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise UniEmoError(f"interactive_heads={heads} does not divide the width {dim}: choose a divisor")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, return_weights: bool = False):
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(context)), self._split(self.v_proj(context))
        weights = None
        if return_weights:
            weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, heads, q, ctx)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out), weights


class InteractiveLayer(nn.Module):
    """One layer of eq. 2: Q = Q + A(LN(Q), LN(T)); Q = Q + F(LN(Q))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries, patches, return_weights: bool = False):
        attended, weights = self.attn(self.norm_q(queries), self.norm_ctx(patches), return_weights)
        queries = queries + attended
        queries = queries + self.ffn(self.norm_ffn(queries))
        return queries, weights


class InteractiveBlock(nn.Module):
    """The Interactive Block (eq. 2): a compact transformer whose queries read the patch tokens,
    followed by the beta modulation of eq. 3, Q^ = Q + beta * Q~ (beta: per-channel, learnable)."""

    def __init__(self, dim: int, heads: int, layers: int, beta_init: float):
        super().__init__()
        self.layers = nn.ModuleList(InteractiveLayer(dim, heads) for _ in range(layers))
        self.beta = nn.Parameter(torch.full((dim,), float(beta_init)))

    def forward(self, queries, patches, return_weights: bool = False):
        """-> (Q^ (B, q, D), attention over patches averaged over layers, queries, heads (B, patches) or None)."""
        refined, maps = queries, []
        for layer in self.layers:
            refined, weights = layer(refined, patches, return_weights)
            if return_weights:
                maps.append(weights.mean(dim=(1, 2)))
        attention = torch.stack(maps).mean(dim=0) if return_weights else None
        return queries + self.beta * refined, attention


@dataclass
class UnderstandingOutput:
    logits: torch.Tensor  # (B, C)
    cls: torch.Tensor  # (B, D) post-layernorm CLS after layer N
    scene: torch.Tensor  # (B, D) mean of Q^_scene after its Interactive Block (zeros for queries="none")
    object: torch.Tensor  # (B, D) mean of Q^_object after its Interactive Block
    scene_embed: torch.Tensor  # (B, P) projected into the CLIP text space, L2-normalised
    object_embed: torch.Tensor  # (B, P)
    attentions: dict[str, torch.Tensor] | None = None  # "scene" / "object": (B, grid, grid)
    patch: torch.Tensor | None = None  # (B, D) mean of the patch tokens after layer N (fusion's "+patch", Table V)


def default_stages(num_layers: int, stages: list[int] | None) -> tuple[int, int]:
    """[L1, L2] from the config, or N/3 and 2N/3; must satisfy 1 <= L1 < L2 <= N."""
    l1, l2 = stages if stages is not None else (max(1, num_layers // 3), max(2, 2 * num_layers // 3))
    if not 1 <= l1 < l2 <= num_layers:
        raise UniEmoError(f"understanding.stages={[l1, l2]} is invalid for a {num_layers}-layer backbone: "
                          f"need 1 <= L1 < L2 <= {num_layers}")
    return l1, l2


class UniEmoUnderstanding(ModuleUtilsMixin, nn.Module):
    """UniEmo's understanding branch around a ``CLIPVisionModel`` (paper §III-A)."""

    def __init__(self, vision_model, cfg: UnderstandingConfig, text_dim: int, class_names=None):
        super().__init__()
        if cfg.queries not in QUERY_MODES:
            raise UniEmoError(f"understanding.queries={cfg.queries!r} is unknown: choose one of {', '.join(QUERY_MODES)}")
        self.cfg = cfg
        self.text_dim = text_dim
        self.class_names = tuple(class_names) if class_names else default_class_names(cfg.num_classes)
        if len(self.class_names) != cfg.num_classes:
            raise UniEmoError(f"{len(self.class_names)} class names for num_classes={cfg.num_classes}: make them agree")
        vision_model.set_attn_implementation("sdpa")
        self.vision = vision_model
        vc = vision_model.config
        dim, self.num_layers = vc.hidden_size, vc.num_hidden_layers
        self.grid = vc.image_size // vc.patch_size
        self.stages = default_stages(self.num_layers, cfg.stages)
        if cfg.queries != "none":
            heads = cfg.interactive_heads or vc.num_attention_heads
            # std 0.02, like the learned query tokens of DETR / BLIP-2
            self.scene_queries = nn.Parameter(torch.randn(cfg.query_len, dim) * 0.02)
            self.object_queries = nn.Parameter(torch.randn(cfg.query_len, dim) * 0.02)
            self.scene_block = InteractiveBlock(dim, heads, cfg.interactive_layers, cfg.beta_init)
            self.object_block = InteractiveBlock(dim, heads, cfg.interactive_layers, cfg.beta_init)
            self.scene_proj = nn.Linear(dim, text_dim)
            self.object_proj = nn.Linear(dim, text_dim)
        self.emotion_head = nn.Sequential(
            nn.Linear(dim, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.head_dropout),
            nn.Linear(cfg.head_hidden, cfg.num_classes))

    @property
    def backbone(self) -> nn.Module:
        """The CLIP vision tower (its own learning rate, ``optim.backbone_lr``)."""
        return self.vision

    def _run_layers(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.vision.encoder.layers[start:stop]:
            h = layer(h, None)
        return h

    def _expand(self, queries: nn.Parameter, batch: int) -> torch.Tensor:
        return queries.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False) -> UnderstandingOutput:
        """Eqs. 1-3 through the whole chain, then the emotion head on CLS."""
        h = self.vision.pre_layrnorm(self.vision.embeddings(pixel_values))
        b, p = h.shape[0], h.shape[1]
        attentions = None
        if self.cfg.queries == "none":
            h = self._run_layers(h, 0, self.num_layers)
            scene = obj = h.new_zeros(b, h.shape[-1])
        else:
            q = self.cfg.query_len
            l1, l2 = self.stages
            single = self.cfg.queries == "single-step"
            inputs = [h, self._expand(self.scene_queries, b)]
            if single:
                inputs.append(self._expand(self.object_queries, b))
            h = self._run_layers(torch.cat(inputs, dim=1), 0, l1)
            scene_hat, scene_map = self.scene_block(h[:, p:p + q], h[:, 1:p], output_attentions)
            tail = [h[:, p + q:]] if single else [self._expand(self.object_queries, b)]
            h = self._run_layers(torch.cat([h[:, :p], scene_hat, *tail], dim=1), l1, l2)
            object_hat, object_map = self.object_block(h[:, p + q:], h[:, 1:p], output_attentions)
            h = self._run_layers(torch.cat([h[:, :p + q], object_hat], dim=1), l2, self.num_layers)
            scene, obj = scene_hat.mean(dim=1), object_hat.mean(dim=1)
            if output_attentions:
                attentions = {"scene": self._as_grid(scene_map), "object": self._as_grid(object_map)}
        cls = self.vision.post_layernorm(h[:, 0])
        return UnderstandingOutput(
            logits=self.emotion_head(cls), cls=cls, scene=scene, object=obj,
            scene_embed=self._project("scene", scene), object_embed=self._project("object", obj),
            attentions=attentions, patch=h[:, 1:p].mean(dim=1))

    def _project(self, kind: str, pooled: torch.Tensor) -> torch.Tensor:
        if self.cfg.queries == "none":
            return pooled.new_zeros(pooled.shape[0], self.text_dim)
        return F.normalize(getattr(self, f"{kind}_proj")(pooled), dim=-1)

    def _as_grid(self, attention: torch.Tensor) -> torch.Tensor:
        return attention.reshape(attention.shape[0], self.grid, self.grid)

    def loss(self, out: UnderstandingOutput, labels: torch.Tensor, scene_idx: torch.Tensor,
             object_idx: torch.Tensor, scene_bank: AttributeBank, object_bank: AttributeBank) -> dict:
        """L_U = w_S·L_S + w_O·L_O + w_cls·L_cls (SPEC §1); L_S, L_O are eq. 4. ``*_idx`` index
        the banks, -1 where the image has no such attribute."""
        w_s, w_o, w_cls = self.cfg.loss_weights
        terms = {"cls": F.cross_entropy(out.logits, labels)}
        if self.cfg.queries == "none":
            terms["scene"] = terms["object"] = out.logits.new_zeros(())
        else:
            terms["scene"] = attribute_contrastive_loss(out.scene_embed, scene_idx, scene_bank, self.cfg.temperature)
            terms["object"] = attribute_contrastive_loss(out.object_embed, object_idx, object_bank,
                                                         self.cfg.temperature)
        terms["total"] = w_s * terms["scene"] + w_o * terms["object"] + w_cls * terms["cls"]
        return terms

    def save_pretrained(self, run_dir: str | Path) -> None:
        """Write vision_config.json, understanding.json and model.safetensors into ``run_dir``."""
        run = RunDir(run_dir)
        write_json(run.vision_config, self.vision.config.to_dict())
        write_json(run.understanding, {
            "config": to_dict(self.cfg), "text_dim": self.text_dim, "class_names": list(self.class_names)})
        save_tensors(run.weights, self.state_dict())

    @classmethod
    def from_pretrained(cls, run_dir: str | Path) -> UniEmoUnderstanding:
        """Load a run written by :meth:`save_pretrained`; needs no CLIP directory."""
        from transformers import CLIPVisionConfig, CLIPVisionModel

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UniEmoError(f"{run_dir} is not a directory: expected a run made by `uniemo train understand`")
        run = RunDir(run_dir)
        if run.config.is_file():
            load_config(run.config)  # refuses a run of a newer uniemo, or a malformed config
        meta = read_json(run.understanding, "understanding config (a run made by `uniemo train understand`)")
        vision_cfg = read_json(run.vision_config, "CLIP vision config")
        try:
            cfg = from_dict(UnderstandingConfig, meta["config"], where=f"{run_dir}/understanding.json")
            text_dim, class_names = int(meta["text_dim"]), meta["class_names"]
            vision = CLIPVisionModel(CLIPVisionConfig(**vision_cfg))
        except (KeyError, TypeError, ValueError) as e:
            raise UniEmoError(f"{run_dir}: understanding.json / vision_config.json are malformed ({e}); "
                              "re-run `uniemo train understand`") from None
        model = cls(vision, cfg, text_dim, class_names)
        load_state_dict_checked(model, load_tensors(run.weights, "model weights"), run.weights)
        return model.eval()


def run_class_names(run_dir: str | Path, made_by: str = "uniemo train understand") -> tuple[str, ...]:
    """The emotions a run's understanding branch predicts, read without loading its weights
    (``made_by``: the command whose runs the caller takes, named if ``run_dir`` is none)."""
    meta = read_json(RunDir(run_dir).understanding, f"understanding config (a run made by `{made_by}`)")
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UniEmoError(f"{run_dir}: understanding.json lists no class names; re-run `uniemo train understand`")
    return tuple(names)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == len(EMOTIONS):
        return EMOTIONS
    return tuple(f"class_{i}" for i in range(num_classes))


def attribute_contrastive_loss(embed: torch.Tensor, idx: torch.Tensor, bank: AttributeBank,
                               temperature: float) -> torch.Tensor:
    """Eq. 4 over the images that carry the attribute. The candidates are the distinct
    attribute names present in the batch, so two images sharing a name are never each other's
    negative. Zero (still in the graph, as DDP needs) when no image carries one."""
    valid = idx >= 0
    if not bool(valid.any()):
        return embed.sum() * 0.0
    names, target = torch.unique(idx[valid], return_inverse=True)
    text = bank.embeds.to(embed.device, embed.dtype)[names]
    logits = embed[valid] @ text.T / temperature
    return F.cross_entropy(logits, target)


@dataclass
class AttributeBank:
    """Scene or object names with the frozen CLIP text tower's L2-normalised embeddings (V, P)."""

    names: list[str]
    embeds: torch.Tensor

    def __post_init__(self):
        self._index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    @torch.no_grad()
    def encode(cls, clip_bundle, names, batch_size: int = 256) -> AttributeBank:
        """Embed ``"a photo of a <name>"`` for every (normalised) name with ``get_text_features``."""
        names = sorted({normalise_attribute(n) for n in names})
        model, tokenizer = clip_bundle.model, clip_bundle.tokenizer
        device = next(model.parameters()).device
        chunks = []
        for start in range(0, len(names), batch_size):
            prompts = [ATTRIBUTE_PROMPT.format(n) for n in names[start:start + batch_size]]
            tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
            features = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            features = getattr(features, "pooler_output", features)
            chunks.append(F.normalize(features.float(), dim=-1).cpu())
        dim = model.config.projection_dim
        return cls(names, torch.cat(chunks) if chunks else torch.zeros(0, dim))

    def nearest(self, embeds: torch.Tensor, top: int = 1) -> list[dict[str, float]]:
        """Per row of ``embeds`` (B, P), projected expert-query embeddings: the ``top`` names
        nearest to it, with their cosine (eq. 4's similarity), best first; {} for an empty bank."""
        if not len(self.names):
            return [{} for _ in embeds]
        best = (embeds.float().cpu() @ self.embeds.float().T).topk(min(top, len(self.names)))
        return [{self.names[i]: round(float(s), 4) for s, i in zip(values, indices)}
                for values, indices in zip(best.values, best.indices.tolist())]

    def index(self, names) -> torch.Tensor:
        """Bank rows of ``names`` (None or a name not in the bank -> -1)."""
        return torch.tensor([self._index.get(normalise_attribute(n), -1) if n else -1 for n in names],
                            dtype=torch.long)


def save_attributes(run_dir: str | Path, scene: AttributeBank, obj: AttributeBank) -> None:
    """RUN/attributes.json (names) + RUN/attributes.safetensors (embeddings)."""
    run = RunDir(run_dir)
    save_tensors(run.attribute_embeds, {"scene": scene.embeds, "object": obj.embeds})
    write_json(run.attribute_names, {"scene": scene.names, "object": obj.names})


def load_attributes(run_dir: str | Path) -> tuple[AttributeBank, AttributeBank]:
    """(scene bank, object bank) saved with a run."""
    run = RunDir(run_dir)
    names = read_json(run.attribute_names, "attribute names")
    embeds = load_tensors(run.attribute_embeds, "attribute embeddings")
    banks = []
    for kind in ("scene", "object"):
        if kind not in names or kind not in embeds or len(names[kind]) != embeds[kind].shape[0]:
            raise UniEmoError(f"{run_dir}/attributes.*: {kind} names and embeddings disagree; "
                              "re-run `uniemo train understand`")
        banks.append(AttributeBank(list(names[kind]), embeds[kind]))
    return banks[0], banks[1]


# ----------------------------------------------------------------------------- use of a trained branch


def stage1_step(scene_bank: AttributeBank, object_bank: AttributeBank):
    """The ``step_fn`` of stage 1 for :func:`uniemo.training.fit`: L_U and batch accuracy."""
    from uniemo.training import unwrap

    def step(model, batch, _step):
        out = model(batch["pixel_values"])
        labels, device = batch["label"], out.logits.device
        terms = unwrap(model).loss(out, labels, scene_bank.index(batch["scene"]).to(device),
                                   object_bank.index(batch["object"]).to(device), scene_bank, object_bank)
        acc = (out.logits.argmax(-1) == labels).float().mean()
        return terms["total"], {"acc": acc, "l_scene": terms["scene"], "l_object": terms["object"],
                                "l_cls": terms["cls"]}

    return step


@torch.no_grad()
def predict(model: UniEmoUnderstanding, dataset, batch_size: int = 64, num_workers: int = 0,
            desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, C), labels (N,)) of ``model`` over ``dataset`` in eval mode."""
    from tqdm.auto import tqdm

    from uniemo.data import collate

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    probs, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        probs.append(model(batch["pixel_values"].to(device)).logits.float().softmax(-1).cpu())
        labels.append(batch["label"])
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def accuracy_on(model: UniEmoUnderstanding, dataset, batch_size: int = 64, num_workers: int = 0) -> dict:
    """Top-1, per-class, 2-class accuracy and confusion matrix of ``model`` on ``dataset``.

    The model's classes and the dataset's must agree by name (an EmoSet run on FI is the
    zero-shot protocol of paper Table III), or the dataset must be positive/negative, which an
    8-emotion model reaches through the 8 -> 2 map of SPEC §0."""
    from uniemo.metrics import accuracy_report
    from uniemo.vocab import BINARY, to_binary

    model_names, data_names = tuple(model.class_names), tuple(dataset.class_names)
    binary_via_map = data_names == BINARY and model_names == EMOTIONS
    if model_names != data_names and not binary_via_map:
        raise UniEmoError(
            f"the run predicts {', '.join(model_names)} but the dataset has {', '.join(data_names)}, and there is no "
            "map between them (only the 8 EmoSet emotions -> positive/negative exists); "
            "train a run on this dataset (`uniemo train understand --dataset ...`) to evaluate on it")
    probs, labels = predict(model, dataset, batch_size, num_workers, desc="evaluate")
    preds = probs.argmax(-1)
    if binary_via_map:
        preds = torch.tensor([to_binary(p) for p in preds.tolist()], dtype=torch.long)
    report = accuracy_report(preds, labels, data_names)
    report["protocol"] = "8->2 map" if binary_via_map else "same classes"
    return report


def save_image_processor(run_dir: str | Path, processor) -> None:
    """The run's CLIP image processor, as ``save_pretrained`` writes it but atomically: a run
    carries its own preprocessing and needs the CLIP directory only to train on."""
    from uniemo.io import write_text

    write_text(RunDir(run_dir).image_processor, processor.to_json_string())


def load_image_processor(run_dir: str | Path):
    """The CLIP image processor saved with a run, else the one of the CLIP directory it records."""
    from transformers import CLIPImageProcessor

    run_dir = Path(run_dir)
    source = run_dir
    run = RunDir(run_dir)
    if not run.image_processor.is_file():
        clip_path = load_config(run.config).clip_path
        if clip_path is None or not (Path(clip_path) / "preprocessor_config.json").is_file():
            raise UniEmoError(f"no preprocessor_config.json in {run_dir} or in the CLIP directory it records: "
                              "expected a run made by `uniemo train understand`")
        source = Path(clip_path)
    return CLIPImageProcessor.from_pretrained(str(source), local_files_only=True)


def train_understanding(data_root: str | Path, out: str | Path, cfg, kind: str = "emoset",
                        resume: bool = False, train_set=None, init_from: str | Path | None = None) -> dict:
    """Stage 1: train the understanding branch on ``data_root`` (or on ``train_set``, e.g. the
    feedback mix of stage 3) and write the run directory. The weights kept are those with the
    best validation accuracy; val and test are evaluated at the end (test is never used to
    choose). ``init_from`` (a run directory) starts from that run's understanding weights
    instead of CLIP's: stage 3 "trains again" the stage-2 model. Returns {"val": report,
    "test": report} for the splits that exist on the main process, None on the others (with
    several processes only the main one writes and evaluates)."""
    from uniemo.config import save_config
    from uniemo.data import clip_transforms, collate, open_dataset, split_exists
    from uniemo.io import write_json
    from uniemo.loading import load_clip
    from uniemo.training import fit, on_main, param_groups

    out = Path(out)
    if RunDir(out).config.is_file() and not resume:
        raise UniEmoError(f"{out} already holds a run: pass --resume to continue it, or choose a new --out")
    on_main(lambda: None)  # every process has looked before the main one writes
    if cfg.clip_path is None:
        raise UniEmoError("no CLIP directory given: pass --clip DIR")
    clip = load_clip(cfg.clip_path)
    eval_tf = clip_transforms(clip.image_processor, train=False)
    if train_set is None:
        train_set = open_dataset(data_root, kind, "train", clip_transforms(clip.image_processor, train=True))
    splits = {s: open_dataset(data_root, kind, s, eval_tf) for s in ("val", "test") if split_exists(data_root, kind, s)}
    cfg.understanding.num_classes = len(train_set.class_names)
    scene_bank = AttributeBank.encode(clip, [*train_set.scene_vocab, *(i.scene for i in train_set.items if i.scene)])
    object_bank = AttributeBank.encode(clip, [*train_set.object_vocab, *(i.object for i in train_set.items if i.object)])

    torch.manual_seed(cfg.stage1.seed)
    model = UniEmoUnderstanding(clip.model.vision_model, cfg.understanding, clip.model.config.projection_dim,
                                train_set.class_names)
    if init_from is not None:
        weights = RunDir(init_from).weights
        load_state_dict_checked(model, load_tensors(weights, "initial understanding weights"), weights)
    del clip.model.text_model  # the text tower's job ends with the attribute banks

    def write_run_files() -> None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, RunDir(out).config)
        save_image_processor(out, clip.image_processor)
        save_attributes(out, scene_bank, object_bank)

    on_main(write_run_files)

    def evaluate(m):
        return {"val_top1": accuracy_on(m, splits["val"], cfg.stage1.batch_size)["top1"]} if "val" in splits else {}

    fit(out, model, train_set, collate, stage1_step(scene_bank, object_bank), cfg.stage1,
        param_groups(model, cfg.stage1.optim, model.backbone), evaluate=evaluate if "val" in splits else None,
        on_best=lambda m, line: m.save_pretrained(out), resume=resume, desc="stage 1")

    def final_evaluation() -> dict:
        from uniemo.metrics import default_device

        best = UniEmoUnderstanding.from_pretrained(out).to(default_device())
        reports = {split: accuracy_on(best, ds, cfg.stage1.batch_size) for split, ds in splits.items()}
        write_json(RunDir(out).eval, reports)
        return reports

    return on_main(final_evaluation)
