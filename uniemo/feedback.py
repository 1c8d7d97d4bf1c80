"""Explicit feedback, paper §III-C and Algorithm 1 (SPEC §3): generate m images per emotion with
a stage-2 run, score each by Emo-A (the evaluator's probability of the target emotion) and Sem-C
(semantic clarity), keep the images whose rank lies in [η%, δ%) for every chosen criterion, mix
them into the real training set so they form a proportion p of it, and train the understanding
model again (stage 3). "Again" is read as fine-tuning: stage 3 starts from RUN2's understanding
weights (``train_understanding(init_from=RUN2)``) with the stage-1 training settings, and is
stage 1's trainer given the mixed set (:class:`FeedbackMix`).

Ranks are taken within each emotion (every emotion keeps the same share of its images, so the
mixed set stays balanced); rank 0 is the highest score and ties keep generation order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from uniemo.errors import UniEmoError
from uniemo.io import atomic_path, check_same_settings, read_json, write_json, write_text
from uniemo.rundir import RunDir

CRITERIA = ("emo-a", "sem-c")


def check_window(eta: float, delta: float) -> None:
    if not 0 <= eta < delta <= 100:
        raise UniEmoError(f"rank window [{eta:g}%, {delta:g}%) is invalid: use 0 <= eta < delta <= 100")


def descending_ranks(scores: Sequence[float]) -> torch.Tensor:
    """Rank of every score, 0 = highest; ties are broken by position (stable)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    order = torch.sort(-scores, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


def window_bounds(n: int, eta: float, delta: float) -> tuple[int, int]:
    """Rank range [lo, hi) of the top η% to δ% of n items: Algorithm 1's ``R[η% : δ%]``."""
    # The small tolerance absorbs float error in n * percent / 100 (e.g. 10 * 70 / 100).
    return math.floor(n * eta / 100 + 1e-9), math.floor(n * delta / 100 + 1e-9)


def rank_window(scores: Sequence[float], eta: float = 20.0, delta: float = 80.0) -> torch.Tensor:
    """Boolean mask of the scores whose descending rank lies in [η%, δ%)."""
    check_window(eta, delta)
    ranks = descending_ranks(scores)
    lo, hi = window_bounds(len(ranks), eta, delta)
    return (ranks >= lo) & (ranks < hi)


def filter_images(score_table: Mapping[str, Sequence[float]], criteria: Sequence[str], eta: float = 20.0,
                  delta: float = 80.0, groups: Sequence[int] | None = None) -> torch.Tensor:
    """Algorithm 1: keep the images inside the rank window for EVERY chosen criterion; with
    ``groups`` (e.g. the target emotion) ranks are taken within each group."""
    if not criteria:
        raise UniEmoError("no filter criteria: choose one or more of " + ", ".join(CRITERIA))
    missing = [c for c in criteria if c not in score_table]
    if missing:
        raise UniEmoError(f"no {missing[0]!r} scores to filter by: choose from {', '.join(score_table)}")
    n = len(next(iter(score_table.values())))
    groups = torch.zeros(n, dtype=torch.long) if groups is None else torch.as_tensor(groups)
    keep = torch.ones(n, dtype=torch.bool)
    for criterion in criteria:
        scores = torch.as_tensor(score_table[criterion], dtype=torch.float64)
        for g in groups.unique():
            members = (groups == g).nonzero().flatten()
            keep[members] &= rank_window(scores[members], eta, delta)
    return keep


def mix_count(n_real: int, proportion: float) -> int:
    """How many generated images make up ``proportion`` of the mixed set:
    n_gen / (n_real + n_gen) = p  =>  n_gen = p · n_real / (1 - p), rounded."""
    if not 0 <= proportion < 1:
        raise UniEmoError(f"proportion {proportion:g} is invalid: use 0 <= p < 1 (the paper uses 0.2)")
    return round(proportion * n_real / (1 - proportion))


def mix_plan(n_real: int, n_kept: int, proportion: float) -> tuple[int, float]:
    """(generated images to use, the proportion they actually form): all kept ones when fewer
    were kept than the proportion asks for."""
    n_gen = min(mix_count(n_real, proportion), n_kept)
    return n_gen, n_gen / (n_real + n_gen) if n_real + n_gen else 0.0


# ----------------------------------------------------------------------------- step 1: generate

SEED_STRIDE = 1_000_000  # image k of emotion i has seed (seed + i * SEED_STRIDE + k), whatever M is


def image_name(emotion: str, k: int) -> str:
    return f"{emotion}_{k:05d}"


def image_seed(seed: int, emotion_index: int, k: int) -> int:
    return seed + emotion_index * SEED_STRIDE + k


def generate_images(pipe, out: Path, class_names: Sequence[str], per_emotion: int, seed: int = 0,
                    batch_size: int = 8, num_inference_steps: int | None = None,
                    made_by: Mapping[str, str] | None = None) -> None:
    """Generate ``per_emotion`` images of every emotion into the EmoSet layout under ``out``
    (``image/<emotion>/<name>.png`` and ``annotation/<emotion>/<name>.json`` carrying the scene and
    object the pipeline matched, plus its metadata). Images whose annotation already exists are
    skipped, so a killed run continues where it stopped; one made with another seed, steps,
    guidance, sampler or dtype, or by other models (``made_by``: e.g. the run's and the SD's
    paths, recorded with each image) is refused. Under ``torchrun`` / ``accelerate launch`` the
    batches are shared out round-robin: each keeps the seed it has in one process, so the images
    are the ones a single process writes."""
    from uniemo.training import my_batches, processes

    made_by = dict(made_by or {})
    settings = pipe.sampling_settings(num_inference_steps) | made_by

    def written(i: int, k: int) -> bool:
        emotion, name = class_names[i], image_name(class_names[i], k)
        annotation = out / "annotation" / emotion / f"{name}.json"
        if not annotation.is_file():
            return False
        record = read_json(annotation, "generated image's annotation").get("generation", {})
        check_same_settings(out / "image" / emotion / f"{name}.png", record, settings | {"seed": image_seed(seed, i, k)})
        return True

    todo = [(i, k) for i in range(len(class_names)) for k in range(per_emotion) if not written(i, k)]
    state = processes()
    state.wait_for_everyone()  # every process has listed the same images before any writes one
    mine = my_batches(_consecutive_batches(todo, batch_size), state)
    for i, ks in tqdm(mine, desc="generate", disable=not state.is_main_process):
        emotion = class_names[i]
        result = pipe(emotion=emotion, num_images=len(ks), generator=image_seed(seed, i, ks[0]),
                      batch_size=len(ks), num_inference_steps=num_inference_steps)
        for k, image, meta in zip(ks, result.images, result.metadata):
            _save_generated(out, emotion, image_name(emotion, k), image, meta | made_by)
    state.wait_for_everyone()


def _consecutive_batches(work: Sequence[tuple[int, int]], batch_size: int) -> list[tuple[int, list[int]]]:
    """(emotion, [k, k+1, ...]) runs of at most ``batch_size`` consecutive images: the pipeline
    seeds image j of a call with base + j, so a run reproduces exactly the per-image seeds."""
    batches: list[tuple[int, list[int]]] = []
    for i, k in work:
        if batches and batches[-1][0] == i and batches[-1][1][-1] == k - 1 and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(k)
        else:
            batches.append((i, [k]))
    return batches


def _save_generated(out: Path, emotion: str, name: str, image, meta: dict) -> None:
    """The PNG first, then its annotation: the annotation marks the image as done."""
    with atomic_path(out / "image" / emotion / f"{name}.png") as tmp:
        image.save(tmp, format="PNG")
    annotation = {"emotion": emotion, "scene": meta.get("matched_scene"),
                  "object": [meta["matched_object"]] if meta.get("matched_object") else [], "generation": meta}
    write_json(out / "annotation" / emotion / f"{name}.json", annotation)


# ----------------------------------------------------------------------------- steps 2-3: score and filter


@dataclass
class GeneratedImage:
    emotion: str
    name: str
    seed: int | None

    def image_path(self) -> str:
        return f"image/{self.emotion}/{self.name}.png"

    def annotation_path(self) -> str:
        return f"annotation/{self.emotion}/{self.name}.json"


def list_generated(out: Path, class_names: Sequence[str], per_emotion: int) -> list[GeneratedImage]:
    """The generated images of this feedback run, in emotion then index order."""
    found = []
    for emotion in class_names:
        for k in range(per_emotion):
            name = image_name(emotion, k)
            annotation = read_json(out / "annotation" / emotion / f"{name}.json", "generated-image annotation")
            found.append(GeneratedImage(emotion, name, annotation.get("generation", {}).get("seed")))
    return found


def score_generated(root: Path, images: Sequence[GeneratedImage], evaluator, semantic: Sequence,
                    batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Algorithm 1 lines 1-5: CLIP features F, Emo-A = P_emo[target] and (given ``semantic``
    classifiers) Sem-C for every image."""
    from uniemo.metrics import batched, emotion_scores, open_image, semantic_scores

    def fetch(i: int):
        return open_image(root / images[i].image_path())

    features = batched(evaluator.encoder, fetch, len(images), batch_size, desc="score")
    _, emo_a = emotion_scores(evaluator, features, [im.emotion for im in images])
    if not semantic:
        return {"emo-a": emo_a}
    return {"emo-a": emo_a, "sem-c": semantic_scores(semantic, fetch, len(images), features, evaluator.encoder,
                                                        batch_size)}


def write_selection(out: Path, images: Sequence[GeneratedImage], scores: Mapping[str, torch.Tensor],
                    criteria: Sequence[str], eta: float, delta: float, info: dict) -> list[GeneratedImage]:
    """Algorithm 1 lines 6-11 and their record: ``scores.csv`` (every generated image, both scores,
    both within-emotion ranks, kept or not) and the kept images as an EmoSet-format dataset
    (``info.json`` = the real dataset's vocabularies, ``train.json`` of 3-field items)."""
    import csv
    import io

    groups = [im.emotion for im in images]
    group_ids = torch.tensor([sorted(set(groups)).index(g) for g in groups])
    kept = filter_images(scores, criteria, eta, delta, groups=group_ids)
    ranks = {c: _ranks_within(scores[c], group_ids) for c in scores}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", "emotion", "seed", *scores, *(f"rank_{c}" for c in scores), "kept"])
    for n, im in enumerate(images):
        writer.writerow([im.image_path(), im.emotion, im.seed, *(f"{scores[c][n].item():.6f}" for c in scores),
                         *(int(ranks[c][n]) for c in scores), int(kept[n])])
    write_text(out / "scores.csv", table.getvalue())
    selected = [im for im, k in zip(images, kept.tolist()) if k]
    write_json(out / "info.json", info)
    write_json(out / "train.json", [[im.emotion, im.image_path(), im.annotation_path()] for im in selected])
    return selected


def _ranks_within(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty(len(scores), dtype=torch.long)
    for g in groups.unique():
        members = (groups == g).nonzero().flatten()
        ranks[members] = descending_ranks(scores[members])
    return ranks


# ----------------------------------------------------------------------------- step 4: mix and train again


def check_settings(settings) -> None:
    """One-line errors for a :class:`~uniemo.config.FeedbackConfig` no run could use."""
    from uniemo.pipeline import MAX_IMAGES_PER_EMOTION

    if not 1 <= settings.per_emotion <= MAX_IMAGES_PER_EMOTION:
        raise UniEmoError(f"--per-emotion {settings.per_emotion} is invalid: generate 1 to "
                          f"{MAX_IMAGES_PER_EMOTION:,} images per emotion")
    check_window(settings.eta, settings.delta)
    if not 0 < settings.proportion < 1:
        raise UniEmoError(f"--proportion {settings.proportion:g} is invalid: use 0 < p < 1 (the paper uses 0.2)")
    unknown = [c for c in settings.criteria if c not in CRITERIA]
    if unknown or not settings.criteria:
        raise UniEmoError(f"--criteria {','.join(settings.criteria) or '(empty)'} is invalid: "
                          f"use one or more of {','.join(CRITERIA)} separated by commas")


def vocabulary_info(dataset) -> dict:
    """An EmoSet ``info.json`` carrying ``dataset``'s emotion, scene and object vocabularies."""
    def table(names):
        return {"label2idx": {name: i for i, name in enumerate(names)}}

    return {"emotion": table(dataset.class_names), "scene": table(dataset.scene_vocab),
            "object": table(dataset.object_vocab)}


class FeedbackMix(torch.utils.data.ConcatDataset):
    """The real training set followed by the kept generated images, exposing what
    :func:`uniemo.understanding.train_understanding` reads: ``class_names``, the real
    vocabularies, and the ``items`` of both (their scenes and objects enter the attribute banks)."""

    def __init__(self, real, generated):
        if tuple(generated.class_names) != tuple(real.class_names):
            raise UniEmoError(f"the generated images' emotions ({', '.join(generated.class_names)}) differ from the "
                              f"dataset's ({', '.join(real.class_names)}): use the dataset RUN2 was trained on")
        super().__init__([real, generated])
        self.class_names = tuple(real.class_names)
        self.scene_vocab, self.object_vocab = real.scene_vocab, real.object_vocab
        self.items = [*real.items, *generated.items]
        self.num_real, self.num_generated = len(real), len(generated)

    @property
    def proportion(self) -> float:
        """The share of generated images in the mix (p of Algorithm 1)."""
        return self.num_generated / len(self)


def build_mix(real, selection_root: Path, proportion: float, seed: int, transform) -> FeedbackMix:
    """Algorithm 1 line 12: the real set plus a seeded subset of the kept images, sized by
    :func:`mix_plan` so that they form ``proportion`` of the mix (all of them, and a smaller
    share, when fewer were kept)."""
    from uniemo.data import EmotionDataset, open_dataset

    kept = open_dataset(selection_root, "emoset", "train", transform)
    n_gen, _ = mix_plan(len(real), len(kept), proportion)
    if n_gen == 0:
        raise UniEmoError(f"proportion {proportion:g} of {len(real):,} real images asks for no generated image: "
                          "raise --proportion")
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))
    chosen = [kept.items[i] for i in sorted(order[:n_gen].tolist())]
    subset = EmotionDataset(chosen, kept.class_names, transform, kept.scene_vocab, kept.object_vocab,
                            source=kept.source, validate=False)
    return FeedbackMix(real, subset)


def understanding_accuracy(run: Path, data_root: Path, kind: str, batch_size: int) -> dict:
    """Accuracy reports of ``run`` on the val and test splits that exist: the figures of
    ``uniemo evaluate understanding`` (:func:`uniemo.understanding.accuracy_on`)."""
    from uniemo.data import clip_transforms, open_dataset, split_exists
    from uniemo.metrics import default_device
    from uniemo.understanding import UniEmoUnderstanding, accuracy_on, load_image_processor

    model = UniEmoUnderstanding.from_pretrained(run).to(default_device())
    transform = clip_transforms(load_image_processor(run), train=False)
    return {split: accuracy_on(model, open_dataset(data_root, kind, split, transform), batch_size)
            for split in ("val", "test") if split_exists(data_root, kind, split)}


def explicit_feedback(run2: Path, data_root: Path, real, out: Path, cfg, evaluator, semantic: Sequence,
                      kind: str = "emoset", seed: int = 0, num_inference_steps: int | None = None,
                      generate_batch_size: int = 8, resume: bool = False, dtype=None,
                      scheduler: str | None = None, sd_path: str | Path | None = None) -> dict | None:
    """Algorithm 1 end to end, then stage 3 (paper §III-C), on ``real``, the train split of the
    dataset at ``data_root`` (of ``kind``) as ``open_dataset`` opens it:

    1. ``cfg.feedback.per_emotion`` images per emotion from RUN2 into ``OUT/generated`` (skipping
       the images a killed run already wrote), sampled in ``dtype`` with ``scheduler`` and the SD
       at ``sd_path`` (see ``UniEmoPipeline.from_pretrained``);
    2. Emo-A with ``evaluator`` and Sem-C with the ``semantic`` classifiers;
    3. the rank window of every chosen criterion: ``OUT/generated`` becomes an EmoSet dataset whose
       train split is the kept images, with ``scores.csv`` beside it;
    4. the understanding model trained again, starting from RUN2's weights, on the real training
       set mixed with the kept images at ``cfg.feedback.proportion`` (stage-1 settings, ``cfg.stage1``);
    5. ``OUT/feedback.json``: accuracy before (RUN2) and after (RUN3), kept count, actual proportion.

    Under ``torchrun`` / ``accelerate launch`` the processes share step 1 and train step 4
    together; the main process alone scores, selects and writes. Returns the contents of
    ``feedback.json`` (None on the other processes)."""
    from uniemo.data import clip_transforms
    from uniemo.io import write_json
    from uniemo.joint import check_same_emotions
    from uniemo.metrics import default_device
    from uniemo.pipeline import UniEmoPipeline, run_sd_path
    from uniemo.training import on_main
    from uniemo.understanding import load_image_processor, train_understanding

    settings = cfg.feedback
    check_settings(settings)
    if "sem-c" in settings.criteria and not semantic:
        raise UniEmoError("filtering by Sem-C needs --places365 / --imagenet-resnet50 weights, or scene or object "
                          f"names for CLIP zero-shot, and {data_root} has none: pass the weights, or filter by "
                          "Emo-A alone (--criteria emo-a)")
    run = RunDir(out)
    out, generated = Path(out), run.generated
    if run.config.is_file() and not resume:
        raise UniEmoError(f"{out} already holds a stage-3 run: pass --resume to continue it, or choose a new --out")
    check_same_emotions(run2, real, data_root, "give feedback the dataset stage 2 was trained on (the same --data and "
                        "--dataset)")
    pipe = UniEmoPipeline.from_pretrained(run2, sd_path, dtype=dtype, scheduler=scheduler).to(default_device())
    class_names = pipe.class_names
    made_by = {"run": str(Path(run2).resolve()), "sd": str(Path(run_sd_path(RunDir(run2), cfg, sd_path)).resolve())}
    generate_images(pipe, generated, class_names, settings.per_emotion, seed, generate_batch_size, num_inference_steps,
                    made_by)
    del pipe

    real = copy.copy(real)  # the caller's keeps its own transform
    real.transform = transform = clip_transforms(load_image_processor(run2), train=True)
    images = list_generated(generated, class_names, settings.per_emotion)

    def select() -> int:
        scores = score_generated(generated, images, evaluator, semantic)
        kept = write_selection(generated, images, scores, settings.criteria, settings.eta, settings.delta,
                               vocabulary_info(real))
        if not kept:
            raise UniEmoError(f"none of the {len(images)} generated images lies in the [{settings.eta:g}%, "
                              f"{settings.delta:g}%) window of every criterion: raise --per-emotion or widen the "
                              "window")
        return len(kept)

    kept = on_main(select)  # the other processes read the selection from disk
    mix = build_mix(real, generated, settings.proportion, seed, transform)
    before = on_main(lambda: understanding_accuracy(run2, data_root, kind, cfg.stage1.batch_size))
    after = train_understanding(data_root, out, cfg, kind, resume=resume, train_set=mix, init_from=run2)
    if after is None:  # not the main process
        return None
    summary = {
        "run2": str(run2), "run3": str(out), "data": str(data_root), "dataset": kind,
        "criteria": list(settings.criteria), "eta": settings.eta, "delta": settings.delta,
        "per_emotion": settings.per_emotion, "generated": len(images), "kept": kept,
        "mixed_in": mix.num_generated, "real": mix.num_real, "proportion_asked": settings.proportion,
        "proportion": mix.proportion, "seed": seed, "initial_weights": f"{run2} (stage 2)",
        "accuracy": {split: {"before": before[split]["top1"], "after": after[split]["top1"]} for split in after},
    }
    write_json(run.feedback, summary)
    return summary


def feedback_table(summary: dict) -> str:
    """The before/after table of a feedback run (Markdown)."""
    lines = ["| split | RUN2 (before) | RUN3 (after) | change |", "|---|---:|---:|---:|"]
    for split, acc in summary["accuracy"].items():
        lines.append(f"| {split} top-1 | {acc['before']:.2%} | {acc['after']:.2%} | "
                     f"{(acc['after'] - acc['before']) * 100:+.2f} pt |")
    lines += ["", f"kept {summary['kept']} of {summary['generated']} generated images "
              f"({', '.join(summary['criteria'])} within [{summary['eta']:g}%, {summary['delta']:g}%)); "
              f"mixed in {summary['mixed_in']} with {summary['real']} real images: "
              f"proportion {summary['proportion']:.1%} (asked {summary['proportion_asked']:.0%})"]
    return "\n".join(lines) + "\n"
