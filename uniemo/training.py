"""The one training loop of UniEmo: stage 1 (understanding), stage 2 (joint) and stage 3
(feedback) all call :func:`fit`.

How a stage uses it::

    groups = param_groups(model, cfg.stage2.optim, backbone=model.understanding.backbone)
    def step_fn(model, batch, step):      # model may be wrapped (DDP): call forward through it,
        out = model(batch)                # reach other methods with unwrap(model)
        loss = ...
        return loss, {"acc": accuracy}    # logs: scalars, averaged over the epoch
    def evaluate(model):                  # unwrapped model, eval mode, main process only
        return {"val_top1": ...}          # VAL split only: the best checkpoint is chosen on it
    def on_best(model, metrics):          # e.g. model.save_pretrained(run_dir)
        ...
    history = fit(run_dir, model, train_set, collate, step_fn, cfg.stage2, groups,
                  evaluate=evaluate, on_best=on_best, best_metric="val_top1", resume=args.resume)

What it does:

- `accelerate` runs it on CPU, one GPU, or several (``accelerate launch -m uniemo.cli train
  understand ...``); ``mixed_precision="auto"`` is bf16 on GPUs that support it, else fp32.
  ``batch_size`` is per process and micro-step; the effective batch is
  ``batch_size x grad_accum x processes``.
- AdamW over the given parameter groups (:func:`param_groups`: ``optim.lr`` for new modules,
  ``optim.backbone_lr`` for the CLIP tower, 0 = frozen), linear warmup then constant or cosine,
  gradient clipping.
- Data order is a permutation drawn from (seed, epoch), so resuming skips the consumed batches
  by slicing the order, without touching the data. Each sample is drawn under its own torch
  RNG seeded by (seed, epoch, index) (:class:`SeededSamples`), so random augmentation does not
  depend on the worker count, on prefetching or on where a run was interrupted.
- ``RUN/checkpoints/last/`` is written every ``checkpoint_every`` optimizer steps and at each
  epoch end, atomically (a temporary directory renamed into place): trainable weights,
  optimizer, scheduler, RNG states (torch, numpy, python, CUDA), epoch, step, position in the
  epoch, best score. ``resume=True`` continues from it; on CPU a resumed run ends with exactly
  the weights of an uninterrupted one, random augmentation included.
- One JSON line per epoch in ``RUN/metrics.jsonl`` (train means + the evaluate() figures).
- A NaN/inf loss stops training with a UniEmoError and leaves the last good checkpoint alone.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from uniemo.config import OptimConfig, TrainConfig
from uniemo.errors import UniEmoError
from uniemo.io import load_state_dict_checked, load_tensors, read_json, save_tensors, write_json
from uniemo.rundir import RunDir

CHECKPOINT = "last"


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps
    batch_in_epoch: int = 0  # micro-batches (per process) consumed in the current epoch
    best: float | None = None
    sums: dict[str, float] = field(default_factory=dict)  # running sums of the epoch's logs
    batches: int = 0  # micro-batches summed into ``sums``


def processes():
    """accelerate's ``PartialState`` of this run (its process index and count), made as
    ``Accelerator`` makes it: ``ACCELERATE_USE_CPU`` selects several CPU processes (gloo)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def my_batches(batches: Sequence, state=None) -> list:
    """This process's share of ``batches``, dealt round-robin (batch k to process k mod N). Each
    batch keeps the seed and the images it has in one process, so the processes together write
    exactly what one process writes."""
    state = state or processes()
    return list(batches)[state.process_index::state.num_processes]


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on the main process only (None on the others), then every process waits for it:
    run files are written and results printed once under ``torchrun`` / ``accelerate launch``."""
    state = processes()
    result = fn() if state.is_main_process else None
    state.wait_for_everyone()
    return result


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP / compiled wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def resolve_mixed_precision(mode: str) -> str:
    """"auto" -> bf16 on a GPU that supports it, else no."""
    if mode not in ("auto", "no", "fp16", "bf16"):
        raise UniEmoError(f"mixed_precision={mode!r} is unknown: choose auto, no, fp16 or bf16")
    if mode != "auto":
        return mode
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def param_groups(model: torch.nn.Module, optim: OptimConfig, backbone: torch.nn.Module | None = None,
                 mappers: torch.nn.Module | None = None) -> list[dict]:
    """AdamW groups: the backbone at ``optim.backbone_lr``, the fusion's mappers at
    ``optim.mapper_lr`` (when set), everything else at ``optim.lr``; a learning rate of 0
    freezes those parameters. No weight decay on biases, norms and beta."""
    lrs = {"new": optim.lr, "backbone": optim.backbone_lr, "mappers": optim.mapper_lr}
    part_of = {id(p): name for name, module in (("backbone", backbone), ("mappers", mappers))
               if module is not None and lrs[name] is not None for p in module.parameters()}
    groups: dict[tuple[str, bool], dict] = {}
    for p in model.parameters():
        part = part_of.get(id(p), "new")
        lr = lrs[part]
        if lr < 0:
            raise UniEmoError(f"learning rate {lr} is negative: use a value >= 0 (0 freezes)")
        if lr == 0:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2
        group = groups.setdefault((part, decay), {
            "name": part + ("" if decay else "_no_decay"),
            "params": [], "lr": lr, "weight_decay": optim.weight_decay if decay else 0.0})
        group["params"].append(p)
    if not groups:
        raise UniEmoError("nothing to train: every learning rate is 0; set optim.lr or optim.backbone_lr above 0")
    return list(groups.values())


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g).tolist()


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[i]`` computed under the CPU RNG seeded by (seed, epoch, i) and then restored:
    a sample's random augmentation is a function of the sample alone, the same in a resumed run,
    in any DataLoader worker and however far the loader prefetched. Only the CPU generator is
    seeded: ``torch.manual_seed`` also seeds every accelerator's, which reset the GPU's draws in
    the training step once per sample, and without a GPU queues three stack traces per call for
    a later CUDA start (1.5 ms: 29 s of the demo's stage 2, docs/BENCHMARKS.md)."""

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed = dataset, epoch_seed(seed, epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.seed * 1_000_003 + index) % 2**63)
            return self.dataset[index]


def lr_lambda(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if optim.schedule not in ("constant", "cosine"):
        raise UniEmoError(f"optim.schedule={optim.schedule!r} is unknown: choose constant or cosine")

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit(run_dir: str | Path, model: torch.nn.Module, train_set, collate_fn, step_fn, cfg: TrainConfig,
        groups: list[dict], evaluate=None, on_best=None, best_metric: str = "val_top1",
        best_mode: str = "max", resume: bool = False, desc: str = "train") -> list[dict]:
    """Train ``model`` and return the metrics lines written (one per epoch).

    ``step_fn(model, batch, step) -> (loss, logs)`` (``step``: optimizer steps taken so far);
    ``evaluate(model) -> dict`` on the validation split after every epoch; ``on_best(model,
    metrics)`` whenever ``metrics[best_metric]`` improves (every epoch when there is no
    ``evaluate``)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    _check_config(cfg, len(train_set))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = RunDir(run_dir).checkpoints
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    world = accelerator.num_processes
    batches_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * world))
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, total_steps))
    state = TrainState()
    if resume and _checkpoint_dir(ckpt_root) is None:  # stopped before its first checkpoint
        on_main(lambda: print(f"no checkpoint in {ckpt_root} yet: training {run_dir} from its first step"))
        _truncate_metrics(RunDir(run_dir).metrics, 0)
    elif resume:
        state = load_checkpoint(ckpt_root, model, optimizer, scheduler, accelerator.process_index)
        _truncate_metrics(RunDir(run_dir).metrics, state.step)
    elif _checkpoint_dir(ckpt_root) is not None:
        raise UniEmoError(f"{run_dir} already holds a training checkpoint: pass --resume to continue it, "
                          "or choose a new output directory")
    prepared, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for g in groups for p in g["params"]]

    history: list[dict] = []
    started = time.time()
    while state.epoch < cfg.epochs and not _done(state, cfg):
        order = epoch_order(len(train_set), cfg.seed, state.epoch)
        loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            SeededSamples(train_set, cfg.seed, state.epoch), batch_size=cfg.batch_size,
            sampler=order[state.batch_in_epoch * cfg.batch_size * world:], collate_fn=collate_fn,
            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, state.epoch))))
        prepared.train()
        bar = tqdm(loader, total=batches_per_epoch, initial=state.batch_in_epoch, leave=False, dynamic_ncols=True,
                   desc=f"{desc} epoch {state.epoch + 1}/{cfg.epochs}", disable=not accelerator.is_main_process)
        for batch in bar:
            with accelerator.accumulate(prepared):
                loss, logs = step_fn(prepared, batch, state.step)
                _check_finite(accelerator, loss, state, ckpt_root)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            _accumulate_logs(state, {"loss": loss, **logs})
            bar.set_postfix({k: f"{v / state.batches:.3f}" for k, v in state.sums.items() if k in ("loss", "acc")})
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            end_of_epoch = state.batch_in_epoch == batches_per_epoch
            if _done(state, cfg):
                break
            if state.step % cfg.checkpoint_every == 0 and not end_of_epoch:
                save_checkpoint(ckpt_root, accelerator, prepared, optimizer, scheduler, state)
        bar.close()
        if state.batch_in_epoch == batches_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        line = _end_of_epoch(accelerator, prepared, state, scheduler, evaluate, on_best, best_metric, best_mode,
                             batches_per_epoch, started)
        if accelerator.is_main_process:
            with open(RunDir(run_dir).metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        history.append(line)
        save_checkpoint(ckpt_root, accelerator, prepared, optimizer, scheduler, state)
    accelerator.wait_for_everyone()
    return history


def _check_config(cfg: TrainConfig, n: int) -> None:
    if n == 0:
        raise UniEmoError("the training set is empty: check --data and the split files")
    for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise UniEmoError(f"{name}={getattr(cfg, name)} must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UniEmoError(f"max_steps={cfg.max_steps} must be at least 1 (or unset)")
    if cfg.num_workers < 0:
        raise UniEmoError(f"num_workers={cfg.num_workers} must be >= 0")
    if not 0 <= cfg.seed < 2**32:
        raise UniEmoError(f"seed={cfg.seed} is invalid: use an integer from 0 to {2**32 - 1}")


def _done(state: TrainState, cfg: TrainConfig) -> bool:
    return cfg.max_steps is not None and state.step >= cfg.max_steps


def _check_finite(accelerator, loss: torch.Tensor, state: TrainState, ckpt_root: Path) -> None:
    value = accelerator.gather(loss.detach().float().reshape(1))
    if not bool(torch.isfinite(value).all()):
        kept = _checkpoint_dir(ckpt_root)
        where = f"the last good checkpoint is kept in {kept}" if kept else "no checkpoint was written yet"
        raise UniEmoError(f"loss became {value[~torch.isfinite(value)][0].item()} at step {state.step + 1} "
                          f"(epoch {state.epoch + 1}); training stopped and {where}; "
                          "lower optim.lr or set mixed_precision: no, then train again into a new --out")


def _accumulate_logs(state: TrainState, logs: dict[str, Any]) -> None:
    for key, value in logs.items():
        value = value.detach().float().item() if torch.is_tensor(value) else float(value)
        state.sums[key] = state.sums.get(key, 0.0) + value
    state.batches += 1


def _end_of_epoch(accelerator, prepared, state: TrainState, scheduler, evaluate, on_best, best_metric, best_mode,
                  batches_per_epoch, started) -> dict:
    """Evaluate on the validation split, call on_best when it improves, and build the metrics line."""
    line = {"epoch": round(state.epoch + state.batch_in_epoch / batches_per_epoch, 4), "step": state.step,
            "processes": accelerator.num_processes,
            **{f"train_{k}": v / max(1, state.batches) for k, v in state.sums.items()},
            "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 1)}
    state.sums, state.batches = {}, 0
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = unwrap(accelerator.unwrap_model(prepared))
        metrics = {}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            model.train()
            line.update(metrics)
        score = metrics.get(best_metric)
        if evaluate is not None and score is None:
            raise UniEmoError(f"evaluate() returned no {best_metric!r}: it returned {sorted(metrics)}")
        better = score is None or state.best is None or (score > state.best if best_mode == "max" else score < state.best)
        if better:
            state.best = score
            if on_best is not None:
                on_best(model, line)
        line["best"] = state.best
    accelerator.wait_for_everyone()
    return line


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_dir(ckpt_root: Path) -> Path | None:
    """The last complete checkpoint (or the previous one, if a crash hit between the renames)."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        if (ckpt_root / name / "trainer.json").is_file():
            return ckpt_root / name
    return None


def save_checkpoint(ckpt_root: Path, accelerator, prepared, optimizer, scheduler, state: TrainState) -> None:
    """Write ``checkpoints/last`` atomically: into ``.last.tmp``, then renamed into place."""
    tmp, last, old = ckpt_root / f".{CHECKPOINT}.tmp", ckpt_root / CHECKPOINT, ckpt_root / f".{CHECKPOINT}.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _save_rng(tmp, accelerator.process_index)
    if accelerator.is_main_process:
        model = unwrap(accelerator.unwrap_model(prepared))
        save_tensors(tmp / "model.safetensors", {n: p for n, p in model.named_parameters() if p.requires_grad})
        _save_optimizer(tmp, optimizer.state_dict())
        write_json(tmp / "scheduler.json", scheduler.state_dict())
        write_json(tmp / "trainer.json", asdict(state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(ckpt_root: Path, model, optimizer, scheduler, rank: int) -> TrainState:
    """Restore everything :func:`save_checkpoint` wrote; returns the training state."""
    ckpt = _checkpoint_dir(ckpt_root)
    if ckpt is None:
        raise UniEmoError(f"no checkpoint to resume in {ckpt_root}: run without --resume to start training")
    weights = load_tensors(ckpt / "model.safetensors", "checkpoint weights")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    holder = torch.nn.ParameterDict({n.replace(".", "/"): p for n, p in trainable.items()})
    load_state_dict_checked(holder, {n.replace(".", "/"): t for n, t in weights.items()}, ckpt / "model.safetensors")
    optimizer.load_state_dict(_load_optimizer(ckpt))
    scheduler.load_state_dict(read_json(ckpt / "scheduler.json", "scheduler state"))
    _load_rng(ckpt, rank)
    try:
        return TrainState(**read_json(ckpt / "trainer.json", "trainer state"))
    except TypeError as e:
        raise UniEmoError(f"{ckpt}/trainer.json is from another version ({e}); start a new run") from None


def _save_optimizer(directory: Path, sd: dict) -> None:
    """Optimizer state as safetensors (tensors) + JSON (param groups and scalars); no pickle."""
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    save_tensors(directory / "optimizer.safetensors", tensors)
    write_json(directory / "optimizer.json", {"param_groups": sd["param_groups"], "scalars": scalars})


def _load_optimizer(directory: Path) -> dict:
    meta = read_json(directory / "optimizer.json", "optimizer state")
    state: dict[int, dict] = {}
    entries = {**load_tensors(directory / "optimizer.safetensors", "optimizer state"), **meta["scalars"]}
    for name, value in entries.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for group in groups:
        group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _save_rng(directory: Path, rank: int) -> None:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_tensors(directory / f"rng_{rank}.safetensors", tensors)
    write_json(directory / f"rng_{rank}.json", {"python": [version, list(mt), gauss],
                                                "numpy": [np_name, np_pos, np_has_gauss, np_gauss]})


def _load_rng(directory: Path, rank: int) -> None:
    tensors = load_tensors(directory / f"rng_{rank}.safetensors", "RNG state")
    meta = read_json(directory / f"rng_{rank}.json", "RNG state")
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_name, tensors["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be redone)."""
    from uniemo.io import write_text

    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by the interruption
    write_text(path, "".join(f"{line}\n" for line in kept))
