"""The run directory, the only state between commands: this module alone names its files.

A stage-1 run (``uniemo train understand``) holds the understanding model, its attribute banks
and its training record; a stage-2 run (``uniemo train joint``) adds the generation side: the
mappers, the α table and the emotion space, for Stable Diffusion 1.5 and XL alike (the mappers'
width follows the SD it names in its config); a stage-3 run (``uniemo feedback``) holds the
retrained understanding model and the generated images it chose from.

    run = RunDir("runs/stage2")
    load_config(run.config); run.missing(STAGE2)
"""

from __future__ import annotations

from pathlib import Path


class RunFile:
    """A file of the run directory, by name: ``RunDir(path).config`` is ``path / "config.yaml"``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: "RunDir | None", owner=None):
        return self if run is None else run.root / self.name


class RunDir:
    config = RunFile("config.yaml")  # the typed config, paths of the foundation models included
    understanding = RunFile("understanding.json")  # the understanding model's own settings
    vision_config = RunFile("vision_config.json")  # the CLIP vision tower's config
    weights = RunFile("model.safetensors")  # the understanding model's weights
    attribute_names = RunFile("attributes.json")  # scene and object names
    attribute_embeds = RunFile("attributes.safetensors")  # their CLIP text embeddings
    image_processor = RunFile("preprocessor_config.json")  # the CLIP image processor
    metrics = RunFile("metrics.jsonl")  # one line per epoch or logging step
    checkpoints = RunFile("checkpoints")  # resumable training state
    eval = RunFile("eval.json")  # stage 1's evaluation
    fusion = RunFile("fusion.safetensors")  # stage 2: the mappers M_cls, M_scene, M_object
    alpha_table = RunFile("alpha_table.json")  # stage 2: the emotional correlation table P
    emotion_space = RunFile("emotion_space.safetensors")  # stage 2: per-emotion mean and std
    implicit_feedback = RunFile("implicit_feedback.json")  # stage 2: understanding before and after
    generated = RunFile("generated")  # stage 3: the generated images and their metadata
    feedback = RunFile("feedback.json")  # stage 3: what was generated, kept and reached
    generation_metrics = RunFile("generation_metrics.json")  # stage 3, --metrics: generated vs kept (+ .md)

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def evaluation(self, dataset: str, split: str) -> Path:
        """Where ``uniemo evaluate understanding`` writes its report of this run on a split."""
        return self.root / f"eval_{dataset}_{split}.json"

    def missing(self, files: tuple[RunFile, ...]) -> list[str]:
        """The names of ``files`` this run lacks."""
        return [f.name for f in files if not (self.root / f.name).exists()]


STAGE2 = (RunDir.config, RunDir.fusion, RunDir.alpha_table, RunDir.emotion_space)
