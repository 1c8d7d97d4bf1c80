"""``uniemo demo``: the whole UniEmo method on this machine, offline, in one command.

synth -> foundation models (shipped, or pretrain-base) -> stage 1 (understanding) -> stage 2
(joint) -> the Emo-A evaluator -> generation (transfer onto neutral objects, fusion of emotion
pairs and a weight sweep, each image the best of several draws as the understanding branch
reads them; 8 emotions, one draw each) + the plain-prompt baseline -> editing test images toward
another emotion -> generation metrics (FID, Emo-A, ...) -> explicit feedback + stage 3 ->
understanding evaluation of every stage -> metrics of transfer, fusion and edits (object kept,
mix mass, edit fidelity) -> report.

Every step is a ``uniemo`` command run in-process, so the demo exercises exactly what a user
runs. A step that finished leaves a marker in ``OUT/.steps/``; re-running the demo reuses it.
A step without a marker (never run, or killed) has its outputs removed and runs again.

After stage 2, the steps run in two lanes: the main lane in this process, the side lane
(``Step.side``) in a second one, each on one thread. Ops of models this small keep a second core
only a little busy (25-step generation: 40 s on two threads, 43 s on one), so two steps side by
side take that part of the demo from 321 s to 249 s, 209 s with the steps spread more evenly
(docs/DECISIONS.md). A main-lane step waits for the side-lane steps it needs (``Step.needs``);
the side lane needs nothing of the main one, so neither lane can wait for the other forever.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from uniemo.errors import UniEmoError
from uniemo.io import partial_dir, read_json, write_json
from uniemo.rundir import RunDir
from uniemo.vocab import EMOTIONS, normalise_attribute


@dataclass(frozen=True)
class DemoPlan:
    """How much work each step does; ``quick`` exists for the end-to-end test and a first look."""

    num_images: int
    pretrain_args: tuple[str, ...]  # `uniemo pretrain-base` options when the demo trains its own foundation
    stage1_epochs: int
    stage2_epochs: int  # the joint training's length: Emo-A rises with it (docs/BENCHMARKS.md)
    images_per_emotion: int
    denoising_steps: int
    feedback_per_emotion: int
    stage3_epochs: int
    transfer_images: int  # per object and emotion
    fusion_images: int  # per mix
    # transfer and fusion images: each the best of this many draws as the understanding branch reads
    # them (`generate --candidates`); a single draw is SPEC's sampling (docs/DECISIONS.md)
    candidates: int = 4
    label_noise: float = 0.05
    train_foundation: bool = False  # train the foundation models on this world instead of using the shipped ones
    train_per_emotion: int | None = None  # the data-scarce split for stages 1-3 (pretrain and evaluator: all)
    evaluator_hidden: int = 256  # 2-layer probe (docs/DECISIONS.md)
    transfer_objects: tuple[str, ...] = ("house", "tree", "bottle")  # neutral objects of the synthetic world
    fusion_pairs: tuple[tuple[str, str], ...] = (("amusement", "fear"), ("awe", "sadness"), ("contentment", "anger"))
    sweep: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the first fusion pair's first emotion
    edit_strength: float = 0.8  # the first strength --until-target tries
    edit_invert: bool = True  # edits start from the source's DDIM inversion (docs/BENCHMARKS.md)
    # the sources are test images of neutral objects, each edit naming its source's annotated object
    # (--object-from); chosen on 40 validation images (docs/BENCHMARKS.md, session 26): Emo-A / kept
    # 0.75 / 0.65 (the object the understanding branch reads: 0.70 / 0.575; none: 0.82 / 0.25)
    edit_name_object: bool = True
    edit_keep_region: float | None = None  # with the object named, a kept region lost 0.05 of each (0.3)
    fid_real_per_emotion: int = 25  # FID's reference sample (Inception-v3: 15 images/s here)

    def pair_mixes(self) -> list[dict[str, float]]:
        """Every fusion pair at 0.5/0.5."""
        return [{x: 0.5, y: 0.5} for x, y in self.fusion_pairs]

    def sweep_mixes(self) -> list[dict[str, float]]:
        """The first fusion pair at each weight of the sweep."""
        (a, b), *_ = self.fusion_pairs
        return [{a: w, b: 1 - w} for w in self.sweep]

    def mixes(self) -> list[dict[str, float]]:
        """Every mix the demo generates: the pairs, then the sweep's other weights."""
        pairs = self.pair_mixes()
        return pairs + [m for m in self.sweep_mixes() if m not in pairs]


PLANS = {
    "full": DemoPlan(num_images=4000, pretrain_args=(), stage1_epochs=3, stage2_epochs=6,
                     images_per_emotion=16, denoising_steps=25, feedback_per_emotion=24, stage3_epochs=2,
                     transfer_images=8, fusion_images=8),
    "quick": DemoPlan(num_images=320, pretrain_args=("--steps-scale", "0.02"), stage1_epochs=1,
                      stage2_epochs=1, images_per_emotion=2, denoising_steps=4, feedback_per_emotion=4,
                      stage3_epochs=1, transfer_images=1, fusion_images=2, candidates=2,
                      transfer_objects=("house",), fusion_pairs=(("amusement", "fear"),), sweep=(0.0, 1.0),
                      fid_real_per_emotion=10),
}


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    outputs: tuple[str, ...]  # paths under OUT that this step writes (removed before a re-run)
    run: Callable[["Layout"], None]
    side: bool = False  # runs in the side lane's process (steps from PARALLEL_FROM on)
    needs: tuple[str, ...] = ()  # side-lane steps this main-lane step waits for


class StepFailed(UniEmoError):
    """A step's ``uniemo`` command exited non-zero after printing its own one-line error."""


def commands(*lines: Callable[["Layout"], list[list[str]] | list[str]]) -> Callable[["Layout"], None]:
    """A step made of ``uniemo`` command lines, run in-process; a failing one stops the demo."""

    def run(layout: Layout) -> None:
        from uniemo.cli import INTERRUPTED, main

        for line in lines:
            produced = line(layout)
            for argv in produced if produced and isinstance(produced[0], list) else [produced]:
                status = main([str(a) for a in argv])
                if status == INTERRUPTED:  # Ctrl-C: the command said "interrupted"; so does the demo, and it stops
                    raise KeyboardInterrupt
                if status:
                    command = " ".join(itertools.takewhile(lambda a: re.fullmatch("[a-z][a-z-]*", a), argv[:2]))
                    raise StepFailed(f"demo step `uniemo {command}` failed (exit {status})")
    return run


SHIPPED_FOUNDATION = Path(__file__).parent / "weights"  # `make foundation` builds it
PATHS = {"data": "data", "foundation": "foundation", "clip": "foundation/clip", "judge": "foundation/judge",
         "sd": "foundation/sd",
         "run1": "run1-understanding", "run2": "run2-joint", "run3": "run3-feedback",
         "evaluator": "evaluator", "generated": "generated", "baseline": "baseline",
         "transfer": "transfer", "fusion": "fusion", "edits": "edits", "metrics": "metrics",
         "explain": "explain"}


@dataclass(frozen=True)
class Layout:
    """Where every step reads and writes, under the demo's output directory."""

    out: Path
    plan: DemoPlan
    seed: int

    def __getattr__(self, name: str) -> str:
        if name not in PATHS:
            raise AttributeError(name)
        return str(self.out / PATHS[name])

    @property
    def train_data(self) -> str:
        """The dataset stages 1-3 train on: the data-scarce split when the plan asks for one."""
        return str(self.out / "data-scarce") if self.plan.train_per_emotion else self.data


def _generate(L: Layout, out: str, *selector: str, n: int | None = None) -> list:
    return ["generate", "--run", L.run2, *selector, "-n", n or L.plan.images_per_emotion,
            "--steps", L.plan.denoising_steps, "--seed", L.seed, "--out", out]


def _ranked_options(L: Layout) -> tuple:
    """Transfer and fusion: the best of the plan's draws, 8 images a batch (a 4-image batch of the
    tiny SD takes a fifth longer per image; the emotions' images keep 4 and their figures)."""
    return "--candidates", L.plan.candidates, "--batch-size", 8


def _evaluate_understanding(L: Layout, run: str, name: str) -> list:
    return ["evaluate", "understanding", "--run", run, "--data", L.data, "--split", "test",
            "--out", f"{L.metrics}/understanding-{name}.json"]


def _evaluate_generation(L: Layout, images: str, out: str, *extra) -> list:
    """``out``: the report's path under OUT/metrics/. The judge, a CLIP no model of UniEmo uses,
    names objects and scenes (object kept, Sem-C)."""
    return ["evaluate", "generation", "--images", images, "--real", L.data, "--clip", L.judge,
            "--evaluator", L.evaluator, "--seed", L.seed, "--out", f"{L.metrics}/{out}", *extra]


def _fid_reference(L: Layout, inception: bool = True) -> tuple:
    """FID's reference: a sample of real images per emotion (Inception-v3 takes 15 images/s on 2 CPU
    cores; the features are cached, so the baseline reuses UniEmo's). Transfer, fusion and edits
    are not measured by FID, so they keep CLIP's (``inception=False``)."""
    return ("--max-real", L.plan.fid_real_per_emotion, *(() if inception else ("--inception", "none")))


def _synth(L: Layout, out: str, *extra) -> list:
    return ["synth", out, "--num-images", L.plan.num_images, "--seed", L.seed, "--label-noise", L.plan.label_noise,
            *extra]


def synthesize(L: Layout) -> None:
    """The synthetic world (and its data-scarce split), each copied from the uniemo cache where
    this code wrote it before with the same settings: writing one takes 12 s here, copying 1 s."""
    worlds = [_synth(L, L.data)]
    if L.plan.train_per_emotion:
        worlds.append(_synth(L, L.train_data, "--train-per-emotion", L.plan.train_per_emotion))
    for argv in worlds:
        out, cached = Path(argv[1]), world_cache(argv)
        if cached.is_dir():
            print(f"the world of `uniemo {' '.join(map(str, argv))}`, written before: copied from {cached}")
            _copy_dir(cached, out)
        else:
            commands(lambda _: argv)(L)
            _copy_dir(out, cached)


def world_cache(argv: list) -> Path:
    """Where the world `uniemo synth` writes with ``argv`` is cached: keyed by its settings, the
    synth module's source and the versions of the libraries that draw and encode it."""
    import hashlib
    import json

    import numpy
    import PIL

    from uniemo.demo import synth
    from uniemo.metric_nets import cache_dir

    key = hashlib.sha256(json.dumps([str(a) for a in argv[2:]] + [numpy.__version__, PIL.__version__]).encode())
    key.update(Path(synth.__file__).read_bytes())
    return cache_dir() / "worlds" / key.hexdigest()[:32]


def _copy_dir(source: Path, target: Path) -> None:
    """Copy a folder whole or not at all: into a temporary sibling, renamed into place (a copy
    another process finished first is kept)."""
    partial = partial_dir(target)
    shutil.copytree(source, partial)
    try:
        partial.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        _remove(partial)


def _mix_argument(weights: dict[str, float]) -> str:
    return ",".join(f"{name}={w:g}" for name, w in weights.items())


STEPS = (
    Step("synth", "synthetic emotional world (EmoSet format)", ("data", "data-scarce"), lambda L: synthesize(L)),
    Step("pretrain", "foundation models: tiny CLIP + tiny Stable Diffusion", ("foundation",),
         lambda L: pretrain_foundation(L) if L.plan.train_foundation else copy_shipped_foundation(L)),
    Step("stage1", "stage 1: hierarchical understanding chain", ("run1-understanding",), commands(lambda L: [
        "train", "understand", "--data", L.train_data, "--clip", L.clip, "--out", L.run1, "--preset", "tiny",
        "--epochs", L.plan.stage1_epochs, "--seed", L.seed])),
    Step("stage2", "stage 2: joint understanding + generation", ("run2-joint",), commands(lambda L: [
        "train", "joint", "--run", L.run1, "--sd", L.sd, "--data", L.train_data, "--out", L.run2,
        "--epochs", L.plan.stage2_epochs, "--seed", L.seed])),
    Step("evaluator", "Emo-A evaluator (independent probe on frozen CLIP)", ("evaluator",), commands(lambda L: [
        "train", "evaluator", "--clip", L.clip, "--data", L.data, "--out", L.evaluator,
        "--hidden", L.plan.evaluator_hidden, "--seed", L.seed]), side=True),
    Step("modes", "generation: transfer onto neutral objects and fusion of emotions, each image the best of "
         "several draws as the understanding branch reads them", ("transfer", "fusion"), commands(
            lambda L: [_generate(L, f"{L.transfer}/{o}", "--emotion", "all", "--object", o, *_ranked_options(L),
                                 n=L.plan.transfer_images) for o in L.plan.transfer_objects],
            lambda L: [_generate(L, L.fusion, "--mix", _mix_argument(m), *_ranked_options(L),
                                 n=L.plan.fusion_images) for m in L.plan.mixes()])),
    Step("generate", "generation: 8 emotions", ("generated",),
         commands(lambda L: _generate(L, L.generated, "--emotion", "all")), side=True),
    Step("baseline", "baseline: the base model prompted with the emotion word", ("baseline",),
         lambda L: generate_baseline(L), side=True),
    Step("edit", "emotion editing: 56 test images of neutral objects, each turned toward another emotion", ("edits",),
         commands(lambda L: edit_commands(L))),
    Step("metrics", "generation metrics of UniEmo and the baseline (FID, LPIPS, Emo-A, Sem-C, Sem-D)",
         ("metrics/generation-uniemo.json", "metrics/generation-baseline.json"), commands(
            lambda L: _evaluate_generation(L, L.generated, "generation-uniemo.json", *_fid_reference(L)),
            lambda L: _evaluate_generation(L, L.baseline, "generation-baseline.json", *_fid_reference(L))),
         side=True),
    Step("feedback", "explicit feedback (Algorithm 1) + stage 3", ("run3-feedback",), commands(lambda L: [
        "feedback", "--run", L.run2, "--data", L.train_data, "--evaluator", L.evaluator, "--out", L.run3,
        "--per-emotion", L.plan.feedback_per_emotion, "--epochs", L.plan.stage3_epochs,
        "--steps", L.plan.denoising_steps, "--seed", L.seed]), side=True),
    Step("explain", "expert-query attention maps on test images", ("explain",), commands(lambda L: [
        "classify", "--run", L.run3, "--explain", L.explain, *test_images(L, 4)]), side=True),
    Step("understanding", "understanding accuracy of every stage (test split)",
         tuple(f"metrics/understanding-{n}.json" for n in ("stage1", "stage2", "stage3")), commands(
            lambda L: _evaluate_understanding(L, L.run1, "stage1"),
            lambda L: _evaluate_understanding(L, L.run2, "stage2"),
            lambda L: _evaluate_understanding(L, L.run3, "stage3")), side=True),
    Step("mode-metrics", "metrics of transfer, fusion and edits (Emo-A, object kept, mix mass, edit fidelity)",
         ("metrics/transfer", "metrics/generation-fusion.json", "metrics/generation-edit.json"), commands(
            lambda L: [_evaluate_generation(L, f"{L.transfer}/{o}", f"transfer/{o}.json", *_fid_reference(L, False))
                       for o in L.plan.transfer_objects],
            lambda L: _evaluate_generation(L, L.fusion, "generation-fusion.json", *_fid_reference(L, False)),
            lambda L: _evaluate_generation(L, L.edits, "generation-edit.json", *_fid_reference(L, False))),
         needs=("evaluator",)),
)
PARALLEL_FROM = "evaluator"  # the first step of the two lanes


# ``uniemo demo --train-foundation``: the foundation models trained on this demo's own world
pretrain_foundation = commands(lambda L: [
    "pretrain-base", L.foundation, "--data", L.data, "--seed", L.seed, *L.plan.pretrain_args])


def copy_shipped_foundation(L: Layout) -> None:
    """Copy the foundation models shipped with the package into the run, the way a real user
    has downloaded CLIP and Stable Diffusion before running UniEmo (docs/DECISIONS.md)."""
    from uniemo.demo.synth import WORLD_VERSION

    world = read_json(SHIPPED_FOUNDATION / "pretrain_report.json", "shipped foundation report").get("world") or {}
    if world.get("version") != WORLD_VERSION:
        raise UniEmoError(f"the shipped foundation models were trained on world {world.get('version')}, this is world "
                          f"{WORLD_VERSION}: rebuild them with `make foundation`, or run `uniemo demo --train-foundation`")
    shutil.copytree(SHIPPED_FOUNDATION, L.foundation)


def test_images_by_emotion(L: Layout) -> dict[str, list[str]]:
    """The test split's image paths per emotion, in the split's order."""
    by_emotion: dict[str, list[str]] = {}
    for emotion, path, *_ in read_json(Path(L.data) / "test.json", "split file"):
        by_emotion.setdefault(emotion, []).append(str(Path(L.data) / path))
    return by_emotion


def test_images(L: Layout, count: int) -> list[str]:
    """The first test image of ``count`` different emotions."""
    by_emotion = test_images_by_emotion(L)
    return [by_emotion[e][0] for e in EMOTIONS if e in by_emotion][:count]


def edit_commands(L: Layout) -> list[list]:
    """One `uniemo edit` per target emotion, of its :func:`edit_sources`."""
    by_emotion = neutral_object_test_images(L)
    return [["edit", *edit_sources(by_emotion, e), "--run", L.run2, "--emotion", e,
             "--strength", L.plan.edit_strength, "--until-target", "--steps", L.plan.denoising_steps,
             *(["--invert"] if L.plan.edit_invert else []),
             *(["--object-from", L.data] if L.plan.edit_name_object else []),
             *(["--keep-region", L.plan.edit_keep_region] if L.plan.edit_keep_region else []),
             "--seed", L.seed, "--out", L.edits]
            for e in EMOTIONS]


def edit_sources(by_emotion: dict[str, list[str]], emotion: str) -> list[str]:
    """A test image of a neutral object (``by_emotion``: :func:`neutral_object_test_images`) of
    every emotion but ``emotion``, another one for each target: over the eight targets, 56 test
    images (the first 7 of each emotion whose annotated object is one of the world's neutral
    objects), each edited once, every ordered pair of emotions once. A test split with fewer such
    images (``--quick``) repeats them. An emotional object keeps its emotion when kept
    (docs/BENCHMARKS.md): editing it means redrawing it."""
    sources = []
    for other in EMOTIONS:
        images = by_emotion.get(other, [])
        if other != emotion and images:
            sources.append(images[[e for e in EMOTIONS if e != other].index(emotion) % len(images)])
    return sources


def neutral_object_test_images(L: Layout) -> dict[str, list[str]]:
    """The test split's images whose annotated object is neutral in the world, per emotion, in the
    split's order."""
    from uniemo.data import open_dataset
    from uniemo.demo.synth import NEUTRAL_OBJECTS

    test = open_dataset(L.data, split="test")
    neutral = {normalise_attribute(name) for name in NEUTRAL_OBJECTS}
    by_emotion: dict[str, list[str]] = {}
    for item in test.items:
        if item.object in neutral:
            by_emotion.setdefault(test.class_names[item.label], []).append(str(item.path))
    return by_emotion


def generate_baseline(L: Layout) -> None:
    """Paper Table IV's "Stable Diffusion" row: the base model prompted with the plain emotion word."""
    import torch

    from uniemo.config import load_config
    from uniemo.io import atomic_path
    from uniemo.loading import load_sd

    pipe = load_sd(L.sd)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    guidance = load_config(RunDir(L.run2).config).generation.guidance_scale  # as UniEmo's images
    for k, emotion in enumerate(EMOTIONS):
        images = pipe([emotion] * L.plan.images_per_emotion, num_inference_steps=L.plan.denoising_steps,
                      guidance_scale=guidance, height=size, width=size,
                      generator=torch.Generator().manual_seed(L.seed * 1000 + k)).images
        for i, image in enumerate(images):
            with atomic_path(Path(L.baseline) / emotion / f"{i:04d}.png") as tmp:
                image.save(tmp, format="PNG")


def run_steps(layout: Layout, log: Callable[[str], None]) -> dict[str, float]:
    """Run every step not finished before; return the seconds each step took (then or now).
    Up to PARALLEL_FROM one after another; from there the main lane here and the side lane in a
    second process, each process on one thread (so a seed gives the same figures however the
    two lanes interleave)."""
    split = next(i for i, step in enumerate(STEPS) if step.name == PARALLEL_FROM)
    for step in STEPS[:split]:
        run_step(layout, step, log)
    with SideLane(layout, [s for s in STEPS[split:] if s.side], log) as side, one_thread():
        for step in STEPS[split:]:
            if not step.side:
                side.wait_for(step.needs)
                run_step(layout, step, log)
            elif not side.process:  # the side lane finished earlier: its reuse lines, in order
                run_step(layout, step, log)
    return {step.name: read_json(_marker(layout, step))["seconds"] for step in STEPS}


def _marker(layout: Layout, step: Step) -> Path:
    return layout.out / ".steps" / f"{step.name}.json"


def _log_file(layout: Layout, step: Step) -> Path:
    return layout.out / "logs" / f"{step.name}.log"


def _finished(layout: Layout, steps: list[Step]) -> bool:
    return all(_marker(layout, step).is_file() for step in steps)


def run_step(layout: Layout, step: Step, log: Callable[[str], None], bars_to_log: bool = False) -> None:
    """Run ``step`` unless its marker says it finished; its printed output goes to its log
    (and its progress bars too with ``bars_to_log``, as the side lane's would garble the console)."""
    marker = _marker(layout, step)
    prefix = f"[{STEPS.index(step) + 1}/{len(STEPS)}] {step.title}"
    if marker.is_file():
        log(f"{prefix}: done earlier ({read_json(marker)['seconds']:.0f} s), reused")
        return
    for output in step.outputs:
        _remove(layout.out / output)
    log_file = _log_file(layout, step)
    log(f"{prefix} ... (its output: {log_file.relative_to(layout.out)})")
    start = time.perf_counter()
    log_file.parent.mkdir(exist_ok=True)
    with open(log_file, "w") as text, contextlib.redirect_stdout(text), \
            contextlib.redirect_stderr(text) if bars_to_log else contextlib.nullcontext():
        try:
            step.run(layout)
        except StepFailed as e:  # the command's error line went to stderr: the console, or the log
            where = f"in {log_file}" if bars_to_log else "above"
            raise StepFailed(f"{e}: fix what it printed ({where}) and re-run `uniemo demo` to continue") from None
    seconds = time.perf_counter() - start
    write_json(marker, {"seconds": seconds})
    log(f"{prefix}: {seconds:.0f} s")


@contextlib.contextmanager
def one_thread():
    """This process's torch ops on one thread while the side lane has the other core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SideLane:
    """The side lane's steps in a second process, started by spawn (a fork of a process whose
    torch has run OpenMP threads can hang). It sends its console lines and its failure back
    through a pipe; a thread here prints them while this process runs the main lane."""

    def __init__(self, layout: Layout, steps: list[Step], log: Callable[[str], None]):
        self.layout, self.steps, self.log = layout, steps, log
        self.process = None
        self.error: str | None = None
        self.ended = threading.Event()

    def __enter__(self) -> "SideLane":
        if _finished(self.layout, self.steps):
            self.ended.set()
            return self
        import multiprocessing

        spawn = multiprocessing.get_context("spawn")
        receive, send = spawn.Pipe(duplex=False)
        L = self.layout
        self.process = spawn.Process(target=run_side_lane, daemon=True,
                                     args=(L.out, L.plan, L.seed, [s.name for s in self.steps], send, os.getpid()))
        self.process.start()
        send.close()
        threading.Thread(target=self._relay, args=(receive,), daemon=True).start()
        return self

    def _relay(self, receive) -> None:
        try:
            while True:
                kind, text = receive.recv()
                if kind != "log":
                    self.error = text if kind == "error" else None
                    break
                self.log(text)
        except EOFError:  # the process ended without a word
            pass
        self.ended.set()

    def wait_for(self, names: tuple[str, ...]) -> None:
        """Block until the side lane has finished the steps ``names``."""
        needed = [s for s in self.steps if s.name in names]
        while not _finished(self.layout, needed):
            if self.ended.wait(0.5) and not _finished(self.layout, needed):
                raise self.failure()

    def failure(self) -> UniEmoError:
        return UniEmoError(self.error or f"the demo's second process (the side lane) ended early (exit code "
                                         f"{self.process.exitcode}): re-run `uniemo demo` to continue")

    def __exit__(self, kind, value, traceback) -> None:
        if self.process is None:
            return
        if kind is not None:
            self.process.terminate()
        self.process.join()
        self.ended.wait(5)
        if kind is None and (self.error or self.process.exitcode):
            raise self.failure()


def run_side_lane(out: Path, plan: DemoPlan, seed: int, names: list[str], send, parent: int) -> None:
    """The side lane's process: its steps in order on one thread; a one-line error goes back to
    the demo, which exits with it."""
    _exit_with(parent)
    import torch

    torch.set_num_threads(1)
    layout = Layout(out, plan, seed)
    for step in (s for s in STEPS if s.name in names):
        log = _log_file(layout, step)
        try:
            run_step(layout, step, lambda line: send.send(("log", line)), bars_to_log=True)
        except UniEmoError as e:  # a failed command's error already names the log
            send.send(("error", str(e) if isinstance(e, StepFailed) else f"{e} (its output: {log})"))
            return
        except KeyboardInterrupt:  # Ctrl-C reached the demo too, which says so
            return
        except BaseException as e:
            send.send(("error", f"the demo's side lane failed in its step {step.name}: {type(e).__name__}: {e} "
                                f"(its output: {log})"))
            raise
    send.send(("done", ""))


def _exit_with(parent: int) -> None:
    """A demo killed with SIGKILL takes its side lane with it (Linux's parent-death signal), so no
    orphan writes into OUT while a re-run redoes the same step."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_demo(out: Path, plan: DemoPlan, seed: int) -> Path:
    """Run (or resume) every step, then write OUT/report.html and OUT/report.json."""
    layout = Layout(out.resolve(), plan, seed)
    layout.out.mkdir(parents=True, exist_ok=True)
    check_same_plan(layout)
    start = time.perf_counter()
    seconds = run_steps(layout, console(sys.stdout))
    from uniemo.demo.report import write_demo_report

    return write_demo_report(layout, seconds, time.perf_counter() - start, peak_memory_gib())


def console(stream) -> Callable[[str], None]:
    """Print a line to ``stream`` (the console: steps redirect ``sys.stdout`` to their logs); on a
    terminal the line first clears whatever progress bar the other lane left on it."""
    clear = "\r\x1b[K" if stream.isatty() else ""

    def log(line: str) -> None:
        stream.write(f"{clear}{line}\n")
        stream.flush()
    return log


def check_same_plan(layout: Layout) -> None:
    """Finished steps are reused only for the plan, seed and world version that made them
    (OUT/.steps/plan.json): a demo folder of an earlier world is not mixed with this one."""
    import dataclasses
    import json

    from uniemo.demo.synth import WORLD_VERSION

    file = layout.out / ".steps" / "plan.json"
    plan = json.loads(json.dumps({"seed": layout.seed, "world": WORLD_VERSION,
                                  **dataclasses.asdict(layout.plan)}))  # tuples as lists
    if file.is_file() and read_json(file, "demo plan") != plan:
        raise UniEmoError(f"{layout.out} holds a demo run with another plan, seed or world: choose another --out, "
                          "or delete it to start again")
    write_json(file, plan)


def peak_memory_gib() -> float:
    """Peak resident memory of this process plus that of its largest child (the side lane): an
    upper bound of the two together."""
    import resource

    return sum(resource.getrusage(who).ru_maxrss
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20  # Linux reports KiB
