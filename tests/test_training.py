"""The shared training loop: learning, checkpoint + resume exactness, NaN handling, metrics."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from uniemo.config import OptimConfig, TrainConfig
from uniemo.errors import UniEmoError
from uniemo.training import epoch_order, fit, param_groups


class Blobs(torch.utils.data.Dataset):
    """Four Gaussian blobs in 8-d: a task a small MLP must learn."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        centres = torch.eye(8)[:4] * 3
        self.x = centres[self.labels] + torch.randn(n, 8, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": int(self.labels[i])}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(8, 16)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.backbone(x))


def step_fn(model, batch, step):
    logits = model(batch["x"])
    acc = (logits.argmax(-1) == batch["label"]).float().mean()
    return nn.functional.cross_entropy(logits, batch["label"]), {"acc": acc}


def make_evaluate(val):
    def evaluate(model):
        return {"val_top1": (model(val.x).argmax(-1) == val.labels).float().mean().item()}
    return evaluate


def config(**kw):
    base = dict(epochs=3, batch_size=16, num_workers=0, checkpoint_every=4, seed=3,
                optim=OptimConfig(lr=0.05, backbone_lr=0.02, warmup_steps=3, schedule="cosine"))
    return TrainConfig(**{**base, **kw})


def train(run_dir, cfg, resume=False, step=step_fn, on_best=None):
    torch.manual_seed(0)
    model = Net()
    history = fit(run_dir, model, Blobs(100, 0), None, step, cfg, param_groups(model, cfg.optim, model.backbone),
                  evaluate=make_evaluate(Blobs(64, 1)), on_best=on_best, resume=resume)
    return model, history


def test_loss_falls_and_validation_accuracy_rises(tmp_path):
    best = []
    _, history = train(tmp_path, config(epochs=4), on_best=lambda m, line: best.append(line["val_top1"]))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_top1"] > 0.85
    assert best == sorted(best) and best[-1] == max(h["val_top1"] for h in history)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [7, 14, 21, 28]  # ceil(100 / 16) = 7 steps per epoch
    assert (tmp_path / "checkpoints" / "last" / "trainer.json").is_file()


def test_frozen_backbone_is_not_updated(tmp_path):
    cfg = config(epochs=1, optim=OptimConfig(lr=0.05, backbone_lr=0.0))
    torch.manual_seed(0)
    model = Net()
    before = model.backbone.weight.clone()
    groups = param_groups(model, cfg.optim, model.backbone)
    assert {g["name"] for g in groups} == {"new", "new_no_decay"}
    fit(tmp_path, model, Blobs(40, 0), None, step_fn, cfg, groups)
    assert torch.equal(model.backbone.weight, before)


class Interrupt(Exception):
    pass


def interrupting_step(at):
    calls = {"n": 0}

    def step(model, batch, at_step):
        calls["n"] += 1
        if calls["n"] == at:
            raise Interrupt
        return step_fn(model, batch, at_step)
    return step


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    cfg = config(grad_accum=2)  # 7 batches -> 4 optimizer steps per epoch
    full, full_history = train(tmp_path / "full", cfg)
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", cfg, step=interrupting_step(12))  # inside epoch 2, after the step-4 checkpoint
    trainer = json.loads((tmp_path / "cut" / "checkpoints" / "last" / "trainer.json").read_text())
    assert (trainer["epoch"], trainer["step"]) == (1, 4)
    resumed, _ = train(tmp_path / "cut", cfg, resume=True)
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert (tmp_path / "full" / "metrics.jsonl").read_text().count("\n") == 3
    cut_lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [x["train_loss"] for x in cut_lines] == [x["train_loss"] for x in full_history]


def test_resume_from_a_mid_epoch_checkpoint(tmp_path):
    cfg = config(checkpoint_every=2)
    full, _ = train(tmp_path / "full", cfg)
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", cfg, step=interrupting_step(11))  # step 10 checkpointed mid epoch 2
    trainer = json.loads((tmp_path / "cut" / "checkpoints" / "last" / "trainer.json").read_text())
    assert (trainer["epoch"], trainer["step"], trainer["batch_in_epoch"]) == (1, 10, 3)
    resumed, _ = train(tmp_path / "cut", cfg, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def nan_at_9(model, batch, step, calls={"n": 0}):
        calls["n"] += 1
        loss, logs = step_fn(model, batch, step)
        return (loss * float("nan") if calls["n"] == 9 else loss), logs

    with pytest.raises(UniEmoError, match="loss became nan at step 9.*last good checkpoint"):
        train(tmp_path, config(), step=nan_at_9)
    trainer = json.loads((tmp_path / "checkpoints" / "last" / "trainer.json").read_text())
    assert trainer["step"] == 8  # the periodic checkpoint before the bad step, untouched
    _, history = train(tmp_path, config(), resume=True)  # and it resumes from there
    assert history[-1]["step"] == 21


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_first_step(tmp_path, capsys):
    cfg = config()
    full, _ = train(tmp_path / "full", cfg)
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", cfg, step=interrupting_step(3))  # the first checkpoint comes at step 4
    assert not (tmp_path / "cut" / "checkpoints" / "last").exists()
    resumed, _ = train(tmp_path / "cut", cfg, resume=True)
    assert "from its first step" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))


def test_a_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    train(tmp_path, config(epochs=1))
    with pytest.raises(UniEmoError, match="--resume"):
        train(tmp_path, config(epochs=1))


def test_max_steps_stops_early_and_bad_options_are_errors(tmp_path):
    _, history = train(tmp_path, config(max_steps=5))
    assert history[-1]["step"] == 5 and len(history) == 1
    for bad in (dict(batch_size=0), dict(epochs=0), dict(max_steps=-1)):
        with pytest.raises(UniEmoError, match="must be at least 1"):
            train(tmp_path / "bad", config(**bad))


def test_epoch_order_is_a_seeded_permutation():
    assert sorted(epoch_order(50, 0, 0)) == list(range(50))
    assert epoch_order(50, 0, 1) == epoch_order(50, 0, 1) != epoch_order(50, 0, 2)
    assert epoch_order(50, 1, 1) != epoch_order(50, 0, 1)
