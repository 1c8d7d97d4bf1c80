"""Evaluation metrics of paper §IV-A (SPEC §5), following EmoGen's protocol with its bugs fixed.

Understanding: top-1 accuracy, per-class accuracy, confusion matrix and the 2-class figure.
Generation: FID (per emotion and pooled), LPIPS and Sem-D over random pairs drawn within each
emotion, Emo-A (accuracy of an independent evaluator), Sem-C (semantic clarity); for emotion
transfer, object_kept (CLIP zero-shot names the object asked for); for emotion fusion, mix_mass
(the evaluator's probability mass on a mix's emotions).
Every pretrained network comes from a local file; each reported number names its network.
"""

from __future__ import annotations

import json
import hashlib
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from tqdm.auto import tqdm

from uniemo.errors import UniEmoError
from uniemo.io import load_state_dict_checked
from uniemo.vocab import normalise_attribute, to_binary


# ----------------------------------------------------------------------------- accuracy


def _as_labels(x) -> torch.Tensor:
    """Predicted labels from labels or from (N, C) logits / probabilities."""
    x = torch.as_tensor(x)
    return x.argmax(dim=-1) if x.dim() == 2 else x.long()


def top1_accuracy(preds, labels) -> float:
    """Fraction of predictions equal to the label; ``preds`` are labels or (N, C) scores."""
    preds, labels = _as_labels(preds), torch.as_tensor(labels).long()
    if labels.numel() == 0:
        return float("nan")
    return (preds == labels).float().mean().item()


def confusion_matrix(preds, labels, num_classes: int) -> torch.Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    preds, labels = _as_labels(preds), torch.as_tensor(labels).long()
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(preds, labels, num_classes: int) -> list[float | None]:
    """Recall of every class (None for a class with no samples)."""
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(dim=1)
    return [cm[c, c].item() / support[c].item() if support[c] > 0 else None for c in range(num_classes)]


def binary_accuracy(preds, labels) -> float:
    """Accuracy after the 8 -> 2 positive/negative map (SPEC §0)."""
    preds, labels = _as_labels(preds), torch.as_tensor(labels).long()
    to2 = torch.tensor([to_binary(e) for e in range(8)])
    return top1_accuracy(to2[preds], to2[labels])


def accuracy_report(preds, labels, class_names: Sequence[str]) -> dict:
    """Everything an understanding evaluation reports, as JSON-ready values."""
    n = len(class_names)
    report = {
        "top1": top1_accuracy(preds, labels),
        "per_class": dict(zip(class_names, per_class_accuracy(preds, labels, n))),
        "confusion": confusion_matrix(preds, labels, n).tolist(),
        "num_samples": int(torch.as_tensor(labels).numel()),
    }
    if n == 8:
        report["binary"] = binary_accuracy(preds, labels)
    return report


# ----------------------------------------------------------------------------- weights and batching


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a local weight file: safetensors, or a legacy ``.pth`` read with
    ``weights_only=True`` (never unpickling code). A ``{"state_dict": ...}`` wrapper and the
    ``module.`` prefix of DataParallel checkpoints (the Places365 release) are unwrapped."""
    from uniemo.io import load_tensors

    path = Path(path).expanduser()
    if not path.is_file():
        raise UniEmoError(f"no {what} weight file at {path}: check the path")
    if path.suffix == ".safetensors":
        state = load_tensors(path, what)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad or unsafe file
            raise UniEmoError(f"cannot read {what} weights {path} ({type(e).__name__}): "
                              "give a PyTorch state dict (.pth) or a .safetensors file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UniEmoError(f"{path} is not a {what} state dict: expected a mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def batched(embed: Callable[[list[Image.Image]], torch.Tensor], fetch: Callable[[int], Image.Image], n: int,
            batch_size: int = 32, desc: str | None = None) -> torch.Tensor:
    """``embed`` over images ``fetch(0..n-1)`` in batches, with a progress bar; float32 on CPU."""
    out = []
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, leave=False):
        out.append(embed([fetch(i) for i in range(start, min(n, start + batch_size))]).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- networks


class ClipImageEncoder:
    """CLIP image embeddings (``get_image_features``): L2-normalised by ``__call__`` (the space of
    FID's fallback, the zero-shot Sem-C and the Emo-A evaluator), as they are by ``raw`` (Sem-D)."""

    def __init__(self, clip, device: torch.device | None = None):
        self.device = device or default_device()
        self.clip = clip
        self.model = clip.model.to(self.device).eval()
        self.name = f"clip image features ({clip.path})"

    @torch.no_grad()
    def raw(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.clip.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return self.model.get_image_features(pixel_values=pixels.to(self.model.dtype)).pooler_output.float()

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return F.normalize(self.raw(images), dim=-1)


class InceptionEncoder:
    """FID's network: the TF Inception-v3 (2015-12-05) 2048-d pool features, run by torch-fidelity's
    ``FeatureExtractorInceptionV3``. Weights: the safetensors `uniemo fetch-metrics` makes, or
    torch-fidelity's own ``weights-inception-2015-12-05-6726825d.pth``. Images are resized to
    299 x 299 with PIL's bilinear filter (antialiased, as torchvision's ``Resize`` in EmoGen's
    protocol) and given as uint8; the network maps [0, 255] to its input range (x - 128) / 128."""

    SIZE = 299

    def __init__(self, path: str | Path, device: torch.device | None = None):
        from torch_fidelity import FeatureExtractorInceptionV3

        state = read_state_dict(path, "Inception-v3")
        if "Conv2d_1a_3x3.conv.weight" not in state:
            raise UniEmoError(f"{path} does not hold torch-fidelity Inception-v3 weights (no Conv2d_1a_3x3): "
                              "run `uniemo fetch-metrics` or give the FID Inception .pth file")
        # The 1008-way classifier is not part of the 2048-d features; fid-helper's network has none.
        state.setdefault("fc.weight", torch.zeros(1008, 2048))
        state.setdefault("fc.bias", torch.zeros(1008))
        with tempfile.TemporaryDirectory() as tmp:  # torch-fidelity takes its weights from a file only
            weights = Path(tmp) / "inception.pth"
            torch.save(state, weights)
            try:
                net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                  feature_extractor_weights_path=str(weights))
            except RuntimeError as e:
                raise UniEmoError(f"{path} does not hold torch-fidelity Inception-v3 weights "
                                  f"({str(e).splitlines()[0][:120]}); give the FID Inception weights") from None
        self.device = device or default_device()
        self.net = net.to(self.device, memory_format=torch.channels_last)  # 1.6x faster on CPU, same features
        self.name = f"inception-v3 2048-d pool, TF 2015-12-05 FID network ({path})"

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        size = (self.SIZE, self.SIZE)
        batch = torch.stack([pil_to_tensor(im.convert("RGB").resize(size, Image.BILINEAR)) for im in images])
        return self.net(batch.to(self.device, memory_format=torch.channels_last))[0]


class LpipsDistance:
    """AlexNet LPIPS (the ``lpips`` package's ``LPIPS(net="alex")``, v0.1). Weights: the safetensors
    `uniemo fetch-metrics` makes (AlexNet and the linear heads in one file), or a torchvision
    ``alexnet`` state dict plus the linear heads (``linear``, by default the copy inside ``lpips``).
    Inputs are scaled to [-1, 1] (EmoGen left them in [0, 1])."""

    def __init__(self, alexnet: str | Path, linear: str | Path | None = None, device: torch.device | None = None):
        import lpips

        with warnings.catch_warnings():  # lpips builds the trunk with torchvision's deprecated flag
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
        trunk = read_state_dict(alexnet, "AlexNet")
        if linear is None and "lin0.model.1.weight" not in trunk:
            linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
        state = dict(model.state_dict())
        for key in [k for k in state if k.startswith("net.slice")]:
            index_and_param = key.split(".", 2)[2]  # net.slice2.3.weight -> 3.weight
            source = f"features.{index_and_param}"
            if source not in trunk or trunk[source].shape != state[key].shape:
                raise UniEmoError(f"{alexnet} is not a torchvision AlexNet state dict (no {source} of shape "
                                  f"{tuple(state[key].shape)}); run `uniemo fetch-metrics` or give torchvision's "
                                  "alexnet weights")
            state[key] = trunk[source]
        lin = read_state_dict(linear, "LPIPS linear-layer") if linear else trunk
        for key in [k for k in state if k.startswith("lin") and not k.startswith("lins.")]:  # lins.* alias lin*
            if key not in lin or lin[key].shape != state[key].shape:
                raise UniEmoError(f"{linear} is not an LPIPS AlexNet linear-layer file (no {key}); "
                                  "give lpips' weights/v0.1/alex.pth")
            state[key] = state[key.replace("lin", "lins.", 1)] = lin[key]
        model.load_state_dict(state)
        self.device = device or default_device()
        self.model = model.to(self.device).eval()
        self.name = f"lpips v0.1 alexnet ({alexnet}" + (f"; linear layers {linear})" if linear else ")")

    @torch.no_grad()
    def __call__(self, a: list[Image.Image], b: list[Image.Image]) -> torch.Tensor:
        if not a:  # an emotion with one image has no pair
            return torch.empty(0)
        size = a[0].size
        x, y = (_signed_unit(ims, size).to(self.device) for ims in (a, b))
        return self.model(x, y).flatten().float().cpu()


def _signed_unit(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Images as a (B, 3, H, W) batch in [-1, 1], LPIPS' input range."""
    return torch.stack([pil_to_tensor(im.convert("RGB").resize(size)) for im in images]).float() / 127.5 - 1


class ResNetClassifier:
    """A torchvision ResNet-50 classifier from a local state dict (Places365 scenes or ImageNet
    objects, paper Sem-C); the class count is read from the weights."""

    def __init__(self, path: str | Path, label: str, device: torch.device | None = None):
        from torchvision import models, transforms

        state = read_state_dict(path, f"ResNet-50 {label}")
        if "fc.weight" not in state:
            raise UniEmoError(f"{path} is not a torchvision ResNet-50 state dict (no fc.weight); give the {label} weights")
        net = models.resnet50(weights=None, num_classes=state["fc.weight"].shape[0])
        load_state_dict_checked(net, state, path)
        self.device = device or default_device()
        self.net = net.to(self.device).eval()
        self.name = f"resnet-50 {label} ({path})"
        self.transform = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
        return self.net(batch).float().softmax(dim=-1)


class ClipZeroShot:
    """CLIP zero-shot classification over a vocabulary ("a photo of {name}"): SPEC §5's
    Sem-C classifier when no ResNet weights are given (one per vocabulary: scenes, objects)."""

    def __init__(self, encoder: ClipImageEncoder, names: Sequence[str], label: str):
        if not names:
            raise UniEmoError(f"no {label} names for zero-shot Sem-C: use an EmoSet-format dataset with "
                              "info.json, or pass --places365/--imagenet-resnet50")
        self.encoder = encoder
        model, tokenizer = encoder.model, encoder.clip.tokenizer
        text = tokenizer([f"a photo of {n}" for n in names], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            embeds = model.get_text_features(**text.to(encoder.device)).pooler_output
            self.text = F.normalize(embeds.float(), dim=-1)
            self.scale = model.logit_scale.exp().float()
        self.name = f"clip zero-shot over {len(names)} {label} names ({encoder.clip.path})"

    def probs_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return (self.scale.cpu() * image_features @ self.text.cpu().T).softmax(dim=-1)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.probs_from_features(self.encoder(images).cpu())


# ----------------------------------------------------------------------------- metric functions


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between feature sets a (n, D) and b (m, D), in float64 (Heusel et al. 2017):
    ||mu_a - mu_b||^2 + Tr S_a + Tr S_b - 2 Tr (S_a S_b)^(1/2), S the unbiased covariances.
    With A, B the centred features, S_a S_b's eigenvalues are the squared singular values of
    A B^T / sqrt((n-1)(m-1)), so the trace term is that matrix's nuclear norm: exact, with no
    general eigensolver (pytorch-fid's sqrtm, torch-fidelity's eigvals take seconds at D = 2048
    and lose precision when n < D). A set with more rows than D is first reduced to its QR's R."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    a, b = a.double().cpu(), b.double().cpu()
    centred = [x - x.mean(dim=0) for x in (a, b)]
    ra, rb = (torch.linalg.qr(c, mode="r").R if len(c) > c.shape[1] else c for c in centred)
    trace_sqrt = torch.linalg.svdvals(ra @ rb.T).sum() / math.sqrt((len(a) - 1) * (len(b) - 1))
    spread = sum(c.pow(2).sum() / (len(c) - 1) for c in centred)
    return ((a.mean(dim=0) - b.mean(dim=0)).pow(2).sum() + spread - 2 * trace_sqrt).item()


def fid_by_emotion(real: torch.Tensor, real_labels, fake: torch.Tensor, fake_labels,
                   emotions: Sequence[int]) -> tuple[float, dict[int, float]]:
    """(pooled all-vs-all FID, {emotion: FID of that emotion's real vs generated images})."""
    real_labels, fake_labels = torch.as_tensor(real_labels), torch.as_tensor(fake_labels)
    per = {e: frechet_distance(real[real_labels == e], fake[fake_labels == e]) for e in emotions}
    return frechet_distance(real, fake), per


def sample_pairs(labels: Sequence[int], num_pairs: int, seed: int) -> dict[int, list[tuple[int, int]]]:
    """``num_pairs`` distinct random pairs of different images per emotion (indices into
    ``labels``), drawn only within that emotion; each emotion's pool starts afresh and has its
    own seeded stream, so one emotion's pairs do not depend on the others. Fewer images than
    needed -> every pair of that emotion."""
    labels = [int(x) for x in labels]
    pairs: dict[int, list[tuple[int, int]]] = {}
    for emotion in sorted(set(labels)):
        pool = [i for i, y in enumerate(labels) if y == emotion]
        total = len(pool) * (len(pool) - 1) // 2
        rng = np.random.default_rng([seed, emotion])
        if total <= num_pairs:
            chosen = {(pool[i], pool[j]) for i in range(len(pool)) for j in range(i + 1, len(pool))}
        else:
            chosen = set()
            while len(chosen) < num_pairs:
                i, j = sorted(rng.choice(len(pool), size=2, replace=False).tolist())
                chosen.add((pool[i], pool[j]))
        pairs[emotion] = sorted(chosen)
    return pairs


def semantic_diversity(features: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
    """Sem-D of one emotion, EmoGen's definition: (1/|P|) sum over pairs (i, j) of
    (1/D) ||f_i - f_j||^2, f the unnormalised CLIP image features (``get_image_features``)."""
    if not pairs:
        return float("nan")
    i, j = torch.tensor(pairs).T
    return (features[i] - features[j]).pow(2).mean(dim=-1).mean().item()


def semantic_clarity(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sem-C per image: the max over semantic classifiers of each one's top-1 probability."""
    return torch.stack([p.max(dim=-1).values for p in probabilities]).max(dim=0).values


def target_probability(probs: torch.Tensor, targets) -> torch.Tensor:
    """Emo-A score of each image: the evaluator's probability of the intended emotion (Alg. 1)."""
    return probs.gather(1, torch.as_tensor(targets).long().view(-1, 1)).squeeze(1)


# ----------------------------------------------------------------------------- the generation suite

NOT_GIVEN = {
    "fid": "not computed: run `uniemo fetch-metrics` (Inception-v3), pass --inception FILE or --clip DIR",
    "lpips": "not computed: run `uniemo fetch-metrics` (AlexNet LPIPS) or pass --lpips-alex FILE",
    "emo_a": "not computed: pass --evaluator EVAL (made by `uniemo train evaluator`)",
    "sem_c": "not computed: pass --places365/--imagenet-resnet50 FILE, or --clip DIR and a --real dataset with "
             "scene or object names",
    "sem_d": "not computed: pass --clip DIR",
    "object_kept": "not computed: pass --clip DIR (or --evaluator EVAL, whose CLIP is then used)",
    "mix_mass": "not computed: pass --evaluator EVAL (made by `uniemo train evaluator`)",
    "edit_kept": "not computed: pass --clip DIR (or --evaluator EVAL, whose CLIP is then used)",
    "edit_distance": "not computed: pass --clip DIR (or --evaluator EVAL, whose CLIP is then used)",
}
EMOTION_METRICS = ("fid", "lpips", "emo_a", "sem_c", "sem_d")  # the metrics of emotion folders
NOT_APPLICABLE = {
    **dict.fromkeys(EMOTION_METRICS, "not applicable: no emotion folder among the images, only mixes"),
    "object_kept": "not applicable: metadata.jsonl names no object for these images",
    "mix_mass": "not applicable: no mix_* folder among the images",
    "edit_kept": "not applicable: metadata.jsonl names no source image (only `uniemo edit` does)",
    "edit_distance": "not applicable: metadata.jsonl names no source image (only `uniemo edit` does)",
}
BREAKDOWNS = {"object_kept": ("per_emotion", "per_object"), "mix_mass": ("per_mix",)}  # the others: per_emotion


# ----------------------------------------------------------------------------- what `uniemo generate` writes

GRID_FILE = "grid.png"  # the contact sheet `uniemo generate` writes beside the images: not a sample
METADATA_FILE = "metadata.jsonl"  # one JSON record per image: file, seed, emotion or mix, object, ...
MIX_PREFIX = "mix_"


def mix_folder(weights: dict[str, float]) -> str:
    """{"awe": 0.7, "fear": 0.3} -> "mix_awe-0.7_fear-0.3", the folder of a `uniemo generate --mix`."""
    return MIX_PREFIX + "_".join(f"{name}-{weight:.3g}" for name, weight in weights.items())


def parse_mix_folder(folder: str, class_names: Sequence[str]) -> dict[str, float] | None:
    """The weights ``mix_folder`` spelled into ``folder`` ("mix_awe-0.7_fear-0.3" -> {"awe": 0.7,
    "fear": 0.3}; names are ``class_names``, which may hold '_' or '-'); None if it spells none."""
    if not class_names:
        return None
    names = "|".join(re.escape(n) for n in sorted(class_names, key=len, reverse=True))
    part = rf"({names})-(\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
    if not re.fullmatch(rf"{MIX_PREFIX}{part}(?:_{part})*", folder):
        return None
    return {name: float(weight) for name, weight in re.findall(rf"(?:^{MIX_PREFIX}|_){part}", folder)}


def read_metadata(path: Path) -> dict[str, dict]:
    """Records of a metadata.jsonl by file; a line cut short by a kill is ignored (its image is regenerated)."""
    records = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                records[record["file"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return records


@dataclass(frozen=True)
class Generated:
    """One generated image: its emotion index (None in a mix folder), the weights of its mix
    (mix folders only), the object word it was asked for (normalised; None if not known) and,
    for an edit, its source image."""

    path: Path
    label: int | None
    mix: dict[str, float] | None = None
    object: str | None = None
    source: Path | None = None  # the image `uniemo edit` started from


def read_generated(images_dir: str | Path, class_names: Sequence[str]) -> list[Generated]:
    """Every image of ``DIR/<emotion>/`` and ``DIR/mix_*/`` (what ``uniemo generate`` writes) with
    the mix and object that ``DIR/metadata.jsonl`` records for it; a mix image without a record
    has the weights its folder's name spells."""
    from uniemo.data import IMAGE_SUFFIXES

    root = Path(images_dir).expanduser()
    if not root.is_dir():
        raise UniEmoError(f"{root} is not a directory: expected generated images in <dir>/<emotion or mix>/*.png")
    records = read_metadata(root / METADATA_FILE)
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label, mix = _folder_request(folder, class_names)
        found += [_generated(p, label, mix, records.get(f"{folder.name}/{p.name}", {}))
                  for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.name != GRID_FILE]
    if not found:
        raise UniEmoError(f"no images in {root}/<emotion or mix>/: run `uniemo generate` first or check the path")
    return found


def _folder_request(folder: Path, class_names: Sequence[str]) -> tuple[int | None, dict[str, float] | None]:
    """(emotion index, None) of an emotion folder, (None, weights) of a mix folder."""
    if folder.name in class_names:
        return list(class_names).index(folder.name), None
    mix = parse_mix_folder(folder.name, class_names)
    if mix is None:
        raise UniEmoError(f"{folder} is neither an emotion of the real dataset ({', '.join(class_names)}) nor a mix "
                          "folder of `uniemo generate --mix` (mix_<emotion>-<weight>_...): rename or remove it")
    return None, mix


def _generated(path: Path, label: int | None, mix: dict[str, float] | None, record: dict) -> Generated:
    """The image with what its metadata record asked for: the object, and a mix's weights."""
    word = record.get("object")
    word = normalise_attribute(word) if isinstance(word, str) else None
    recorded = record.get("mix")
    if label is None and isinstance(recorded, dict) and recorded and all(_is_weight(w) for w in recorded.values()):
        mix = recorded
    source = record.get("source")
    return Generated(path, label, mix, word or None, Path(source) if isinstance(source, str) and source else None)


def _is_weight(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 0


def _row_name(image: Generated, class_names: Sequence[str]) -> str:
    """An image's row in the report: its emotion, or its mix folder."""
    return class_names[image.label] if image.label is not None else image.path.parent.name


def sample_per_class(items: Sequence, limit: int, seed: int) -> list:
    """At most ``limit`` items of every label (``item.label``), a seeded sample in the original order."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in sorted({item.label for item in items}):
        indices = [i for i, item in enumerate(items) if item.label == label]
        keep += indices if len(indices) <= limit else rng.choice(indices, size=limit, replace=False).tolist()
    return [items[i] for i in sorted(keep)]


def open_image(path: str | Path, what: str = "image", fix: str = "delete it and generate it again") -> Image.Image:
    """A generated image (or, with ``what`` and ``fix`` worded for it, another image a metric
    reads) as RGB; an unreadable one is a one-line error naming it and the fix."""
    from uniemo.data import UNREADABLE, load_rgb

    try:
        return load_rgb(Path(path))
    except UNREADABLE as e:
        raise UniEmoError(f"cannot read {what} {path} ({e}): {fix}") from None


def class_indices(evaluator, targets: Sequence[str]) -> list[int]:
    """The evaluator's class index of each emotion name; a name it lacks is a one-line error."""
    names = list(evaluator.class_names)
    missing = sorted(set(targets) - set(names))
    if missing:
        raise UniEmoError(f"the evaluator has no class {missing[0]!r} (its classes: {', '.join(names)}): "
                          "train it on a dataset with these emotions")
    return [names.index(t) for t in targets]


def emotion_scores(evaluator, features: torch.Tensor, targets: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, C), Emo-A score = probability of each image's target emotion name)
    from the evaluator's CLIP features of the images."""
    indices = class_indices(evaluator, targets)
    probs = evaluator.proba_from_features(features)
    return probs, target_probability(probs, indices)


def semantic_scores(classifiers: Sequence, fetch: Callable[[int], Image.Image], n: int,
                    clip_features: torch.Tensor | None = None, encoder: ClipImageEncoder | None = None,
                    batch_size: int = 32) -> torch.Tensor:
    """Sem-C of every image; a zero-shot CLIP classifier reuses ``clip_features`` where they are
    its own CLIP's (made by ``encoder``), and encodes the images itself otherwise."""
    probabilities = []
    for clf in classifiers:
        if isinstance(clf, ClipZeroShot) and clip_features is not None and clf.encoder is encoder:
            probabilities.append(clf.probs_from_features(clip_features))
        else:
            probabilities.append(batched(clf, fetch, n, batch_size, desc="sem-c"))
    return semantic_clarity(probabilities)


@dataclass
class GeneratedSet:
    """Generated images with their CLIP features (unnormalised, ``clip_raw``, and normalised) and
    the evaluator encoder's (None without the network)."""

    images: list[Generated]
    clip_raw: torch.Tensor | None = None
    evaluator: torch.Tensor | None = None

    @property
    def clip(self) -> torch.Tensor | None:
        return None if self.clip_raw is None else F.normalize(self.clip_raw, dim=-1)

    def fetch(self, i: int) -> Image.Image:
        return open_image(self.images[i].path)

    def where(self, keep: Callable[[Generated], bool]) -> GeneratedSet:
        """The images that ``keep`` accepts, with their rows of the features."""
        rows = torch.tensor([i for i, image in enumerate(self.images) if keep(image)], dtype=torch.long)
        raw, evaluator = (None if f is None else f[rows] for f in (self.clip_raw, self.evaluator))
        return GeneratedSet([self.images[i] for i in rows.tolist()], raw, evaluator)


def evaluate_generation(generated: list[Generated], real, class_names: Sequence[str], *,
                        clip: ClipImageEncoder | None = None, inception: InceptionEncoder | None = None,
                        lpips: LpipsDistance | None = None, evaluator=None, semantic: Sequence = (),
                        pairs: int = 10, seed: int = 0, batch_size: int = 32,
                        source_objects: Mapping[str, str] | None = None) -> dict:
    """FID, LPIPS, Emo-A, Sem-C and Sem-D of the emotion folders per emotion and overall (SPEC §5),
    object_kept of the images asked for an object, mix_mass of the mix folders and the edits'
    edit_kept (against ``source_objects``, see ``edit_fidelity``) and edit_distance. ``real`` is an
    ``EmotionDataset``; a metric without its network is reported as not computed, one without
    images it applies to as not applicable."""
    every = GeneratedSet(generated)
    if clip is not None:
        every.clip_raw = batched(clip.raw, every.fetch, len(generated), batch_size, "clip features")
    if evaluator is not None:
        every.evaluator = every.clip if clip is evaluator.encoder else \
            batched(evaluator.encoder, every.fetch, len(generated), batch_size, "evaluator features")
    emotional, mixed = every.where(lambda g: g.label is not None), every.where(lambda g: g.label is None)
    objects = every.where(lambda g: g.object is not None)
    results = _emotion_metrics(emotional, real, class_names, clip=clip, inception=inception, lpips=lpips,
                               evaluator=evaluator, semantic=semantic, pairs=pairs, seed=seed,
                               batch_size=batch_size) if emotional.images else {}
    if objects.images and clip is not None:
        results["object_kept"] = object_kept(objects, clip, real.object_vocab, class_names)
    if mixed.images and evaluator is not None:
        results["mix_mass"] = mix_mass(mixed, evaluator)
    edits = every.where(lambda g: g.source is not None)
    if edits.images and clip is not None:
        results.update(edit_fidelity(edits, clip, real.object_vocab, class_names, batch_size, source_objects))
    subsets = {"object_kept": objects, "mix_mass": mixed, "edit_kept": edits, "edit_distance": edits}
    for key, note in NOT_GIVEN.items():
        results.setdefault(key, _missing(key, note if subsets.get(key, emotional).images else NOT_APPLICABLE[key]))
    return {**_rows(generated, real, class_names), "seed": seed, "metrics": {k: results[k] for k in NOT_GIVEN}}


def _rows(generated: list[Generated], real, class_names: Sequence[str]) -> dict:
    """The report's rows: its emotions (in class order), its mix folders and their image counts."""
    names = [class_names[e] for e in sorted({g.label for g in generated if g.label is not None})]
    mixes = list(dict.fromkeys(g.path.parent.name for g in generated if g.label is None))
    rows = [_row_name(g, class_names) for g in generated]
    return {"emotions": names, "mixes": mixes,
            "counts": {"generated": {n: rows.count(n) for n in names + mixes},
                       "real": {n: sum(class_names[item.label] == n for item in real.items) for n in names}}}


def _emotion_metrics(images: GeneratedSet, real, class_names: Sequence[str], *, clip, inception, lpips, evaluator,
                     semantic: Sequence, pairs: int, seed: int, batch_size: int) -> dict[str, dict]:
    """FID, LPIPS, Emo-A, Sem-C and Sem-D of images of known emotion, for the networks given."""
    labels = [g.label for g in images.images]
    emotions = sorted(set(labels))
    fetch, targets = images.fetch, [class_names[y] for y in labels]

    def by_emotion(values: torch.Tensor) -> dict[str, float]:
        return _means_by(values, targets, [class_names[e] for e in emotions])

    chosen = sample_pairs(labels, pairs, seed)
    results: dict[str, dict] = {}

    fid_net = inception or clip
    if fid_net is not None:
        real_labels = [item.label for item in real.items]
        real_features = reference_features(fid_net, real, batch_size)
        fake_features = images.clip if fid_net is clip else batched(fid_net, fetch, len(labels), batch_size, "fid")
        pooled, per = fid_by_emotion(real_features, real_labels, fake_features, labels, emotions)
        results["fid"] = _entry(fid_net.name, pooled, {class_names[e]: v for e, v in per.items()})
    if lpips is not None:
        per = {class_names[e]: _mean(torch.cat([lpips([fetch(i) for i, _ in p], [fetch(j) for _, j in p])
                                                for p in _chunks(chosen[e], batch_size)]))
               for e in emotions}
        results["lpips"] = _entry(lpips.name, _mean(torch.tensor(list(per.values()))), per, pairs_per_emotion=pairs)
    if evaluator is not None:
        indices = torch.tensor(class_indices(evaluator, targets))
        hits = (evaluator.proba_from_features(images.evaluator).argmax(-1) == indices).float()
        results["emo_a"] = _entry(evaluator.name, _mean(hits), by_emotion(hits))
    if semantic:
        clarity = semantic_scores(semantic, fetch, len(labels), images.clip, clip, batch_size)
        results["sem_c"] = _entry(" + ".join(c.name for c in semantic), _mean(clarity), by_emotion(clarity))
    if images.clip is not None:
        per = {class_names[e]: semantic_diversity(images.clip_raw, chosen[e]) for e in emotions}
        results["sem_d"] = _entry(f"{clip.name}, unnormalised", _mean(torch.tensor(list(per.values()))), per, pairs_per_emotion=pairs)
    return results


def object_kept(images: GeneratedSet, clip: ClipImageEncoder, object_vocab: Sequence[str],
                class_names: Sequence[str]) -> dict:
    """Emotion transfer: the share of images whose CLIP zero-shot top-1 over the dataset's object
    names (plus the words asked for) is the object asked for; overall, per emotion (a mix folder
    counts as one) and per object. ``images`` all name an object and carry their CLIP features."""
    asked = [g.object for g in images.images]
    vocab = list(dict.fromkeys([normalise_attribute(n) for n in object_vocab] + asked))
    classifier = ClipZeroShot(clip, vocab, "object")
    top1 = classifier.probs_from_features(images.clip).argmax(dim=-1)
    kept = (top1 == torch.tensor([vocab.index(word) for word in asked])).float()
    per_object = {word: _finite(v) for word, v in _means_by(kept, asked).items()}
    return _entry(classifier.name, _mean(kept), _means_by(kept, [_row_name(g, class_names) for g in images.images]),
                  per_object=per_object, images=len(asked))


SOURCE_FIX = "restore it, or remove its edits' lines from metadata.jsonl"


def edit_fidelity(images: GeneratedSet, clip: ClipImageEncoder, object_vocab: Sequence[str],
                  class_names: Sequence[str], batch_size: int = 32,
                  source_objects: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Emotion editing: ``edit_kept``, the share of edits whose CLIP zero-shot top-1 over the
    dataset's object names is their source's object: its annotation in ``source_objects``
    (resolved source path -> object name) where there is one, else the name CLIP gives the
    source; and ``edit_distance``, the CLIP feature distance 1 - cos(edit, source); overall and
    per target emotion (or mix folder)."""
    paths = sorted({str(g.source) for g in images.images})  # each source encoded once, however often edited
    encoded = batched(clip, lambda i: open_image(paths[i], "the edit source", SOURCE_FIX), len(paths), batch_size,
                      "edit sources")
    sources = encoded[[paths.index(str(g.source)) for g in images.images]]
    names = [normalise_attribute(n) for n in object_vocab]
    classifier = ClipZeroShot(clip, names, "object")
    index = {name: i for i, name in enumerate(names)}
    annotated = [index.get(normalise_attribute((source_objects or {}).get(str(Path(g.source).resolve()), "")))
                 for g in images.images]
    read = classifier.probs_from_features(sources).argmax(-1).tolist()
    reference = torch.tensor([r if a is None else a for a, r in zip(annotated, read)])
    kept = (classifier.probs_from_features(images.clip).argmax(-1) == reference).float()
    distance = 1 - torch.nn.functional.cosine_similarity(images.clip, sources, dim=-1)
    rows = [_row_name(g, class_names) for g in images.images]
    by_annotation = sum(a is not None for a in annotated)
    return {"edit_kept": _entry(classifier.name, _mean(kept), _means_by(kept, rows), images=len(rows),
                                reference={"annotated object": by_annotation,
                                           "object clip names in the source": len(rows) - by_annotation}),
            "edit_distance": _entry(clip.name, _mean(distance), _means_by(distance, rows), images=len(rows))}


def mix_mass(images: GeneratedSet, evaluator) -> dict:
    """Emotion fusion: per mix folder, the evaluator's mean probability of every emotion (a sweep
    reads an emotion's probability even where its weight is 0) and the mix's mass, the mean over
    images of the probabilities summed over the mix's emotions of weight > 0; "all" averages the
    folders. ``images`` carry the evaluator encoder's features."""
    probs = evaluator.proba_from_features(images.evaluator)
    folders = [g.path.parent.name for g in images.images]
    per_mix = {}
    for folder in dict.fromkeys(folders):
        rows = [i for i, f in enumerate(folders) if f == folder]
        weights = images.images[rows[0]].mix
        positive = [k for k, w in zip(class_indices(evaluator, list(weights)), weights.values()) if w > 0]
        per_mix[folder] = {"weights": weights, "mass": _finite(_mean(probs[rows][:, positive].sum(dim=-1))),
                           "mean_probability": {n: _finite(_mean(probs[rows, k]))
                                                for k, n in enumerate(evaluator.class_names)},
                           "images": len(rows)}
    return {"network": evaluator.name, "all": _finite(_mean(torch.tensor([m["mass"] for m in per_mix.values()]))),
            "per_mix": per_mix}


def reference_features(net, real, batch_size: int = 32) -> torch.Tensor:
    """FID's real-image features, cached on disk under the uniemo cache (as torch-fidelity caches
    its statistics): the key is the network and every image's bytes, in order, so the same
    images elsewhere (a world written again with the same seed) reuse them."""
    from uniemo.io import load_tensors, save_tensors
    from uniemo.metric_nets import cache_dir

    key = hashlib.sha256(net.name.encode())
    for item in real.items:
        key.update(hashlib.sha256(Path(item.path).read_bytes()).digest())
    path = cache_dir() / "features" / f"{key.hexdigest()[:32]}.safetensors"
    if path.is_file():
        return load_tensors(path, "cached reference features")["features"]
    features = batched(net, real_image(real), len(real), batch_size, "fid real")
    save_tensors(path, {"features": features}, {"network": net.name, "images": str(len(real))})
    return features


def real_image(dataset) -> Callable[[int], Image.Image]:
    """``fetch(i)`` -> the i-th image of an ``EmotionDataset`` opened without a transform (PIL)."""
    def fetch(i: int) -> Image.Image:
        return dataset[i]["pixel_values"]
    return fetch


def _entry(network: str, overall: float, per_emotion: dict[str, float], **extra) -> dict:
    return {"network": network, "all": _finite(overall),
            "per_emotion": {k: _finite(v) for k, v in per_emotion.items()}, **extra}


def _finite(value: float | None) -> float | None:
    """NaN (too few images for the metric) becomes None: JSON has no NaN."""
    return None if value is None or np.isnan(value) else float(value)


def _missing(key: str, note: str) -> dict:
    """The entry of a metric not computed (or not applicable), ``note`` saying why."""
    return {"network": None, "all": None, **{b: {} for b in BREAKDOWNS.get(key, ("per_emotion",))}, "note": note}


def _mean(values: torch.Tensor) -> float:
    return values.float().mean().item() if values.numel() else float("nan")


def _means_by(values: torch.Tensor, keys: Sequence[str], order: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of ``values`` over the entries of each key (in ``order``, by default as keys first appear)."""
    return {k: _mean(values[torch.tensor([x == k for x in keys], dtype=torch.bool)])
            for k in (order if order is not None else dict.fromkeys(keys))}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


COLUMNS = (("fid", "FID ↓", "{:.2f}"), ("lpips", "LPIPS ↑", "{:.3f}"), ("emo_a", "Emo-A ↑", "{:.2%}"),
           ("sem_c", "Sem-C ↑", "{:.3f}"), ("sem_d", "Sem-D ↑", "{:.4f}"), ("object_kept", "Obj-K ↑", "{:.2%}"),
           ("mix_mass", "Mix-M ↑", "{:.3f}"), ("edit_kept", "Edit-K ↑", "{:.2%}"),
           ("edit_distance", "Edit-D", "{:.3f}"))
EXPLAINED = {"object_kept": "Obj-K is the share of images whose CLIP top-1 object is the one asked for.",
             "mix_mass": "Mix-M is the evaluator's probability summed over a mix's emotions, averaged over mixes.",
             "edit_kept": "Edit-K is the share of edits whose CLIP top-1 object is their source's (its annotation "
                          "where the dataset has one, else the one CLIP names in the source).",
             "edit_distance": "Edit-D is the CLIP feature distance 1 - cos(edit, source)."}


def generation_table(report: dict) -> str:
    """The report as a Markdown table (rows: emotions, mixes, then all; a column per metric that
    applies to these images), the network behind each column, Obj-K per object and each mix's detail."""
    m = report["metrics"]
    columns = [c for c in COLUMNS if not m[c[0]].get("note", "").startswith("not applicable")]
    lines = ["| emotion | n | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name in report["emotions"] + report["mixes"]:
        values = [_cell(fmt, _row_value(m[k], name)) for k, _, fmt in columns]
        lines.append(f"| {name} | {report['counts']['generated'][name]} | " + " | ".join(values) + " |")
    total = sum(report["counts"]["generated"].values())
    lines.append(f"| **all** | {total} | " + " | ".join(_cell(fmt, m[k]["all"]) for k, _, fmt in columns) + " |")
    lines += ["", " ".join(["FID \"all\" is the pooled all-vs-all figure; LPIPS and Sem-D are averaged over emotions."]
                           + [EXPLAINED[k] for k, _, _ in columns if k in EXPLAINED]), ""]
    lines += [f"- {title.split()[0]}: {m[k]['network'] or m[k]['note']}" for k, title, _ in COLUMNS]
    return "\n".join(lines + _detail_lines(m)) + "\n"


def _row_value(metric: dict, name: str) -> float | None:
    """A metric's figure for one row: an emotion's, or a mix folder's mass."""
    if "per_mix" in metric:
        return metric["per_mix"].get(name, {}).get("mass")
    return metric["per_emotion"].get(name)


def _detail_lines(m: dict) -> list[str]:
    """Obj-K of each object asked for, and each mix's weights and mean evaluator probabilities."""
    lines = []
    if m["object_kept"]["per_object"]:
        lines.append("- Obj-K per object: " + ", ".join(f"{word} {_cell('{:.2%}', v)}"
                                                        for word, v in m["object_kept"]["per_object"].items()))
    for folder, mix in m["mix_mass"]["per_mix"].items():
        weights = ", ".join(f"{n} {w:.3g}" for n, w in mix["weights"].items())
        probs = ", ".join(f"{n} {_cell('{:.3f}', mix['mean_probability'][n])}" for n in mix["weights"])
        lines.append(f"- {folder} ({mix['images']} images): weights {weights}; mean evaluator probability {probs}")
    return lines


def _cell(fmt: str, value: float | None) -> str:
    return "—" if value is None else fmt.format(value)
