"""Understanding-guided fusion and alignment (paper §III-B, SPEC §2).

The understanding branch gives, per image, a CLS feature and pooled scene / object expert
queries. Here they become one condition vector ``e`` in the text encoder's token-embedding
space, which replaces a placeholder token (``<emo>``) in the prompt:

    e = M_cls(cls) + α_S · M_scene(q_S) + α_O · M_object(q_O)        (SPEC §2, fused condition)

then rescaled to the mean norm of the text encoder's token embeddings, so the frozen text
encoder reads ``e`` like a word (see :class:`UniEmoFusion`).

α is the emotional correlation coefficient of the attribute the query matches best:
a* = argmax_a cos(proj(q), T(a)) in the contrastive text space (eq. 4), α = P[a*][y].
The paper's equations for α and L_cond are missing from its copy; SPEC §2 defines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ModuleUtilsMixin  # .device and .dtype, as diffusers pipelines expect

from uniemo.config import FusionConfig
from uniemo.errors import UniEmoError

FEATURES = ("cls", "scene", "object", "patch")
ALPHA_FEATURES = ("scene", "object")  # the expert queries; cls and patch always enter with weight 1


# ---------------------------------------------------------------------------------------------
# The emotional correlation coefficient table P (SPEC §2)
# ---------------------------------------------------------------------------------------------

@dataclass
class CorrelationTable:
    """P[attribute] ∈ Δ^C for every scene and object name: rows are distributions over emotions."""

    emotions: tuple[str, ...]
    scene_names: list[str]
    scene: torch.Tensor  # (V_S, C)
    object_names: list[str]
    object: torch.Tensor  # (V_O, C)
    method: str

    def rows(self, kind: str) -> tuple[list[str], torch.Tensor]:
        return (self.scene_names, self.scene) if kind == "scene" else (self.object_names, self.object)

    def to_json(self) -> dict:
        def rows(names, table):
            return {name: [round(float(v), 6) for v in row] for name, row in zip(names, table)}

        return {"method": self.method, "emotions": list(self.emotions),
                "scene": rows(self.scene_names, self.scene), "object": rows(self.object_names, self.object)}

    @classmethod
    def from_json(cls, data: dict, source: str | Path) -> "CorrelationTable":
        try:
            emotions = tuple(data["emotions"])
            tables = {kind: (list(data[kind]), torch.tensor([data[kind][n] for n in data[kind]], dtype=torch.float32)
                             .reshape(-1, len(emotions))) for kind in ALPHA_FEATURES}
            return cls(emotions, *tables["scene"], *tables["object"], method=str(data["method"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UniEmoError(f"malformed alpha table {source} ({e}); re-run `uniemo train joint`") from None

    def top(self, kind: str, emotion: int, k: int) -> list[tuple[str, float]]:
        """The k attributes of ``kind`` most associated with ``emotion``."""
        names, table = self.rows(kind)
        if not names:
            return []
        values, idx = table[:, emotion].topk(min(k, len(names)))
        return [(names[i], float(v)) for i, v in zip(idx.tolist(), values)]


def table_from_counts(labels: torch.Tensor, attribute_idx: torch.Tensor, vocab_size: int, num_classes: int,
                      smoothing: float = 1.0) -> torch.Tensor:
    """P by counting: the Laplace-smoothed emotion distribution of the training images that carry
    each attribute (``attribute_idx`` = -1 where an image has none). An unseen attribute gets the
    uniform distribution."""
    keep = attribute_idx >= 0
    counts = torch.zeros(vocab_size, num_classes)
    counts.index_put_((attribute_idx[keep], labels[keep]), torch.ones(int(keep.sum())), accumulate=True)
    counts += smoothing
    return counts / counts.sum(dim=1, keepdim=True)


def table_from_classifier(image_features: torch.Tensor, labels: torch.Tensor, text_embeds: dict[str, torch.Tensor],
                          num_classes: int, hidden: int = 512, steps: int = 300, lr: float = 1e-3,
                          seed: int = 0) -> dict[str, torch.Tensor]:
    """P the paper's way: a 2-layer emotion classifier trained on frozen CLIP image features,
    applied to the CLIP text embedding of each attribute name, then softmax. Both inputs are
    L2-normalised vectors of CLIP's shared projection space, so the classifier reads either."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = nn.Sequential(nn.Linear(image_features.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    features = F.normalize(image_features.float(), dim=-1)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-3)
    batch = min(256, len(features))
    for _ in range(steps):
        idx = torch.randint(len(features), (batch,), generator=generator)
        loss = F.cross_entropy(classifier(features[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return {kind: classifier(F.normalize(embeds.float(), dim=-1)).softmax(-1) if len(embeds) else
                torch.zeros(0, num_classes) for kind, embeds in text_embeds.items()}


def match_alpha(embed: torch.Tensor, bank_embeds: torch.Tensor, table: torch.Tensor,
                emotion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α for each sample: a* = argmax_a cos(embed, T(a)), α = P[a*][y] (SPEC §2). ``embed`` is the
    projected query (B,P), ``bank_embeds`` the attribute text embeddings (V,P). Returns (α (B,),
    a* (B,)); no gradient flows through α."""
    with torch.no_grad():  # the query's own norm scales its row of cosines only: argmax needs the bank's
        best = (embed.float() @ F.normalize(bank_embeds.to(embed.device).float(), dim=-1).T).argmax(dim=-1)
        return table.to(embed.device)[best, emotion.to(embed.device)], best


# ---------------------------------------------------------------------------------------------
# Mappers and the fused condition
# ---------------------------------------------------------------------------------------------

class Mapper(nn.Sequential):
    """A 2-layer MLP with ReLU from the vision width to the text encoder's token-embedding width."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class UniEmoFusion(ModuleUtilsMixin, nn.Module):
    """The mappers M_cls, M_scene, M_object (+ M_patch for the Table V ablation) and the
    back-projection that lets L_cond read ``e`` with the emotion head's classifier.

    ``e`` is rescaled to the mean norm of the frozen text encoder's token embeddings. For SD XL,
    ``e`` spans both text encoders' token widths (768 + 1280): one mapper per feature whose
    output is split, each part rescaled to its own encoder's token norm (``widths``,
    ``token_norms``). Nothing else bounds its scale, and L_cond's cross-entropy falls as ``e`` grows:
    left free, e reached norms of 5-16 against 0.19 for real tokens in the embedded default, the
    text encoder saturated, and L_diff stayed flat (docs/DECISIONS.md). The direction of ``e``
    carries the condition; α still weighs the three mapped features inside it."""

    def __init__(self, cfg: FusionConfig, vision_dim: int, text_dims: int | Sequence[int], head_hidden: int,
                 token_norms: float | Sequence[float] = 1.0):
        super().__init__()
        unknown = sorted(set(cfg.features) - set(FEATURES))
        if unknown or "cls" not in cfg.features:
            raise UniEmoError(f"fusion.features {cfg.features} is invalid: use 'cls' plus any of scene, object, patch")
        if cfg.cond_loss not in ("cond", "ce"):
            raise UniEmoError(f"fusion.cond_loss {cfg.cond_loss!r} is invalid: choose cond or ce")
        self.cfg = cfg
        self.widths = [text_dims] if isinstance(text_dims, int) else list(text_dims)
        norms = [token_norms] * len(self.widths) if isinstance(token_norms, (int, float)) else list(token_norms)
        width = sum(self.widths)
        hidden = cfg.mapper_hidden or width
        self.mappers = nn.ModuleDict({name: Mapper(vision_dim, hidden, width) for name in cfg.features})
        self.cond_proj = nn.Linear(width, head_hidden)
        self.register_buffer("token_norms", torch.tensor(norms, dtype=torch.float32), persistent=False)

    @classmethod
    def for_models(cls, cfg: FusionConfig, understanding, prompts: "PromptEncoder") -> "UniEmoFusion":
        """The fusion between an understanding model and a (frozen) SD's text encoder(s)."""
        return cls(cfg, understanding.vision.config.hidden_size, prompts.widths, understanding.cfg.head_hidden,
                   prompts.token_norms())

    def forward(self, features: dict[str, torch.Tensor], alphas: dict[str, torch.Tensor] | None = None,
                object_named: torch.Tensor | None = None) -> torch.Tensor:
        """e = Σ_f α_f · M_f(feature_f) over the configured features, rescaled to the token norm;
        α = 1 for cls and patch, and for every feature when ``use_alpha`` is off. Where
        ``object_named`` (B,) is true the prompt names the object ("<emo> a house", emotion
        transfer): the object term is left out, as the word carries the object."""
        e = 0
        for name, mapper in self.mappers.items():
            mapped = mapper(features[name])
            if self.cfg.use_alpha and name in ALPHA_FEATURES and alphas is not None:
                mapped = alphas[name].to(mapped.dtype).unsqueeze(-1) * mapped
            if name == "object" and object_named is not None:
                mapped = torch.where(object_named.to(mapped.device).unsqueeze(-1), 0.0, mapped)
            e = e + mapped
        return self.at_token_norm(e)

    def at_token_norm(self, e: torch.Tensor) -> torch.Tensor:
        """``e`` rescaled to the token norm, each text encoder's part to its own: a fused condition,
        or a mix Σ_k w_k e_k of them (paper Fig. 10b), which is shorter than the e_k it mixes."""
        parts = e.split(self.widths, dim=-1)
        return torch.cat([norm.to(e.dtype) * F.normalize(part, dim=-1) for norm, part in zip(self.token_norms, parts)],
                         dim=-1)

    def condition_loss(self, e: torch.Tensor, labels: torch.Tensor, classifier: nn.Linear,
                       understanding_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_cond (SPEC §2): CE of the emotion head's classifier on e, plus (``cond_loss: cond``) a
        cosine-triplet margin term.

        How e meets the head: e lives in the text encoder's token-embedding width, the classifier
        (``emotion_head[-1]``) reads the head's hidden layer (post-ReLU). A learned linear
        back-projection followed by the same ReLU, e' = ReLU(R e), puts e where the classifier's
        inputs live, so the *shared* classifier judges e exactly as it judges images.

        Emotion anchors: the classifier's weight rows w_k — the directions it scores emotion k by,
        in the same space as e'. Hardest wrong emotion n = argmax_{k≠y} of the understanding
        branch's logits for the image. The margin term is
        max(0, m − cos(e', w_y) + cos(e', w_n)), m = 0.5, with the anchors detached so it moves e,
        not the classifier."""
        e_head = F.relu(self.cond_proj(e))
        ce = F.cross_entropy(classifier(e_head), labels)
        if self.cfg.cond_loss == "ce":
            return {"cond": ce, "cond_ce": ce.detach()}
        anchors = F.normalize(classifier.weight.detach(), dim=-1)
        wrong = understanding_logits.detach().scatter(1, labels[:, None], float("-inf")).argmax(dim=-1)
        cos = F.normalize(e_head, dim=-1) @ anchors.T
        margin = F.relu(self.cfg.margin - cos.gather(1, labels[:, None]) + cos.gather(1, wrong[:, None])).mean()
        return {"cond": ce + margin, "cond_ce": ce.detach(), "cond_margin": margin.detach()}


# ---------------------------------------------------------------------------------------------
# Injection at the placeholder token
# ---------------------------------------------------------------------------------------------

def add_placeholder(tokenizer, placeholder: str) -> int:
    """Register ``placeholder`` as one token; its id is never looked up in the embedding table."""
    tokenizer.add_tokens([placeholder], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(placeholder)


def token_norm(text_encoder) -> float:
    """Mean L2 norm of the text encoder's token-embedding rows: the scale of a word to it."""
    return float(text_encoder.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length, as Stable Diffusion encodes its prompts."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def transfer_prompt(template: str, placeholder: str, object: str) -> str:
    """The emotion-transfer prompt (paper Fig. 10a) from the ``fusion.transfer_prompt`` template,
    e.g. "{placeholder} {article} {object}" -> "<emo> an umbrella"."""
    check_transfer_prompt(template)
    return template.format(placeholder=placeholder, object=object, article="an" if object[0].lower() in "aeiou" else "a")


def check_transfer_prompt(template: str) -> None:
    """``fusion.transfer_prompt`` must name the placeholder and the object, and no other field."""
    try:
        filled = template.format(placeholder="\0", object="\1", article="a")
        problem = None if "\0" in filled and "\1" in filled else "no {placeholder} or no {object}"
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem:
        raise UniEmoError(f"fusion.transfer_prompt {template!r} is not a valid template ({problem}): use the fields "
                          "{placeholder} and {object}, optionally {article}, e.g. \"{placeholder} {article} {object}\"")


def check_word(tokenizer, word: str, placeholder_id: int) -> None:
    """A prompt word must encode to real vocabulary tokens (no unknown token, not the placeholder)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids or placeholder_id in ids or tokenizer.unk_token_id in ids:
        raise UniEmoError(f"object {word!r} cannot be encoded by the tokenizer: use plain words, e.g. bench, cup, room")


def placeholder_positions(input_ids: torch.Tensor, placeholder_id: int) -> torch.Tensor:
    """(B,L) bool: where each prompt holds the placeholder; a prompt without it is refused."""
    is_placeholder = input_ids == placeholder_id
    if not bool(is_placeholder.any(dim=1).all()):
        raise UniEmoError("every prompt must contain the placeholder token once; check fusion.placeholder")
    return is_placeholder


def inject(text_encoder, input_ids: torch.Tensor, placeholder_id: int, e: torch.Tensor, **kwargs):
    """The text encoder's output for ``input_ids`` with e injected at the placeholder (SPEC §2).

    The text encoder runs on the prompt's ids as usual; a forward hook on its input-embedding
    layer (the public ``get_input_embeddings``) swaps the placeholder's row for e per sample, so
    positions, causal mask and layers are the model's own, and gradients reach e."""
    if input_ids.shape[0] == 1 and e.shape[0] > 1:
        input_ids = input_ids.expand(e.shape[0], -1)
    input_ids = input_ids.to(e.device)
    is_placeholder = placeholder_positions(input_ids, placeholder_id)

    def swap(module, args, rows):
        return torch.where(is_placeholder.unsqueeze(-1), e.to(rows.dtype).unsqueeze(1), rows)

    handle = text_encoder.get_input_embeddings().register_forward_hook(swap)
    try:  # the placeholder's id is not in the embedding table: look up row 0 there, then swap it
        return text_encoder(input_ids=input_ids.masked_fill(is_placeholder, 0), **kwargs)
    finally:
        handle.remove()


class PromptEncoder:
    """Stable Diffusion's prompt encoding with e at the placeholder, for both layouts.

    SD 1.5: one text encoder; ``prompt_embeds`` is its last hidden state. SD XL: two (CLIP-L,
    width 768, and OpenCLIP-bigG with projection, width 1280); ``prompt_embeds`` concatenates
    both encoders' penultimate hidden states (2048) and ``pooled_prompt_embeds`` is the second
    encoder's projected end-of-text embedding, as diffusers' SD XL pipeline encodes a prompt.
    e spans all encoders' widths; each gets its own part, so the pooled embedding depends on e
    through the second encoder. The keys of the returned dicts are the SD pipelines' own."""

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence, placeholder: str, zero_negative: bool = False):
        self.tokenizers, self.text_encoders = list(tokenizers), list(text_encoders)
        self.placeholder_ids = [add_placeholder(t, placeholder) for t in self.tokenizers]
        self.zero_negative = zero_negative  # SD XL's ``force_zeros_for_empty_prompt``

    @classmethod
    def of(cls, parts, placeholder: str) -> "PromptEncoder":
        """The prompt encoder of a diffusers SD pipeline (or anything with its component names)."""
        second = getattr(parts, "text_encoder_2", None)
        if second is None:
            return cls([parts.tokenizer], [parts.text_encoder], placeholder)
        return cls([parts.tokenizer, parts.tokenizer_2], [parts.text_encoder, second], placeholder,
                   bool(getattr(parts.config, "force_zeros_for_empty_prompt", False)))

    @property
    def xl(self) -> bool:
        return len(self.text_encoders) == 2

    @property
    def widths(self) -> list[int]:
        return [encoder.config.hidden_size for encoder in self.text_encoders]

    def token_norms(self) -> list[float]:
        return [token_norm(encoder) for encoder in self.text_encoders]

    def ids(self, prompts: list[str]) -> list[torch.Tensor]:
        """Token ids of ``prompts``, one tensor per tokenizer."""
        return [tokenize(tokenizer, prompts) for tokenizer in self.tokenizers]

    def check_word(self, word: str) -> None:
        for tokenizer, placeholder_id in zip(self.tokenizers, self.placeholder_ids):
            check_word(tokenizer, word, placeholder_id)

    def __call__(self, ids: list[torch.Tensor], e: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prompts' embeddings with e (B, Σ widths) at the placeholder."""
        parts = e.split(self.widths, dim=-1)
        return self._embeds([inject(encoder, i, pid, part, output_hidden_states=self.xl) for encoder, i, pid, part
                             in zip(self.text_encoders, ids, self.placeholder_ids, parts)])

    @torch.no_grad()
    def negative(self, positive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unconditional embeddings for guidance, shaped like ``positive``: the empty
        prompt's, or zeros where the SD XL model asks for them (``force_zeros_for_empty_prompt``),
        as its pipeline does."""
        if self.zero_negative:
            return {f"negative_{k}": torch.zeros_like(v) for k, v in positive.items()}
        device = positive["prompt_embeds"].device
        embeds = self._embeds([encoder(input_ids=i.to(device), output_hidden_states=self.xl)
                               for encoder, i in zip(self.text_encoders, self.ids([""]))])
        return {f"negative_{k}": v.expand_as(positive[k]) for k, v in embeds.items()}

    def _embeds(self, outs) -> dict[str, torch.Tensor]:
        if not self.xl:
            return {"prompt_embeds": outs[0].last_hidden_state}
        return {"prompt_embeds": torch.cat([out.hidden_states[-2] for out in outs], dim=-1),
                "pooled_prompt_embeds": outs[1].text_embeds}
