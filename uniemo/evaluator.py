"""The independent Emo-A evaluator (paper §IV-A, SPEC §5): an emotion classifier — a linear
probe or a 2-layer MLP — on FROZEN CLIP image features, trained on its own, never a module the
generator was trained against. Emo-A is its accuracy on generated images against the intended
emotion; Algorithm 1 ranks generated images by its probability of the target emotion.

On disk: ``EVAL/config.json`` (CLIP path, dimensions, class names, accuracies) and
``EVAL/evaluator.safetensors`` (probe weights and the feature standardisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from tqdm.auto import tqdm

from uniemo.errors import UniEmoError
from uniemo.metrics import ClipImageEncoder, batched, real_image, top1_accuracy

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "evaluator.safetensors"


@dataclass
class EvaluatorConfig:
    clip_path: str
    feature_dim: int
    class_names: list[str]
    hidden: int = 0  # 0 = linear probe; N = 2-layer MLP with N hidden units
    dataset: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # split -> top-1 on that split


class EmotionProbe(nn.Module):
    """Standardise the frozen features with the training set's statistics, then classify."""

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        if hidden:
            self.classifier = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        else:
            self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier((features - self.mean) / self.std)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, hidden: int = 0, epochs: int = 100,
              lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0,
              ) -> tuple[EmotionProbe, list[float]]:
    """Train a probe with minibatch AdamW on precomputed features; returns it and the
    training accuracy after every epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = EmotionProbe(features.shape[1], num_classes, hidden)
    probe.mean.copy_(features.mean(dim=0))
    probe.std.copy_(features.std(dim=0).clamp_min(1e-6) if len(features) > 1 else torch.ones(features.shape[1]))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for _ in tqdm(range(epochs), desc="evaluator", leave=False):
        probe.train()
        for idx in torch.randperm(len(features), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(probe(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(top1_accuracy(probe.eval()(features).detach(), labels))
    return probe.eval(), history


def dataset_features(encoder: ClipImageEncoder, dataset, batch_size: int = 64, desc: str | None = None):
    """(L2-normalised CLIP image features, labels) of every image of an ``EmotionDataset``."""
    features = batched(encoder, real_image(dataset), len(dataset), batch_size, desc)
    return features, torch.tensor([item.label for item in dataset.items])


class Evaluator:
    """A trained probe with its CLIP encoder: ``predict_proba(images) -> (N, C)``."""

    def __init__(self, config: EvaluatorConfig, probe: EmotionProbe, encoder: ClipImageEncoder):
        self.config, self.probe, self.encoder = config, probe.to(encoder.device).eval(), encoder
        self.class_names = tuple(config.class_names)
        self.name = f"evaluator {'linear' if not config.hidden else f'mlp-{config.hidden}'} probe on {encoder.name}"

    @classmethod
    def from_pretrained(cls, path: str | Path, clip=None, device: torch.device | None = None) -> "Evaluator":
        """Load ``EVAL/``; ``clip`` (a loaded ``CLIPBundle``) overrides the recorded CLIP path."""
        from uniemo.config import from_dict
        from uniemo.io import load_state_dict_checked, load_tensors, read_json
        from uniemo.loading import load_clip

        path = Path(path)
        data = read_json(path / CONFIG_NAME, "evaluator config (a directory made by `uniemo train evaluator`)")
        if not isinstance(data, dict) or "feature_dim" not in data:
            raise UniEmoError(f"{path} is not an Emo-A evaluator ({CONFIG_NAME} has no feature_dim): "
                              "expected a directory made by `uniemo train evaluator`")
        config = from_dict(EvaluatorConfig, data, where=str(path / CONFIG_NAME))
        probe = EmotionProbe(config.feature_dim, len(config.class_names), config.hidden)
        load_state_dict_checked(probe, load_tensors(path / WEIGHTS_NAME, "evaluator"), path / WEIGHTS_NAME)
        encoder = ClipImageEncoder(clip or load_clip(config.clip_path), device)
        if encoder.model.config.projection_dim != config.feature_dim:
            raise UniEmoError(f"the evaluator in {path} expects {config.feature_dim}-d CLIP features but the CLIP "
                              f"at {encoder.clip.path} gives {encoder.model.config.projection_dim}: use the CLIP it "
                              "was trained with")
        return cls(config, probe, encoder)

    def save_pretrained(self, path: str | Path) -> None:
        from uniemo.io import save_tensors, write_json

        save_tensors(Path(path) / WEIGHTS_NAME, self.probe.state_dict())
        write_json(Path(path) / CONFIG_NAME, asdict(self.config))

    def proba_from_features(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # not a decorator: mutmut skips decorated functions
            return self.probe(features.to(self.encoder.device)).softmax(dim=-1).cpu()

    def predict_proba(self, images: list[Image.Image]) -> torch.Tensor:
        return self.proba_from_features(self.encoder(images))


def train_evaluator(clip_path: str | Path, data: str | Path, out: str | Path, kind: str = "emoset", hidden: int = 0,
                    epochs: int = 100, lr: float = 1e-2, seed: int = 0, batch_size: int = 64,
                    device: torch.device | None = None) -> Evaluator:
    """Precompute frozen CLIP features of the train split once, fit the probe, report its
    accuracy on the val and test splits (where the dataset has them) and save it to ``out``."""
    from uniemo.data import open_dataset, split_exists
    from uniemo.loading import load_clip

    train = open_dataset(data, kind=kind, split="train")
    others = {split: open_dataset(data, kind=kind, split=split)
              for split in ("val", "test") if split_exists(data, kind, split)}
    encoder = ClipImageEncoder(load_clip(clip_path), device)
    x, y = dataset_features(encoder, train, batch_size, desc="features train")
    probe, history = fit_probe(x, y, len(train.class_names), hidden=hidden, epochs=epochs, lr=lr, seed=seed)
    config = EvaluatorConfig(clip_path=str(Path(clip_path).resolve()), feature_dim=x.shape[1],
                             class_names=list(train.class_names), hidden=hidden, dataset=str(data),
                             accuracy={"train": history[-1]})
    evaluator = Evaluator(config, probe, encoder)
    for split, dataset in others.items():
        features, labels = dataset_features(encoder, dataset, batch_size, desc=f"features {split}")
        config.accuracy[split] = top1_accuracy(evaluator.proba_from_features(features), labels)
    evaluator.save_pretrained(out)
    return evaluator
