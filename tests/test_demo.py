"""End to end: `uniemo demo --quick` runs every step offline, writes a report whose figures are
present and in range, and a second run reuses every finished step."""

import contextlib
import html
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from uniemo.cli import main
from uniemo.config import load_config
from uniemo.data import open_dataset
from uniemo.demo import synth
from uniemo.demo.synth import WORLD_VERSION
from uniemo.vocab import EMOTIONS, normalise_attribute


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def _fraction(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_report_json_carries_every_headline_figure_in_range(quick_demo):
    report = json.loads((quick_demo / "report.json").read_text())
    assert _fraction(report["understanding"]["test_accuracy"])
    assert all(_fraction(v) for v in report["understanding"]["by_stage"].values())
    assert set(report["understanding"]["by_stage"]) == {"stage1", "stage2", "stage3"}
    assert _fraction(report["generation"]["emo_a"]) and _fraction(report["generation"]["emo_a_baseline"])
    for name in ("uniemo", "baseline"):
        figures = report["generation"][name]
        assert figures["fid"] >= 0 and _fraction(figures["sem_c"]) and figures["sem_d"] >= 0
        # the paper's networks (make test fetches them); the report names the network behind each number
        assert "inception-v3" in figures["networks"]["fid"] and "alexnet" in figures["networks"]["lpips"]
        # objects and scenes are named by the judge, a CLIP no model of UniEmo uses
        assert str(quick_demo / "foundation" / "judge") in figures["networks"]["sem_c"]
        assert "foundation/clip" in figures["networks"]["emo_a"]
        assert figures["lpips"] > 0 and set(figures["per_emotion"]["fid"]) == set(figures["per_emotion"]["lpips"])
    steps = report["timings"]["steps"]
    assert {"synth", "pretrain", "stage1", "stage2", "generate", "feedback"} <= set(steps)
    assert all(s > 0 for s in steps.values())
    assert report["timings"]["peak_memory_gib"] > 0.1  # of the pytest process here, so no budget check
    assert 0 < report["feedback"]["kept"] <= report["feedback"]["generated"]


def test_report_states_the_world_and_measures_transfer_and_fusion(quick_demo):
    report = json.loads((quick_demo / "report.json").read_text())
    world = report["world"]
    assert world["ceiling"] == synth.ceiling(0.05) and world["transfer_objects"] == ["house"]
    assert set(world["neutral"]["object"]) == set(synth.NEUTRAL_OBJECTS)
    assert world["emotional"]["sadness"] == {"style": "dark muted cool banded", "scene": "cemetery", "object": "Candle"}
    alpha = world["alpha"]["object"]
    assert alpha["house"]["neutral"] and not alpha["candle"]["neutral"] and _fraction(alpha["house"]["alpha"])
    transfer = report["generation"]["transfer"]["house"]
    assert _fraction(transfer["emo_a"]) and _fraction(transfer["object_kept"])
    judged = json.loads((quick_demo / "metrics" / "transfer" / "house.json").read_text())["metrics"]["object_kept"]
    assert str(quick_demo / "foundation" / "judge") in judged["network"]
    fusion = report["generation"]["fusion"]
    assert set(fusion["pairs"]) == {"amusement+fear"} and _fraction(fusion["mean_mass"])
    drawn = fusion["world_drawn"]  # what the world's own images of both emotions score with this evaluator
    assert set(drawn["pairs"]) == {"amusement+fear"} and _fraction(drawn["mean_mass"]) and drawn["images"] == 32
    assert "own images of both" in (quick_demo / "report.html").read_text()
    sweep = fusion["sweep"]
    assert sweep["pair"] == ["amusement", "fear"] and sweep["weights"] == [0.0, 1.0]
    assert all(_fraction(p) for p in sweep["p_first"] + sweep["p_second"])
    for png in ("transfer.png", "fusion.png", "fusion_sweep.png", "fusion_sweep_plot.png", "edits.png"):
        assert (quick_demo / "figures" / png).stat().st_size > 1000


def test_edits_turn_test_images_toward_every_other_emotion(quick_demo):
    from uniemo.metrics import read_metadata

    edit = json.loads((quick_demo / "report.json").read_text())["generation"]["edit"]
    assert edit["edits"] == 8 * 7 and edit["strength"] == 0.8
    assert all(_fraction(edit[k]) for k in ("emo_a", "object_kept", "understanding_reads_target"))
    assert 0 <= edit["clip_distance"] <= 2
    test = {str(quick_demo / "data" / path): e for e, path, _ in json.loads((quick_demo / "data" / "test.json").read_text())}
    pairs = set()
    for record in read_metadata(quick_demo / "edits" / "metadata.jsonl").values():
        pairs.add((test[record["source"]], record["emotion"]))  # a test image, edited toward another emotion
        assert record["strength"] >= 0.8 and (record["reached"] or record["strength"] == 1.0)  # --until-target
    assert pairs == {(a, b) for a in EMOTIONS for b in EMOTIONS if a != b}
    items = {str(item.path): item for item in open_dataset(quick_demo / "data", split="test").items}
    neutral = {normalise_attribute(name) for name in synth.NEUTRAL_OBJECTS}
    per_emotion = {e: sum(1 for path, image in test.items() if image == e and items[path].object in neutral)
                   for e in EMOTIONS}
    records = read_metadata(quick_demo / "edits" / "metadata.jsonl").values()
    assert all(r["object"] == items[r["source"]].object in neutral for r in records)  # named as annotated
    # 7 test images of a neutral object of each emotion, fewer where the quick world's test split is smaller
    assert len({r["source"] for r in records}) == edit["sources"] == sum(min(7, n) for n in per_emotion.values())
    assert edit["object_named"] and edit["keep_region"] is None


def test_the_full_plan_edits_56_test_images_of_neutral_objects_once_each(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from uniemo.demo.runner import edit_sources, neutral_object_test_images

    split = [[e, f"image/{e}/{e}_{k:05d}.jpg", f"annotation/{e}/{e}_{k:05d}.json"] for e in EMOTIONS for k in range(12)]
    (tmp_path / "test.json").write_text(json.dumps(split))
    (tmp_path / "info.json").write_text(json.dumps({"emotion": {"label2idx": {e: i for i, e in enumerate(EMOTIONS)}}}))
    for e, image, annotation in split:  # every third image shows the emotion's own object, the others a neutral one
        k = int(annotation[-10:-5])
        for path in (image, annotation):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / image)
        (tmp_path / annotation).write_text(json.dumps(
            {"object": [synth.EMOTION_OBJECTS[e] if k % 3 == 0 else synth.NEUTRAL_OBJECTS[k % 7]]}))
    by_emotion = neutral_object_test_images(SimpleNamespace(data=tmp_path))
    edits = [(source, target) for target in EMOTIONS for source in edit_sources(by_emotion, target)]
    sources = [source for source, _ in edits]
    assert len(edits) == 56 and len(set(sources)) == 56  # issue 15: at least 32 test images, each edited once
    assert {(Path(s).parent.name, t) for s, t in edits} == {(a, b) for a in EMOTIONS for b in EMOTIONS if a != b}
    # the first 7 test images of each emotion that show a neutral object
    assert {int(Path(s).stem[-5:]) for s in sources} == {1, 2, 4, 5, 7, 8, 10}


def test_the_world_is_written_once_then_copied_from_the_cache(tmp_path, capsys, ended_pid):
    from types import SimpleNamespace

    from uniemo.demo.runner import synthesize

    def world(name: str, seed: int = 0) -> dict[str, bytes]:
        plan = SimpleNamespace(num_images=40, label_noise=0.05, train_per_emotion=None)
        synthesize(SimpleNamespace(data=str(tmp_path / name), seed=seed, plan=plan))
        return {str(p.relative_to(tmp_path / name)): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}

    written = world("a")
    assert "copied from" not in capsys.readouterr().out
    host = socket.gethostname()
    killed_copy, live_copy = (tmp_path / f".b.partial-{host}-{pid}" for pid in (ended_pid, os.getppid()))
    for folder in (killed_copy, live_copy):
        folder.mkdir()
    assert world("b") == written and "written before: copied from" in capsys.readouterr().out
    assert not killed_copy.exists() and live_copy.is_dir()  # what a SIGKILLed copy left goes; a running one's stays
    live_copy.rmdir()
    assert world("c", seed=1) != written and "copied from" not in capsys.readouterr().out  # another world
    assert len(written) > 80 and not list(tmp_path.glob("*.partial-*"))


def test_report_html_is_self_contained_and_labels_its_columns(quick_demo):
    html = (quick_demo / "report.html").read_text()
    assert "shipped with uniemo: trained once by `make foundation`" in html
    assert html.count("data:image/png;base64,") >= 8  # world, curves, confusion, attention, grids
    assert "src=\"http" not in html and "src=\"/" not in html
    for table in ("Table I shape", "Table IV shape", "Table VI shape", "ceiling (Bayes accuracy)",
                  "Emotion transfer onto neutral objects", "Fusion sweep", "Emotion editing"):
        assert table in html
    assert "this run (synthetic world, tiny models)" in html and "paper (EmoSet" in html


def test_every_generated_emotion_and_transfer_image_exists(quick_demo):
    for emotion in EMOTIONS:
        assert list((quick_demo / "generated" / emotion).glob("0000.png"))
        assert list((quick_demo / "transfer" / "house" / emotion).glob("0000.png"))
    lines = (quick_demo / "generated" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == len(EMOTIONS) * 2
    # transfer and fusion images are the best of the plan's draws (2 in the quick plan), the others one draw
    ranked = [json.loads(line) for folder in ("transfer/house", "fusion")
              for line in (quick_demo / folder / "metadata.jsonl").read_text().splitlines()]
    assert {m["candidates"] for m in ranked} == {2} and {json.loads(line)["candidates"] for line in lines} == {1}
    page = html.unescape((quick_demo / "report.html").read_text())
    assert "each the best of 2 draws as UniEmo's understanding branch reads them" in page


def test_a_second_run_reuses_every_step(quick_demo, capsys):
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == printed.count("] ") and "reused" in printed
    assert "understanding " in printed and "(ceiling 95.00%)" in printed and "fusion mass" in printed
    assert '"per_class"' not in printed  # a summary line per step, not whole JSON documents


def test_another_plan_seed_or_world_does_not_reuse_the_steps(quick_demo, capsys, monkeypatch):
    for extra in (["--train-per-emotion", "3"], ["--seed", "1"], ["--train-foundation"]):
        assert main(["demo", "--quick", "--out", str(quick_demo), *extra]) == 2
        err = capsys.readouterr().err
        assert "another plan, seed or world" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr("uniemo.demo.synth.WORLD_VERSION", "0.1")  # a folder made by an earlier world
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 2
    assert "another plan, seed or world" in capsys.readouterr().err


def test_a_broken_step_is_redone(quick_demo, capsys):
    (quick_demo / ".steps" / "explain.json").unlink()
    for png in (quick_demo / "explain").glob("*.png"):
        png.unlink()
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0
    assert list((quick_demo / "explain").glob("*.png"))
    printed = capsys.readouterr().out
    assert "expert-query attention maps on test images: " in printed and "(its output: logs/explain.log)" in printed
    # what the step's commands print (a line per classified image) goes to its log, not the console
    assert ".jpg: " in (quick_demo / "logs" / "explain.log").read_text() and ".jpg: " not in printed


@pytest.mark.parametrize("step, command, moved, waiting", [
    ("feedback", "feedback", "evaluator", ()),  # the main lane has finished: the demo fails when the side lane ends
    ("evaluator", "train evaluator", "foundation/clip", ("mode-metrics",)),  # the main lane's metrics wait for it
])
def test_a_side_lane_step_that_fails_stops_the_demo_with_its_one_line_error(quick_demo, capsys, step, command, moved,
                                                                             waiting):
    from uniemo.demo.runner import STEPS

    assert {s.name for s in STEPS if s.side} >= {"generate", "baseline", "metrics", "feedback"}
    for name in (step, *waiting):
        (quick_demo / ".steps" / f"{name}.json").unlink()
    (quick_demo / moved).rename(quick_demo / f"{moved}-away")
    try:
        assert main(["demo", "--quick", "--out", str(quick_demo)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"demo step `uniemo {command}` failed" in err and f"{step}.log" in err
        assert "error: " in (quick_demo / "logs" / f"{step}.log").read_text()  # the command's own error line
        assert not any((quick_demo / ".steps" / f"{n}.json").exists() for n in (step, *waiting))
    finally:
        (quick_demo / f"{moved}-away").rename(quick_demo / moved)
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0
    printed = capsys.readouterr().out
    title = next(s.title for s in STEPS if s.name == step)
    assert re.search(rf"{re.escape(title)}: \d+ s\n", printed)  # run again, its lines on the console
    assert printed.count("reused") == len(STEPS) - 1 - len(waiting)


def test_a_main_lane_step_waits_for_the_side_lane_step_it_needs(quick_demo, capsys):
    from uniemo.demo.runner import STEPS

    evaluator, metrics = (next(s for s in STEPS if s.name == n) for n in ("evaluator", "mode-metrics"))
    assert evaluator.side and not metrics.side and "evaluator" in metrics.needs
    assert not any(s.needs for s in STEPS if s.side)  # the side lane never waits: the lanes cannot deadlock
    for step in (evaluator, metrics):
        (quick_demo / ".steps" / f"{step.name}.json").unlink()
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0
    printed = capsys.readouterr().out
    assert printed.index(f"{evaluator.title}: ") < printed.index(f"{metrics.title} ... ")  # finished, then started


def test_a_main_lane_step_that_fails_points_at_its_error_line_above(quick_demo, capsys):
    (quick_demo / ".steps" / "mode-metrics.json").unlink()
    (quick_demo / "evaluator").rename(quick_demo / "evaluator-away")
    try:
        assert main(["demo", "--quick", "--out", str(quick_demo)]) == 2
        command_error, demo_error = capsys.readouterr().err.strip().splitlines()
        assert command_error.startswith("error: ") and "evaluator" in command_error
        assert "demo step `uniemo evaluate generation` failed" in demo_error and "(above)" in demo_error
    finally:
        (quick_demo / "evaluator-away").rename(quick_demo / "evaluator")
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0


def test_ctrl_c_in_a_step_stops_the_demo_as_interrupted_not_as_a_failed_step(quick_demo, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    (quick_demo / ".steps" / "modes.json").unlink()  # a main-lane step: the patch is in this process
    monkeypatch.setattr("uniemo.commands.generate.run", interrupted)
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "error" not in err
    monkeypatch.undo()
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0


def _state_and_parent(proc: Path) -> tuple[str, int]:
    """A process's state letter and parent pid, from /proc/PID/stat (fields after the name)."""
    state, parent = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[:2]
    return state, int(parent)


def _side_lanes(pid: int) -> list[int]:
    """The processes that ``pid`` started with multiprocessing's spawn."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if b"spawn_main" in (proc / "cmdline").read_bytes() and _state_and_parent(proc)[1] == pid:
                found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    """Running, or at least not a zombie waiting for a parent to reap it."""
    try:
        return _state_and_parent(Path(f"/proc/{pid}"))[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_sigkilled_demo_takes_its_side_lane_with_it(quick_demo, tmp_path):
    for name in ("generate", "baseline", "metrics"):
        (quick_demo / ".steps" / f"{name}.json").unlink()
    started = time.time()
    demo = subprocess.Popen([sys.executable, "-m", "uniemo.cli", "demo", "--quick", "--out", str(quick_demo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    baseline_log, deadline = quick_demo / "logs" / "baseline.log", time.monotonic() + 120

    def side_lane_at_work():
        return baseline_log.exists() and baseline_log.stat().st_mtime >= started and _side_lanes(demo.pid)

    while not (side := side_lane_at_work()) and demo.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert side, "the demo ended before its side lane started"
    demo.send_signal(signal.SIGKILL)
    demo.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, side)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, side)), "the side lane outlived the demo"
    assert not (quick_demo / ".steps" / "baseline.json").exists(), "the side lane finished its step as an orphan"
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0  # and a re-run finishes what was cut off
    assert all((quick_demo / ".steps" / f"{n}.json").is_file() for n in ("generate", "baseline", "metrics"))


def test_the_console_shows_steps_and_a_summary_and_the_logs_hold_the_rest(quick_demo):
    logs = {p.stem for p in (quick_demo / "logs").glob("*.log")}
    assert {"stage1", "stage2", "metrics", "feedback"} <= logs
    assert "wrote stage-1 run" in (quick_demo / "logs" / "stage1.log").read_text()


def test_the_demo_copies_the_shipped_foundation_or_trains_its_own(quick_demo, monkeypatch, tmp_path):
    import dataclasses

    from uniemo.demo.runner import PLANS, SHIPPED_FOUNDATION, STEPS, Layout
    from uniemo.errors import UniEmoError

    shipped = json.loads((SHIPPED_FOUNDATION / "pretrain_report.json").read_text())
    assert shipped["world"]["version"] == WORLD_VERSION, "the world changed: rebuild the foundation with `make foundation`"
    unet = Path("sd", "unet", "diffusion_pytorch_model.safetensors")
    assert (quick_demo / "foundation" / unet).read_bytes() == (SHIPPED_FOUNDATION / unet).read_bytes()
    step = next(s for s in STEPS if s.name == "pretrain")
    calls = []
    monkeypatch.setattr("uniemo.cli.main", lambda argv: calls.append(argv) or 0)
    step.run(Layout(tmp_path, dataclasses.replace(PLANS["quick"], train_foundation=True), seed=3))
    assert calls == [["pretrain-base", str(tmp_path / "foundation"), "--data", str(tmp_path / "data"), "--seed", "3",
                      *PLANS["quick"].pretrain_args]]
    monkeypatch.setattr("uniemo.demo.synth.WORLD_VERSION", "0.1")
    with pytest.raises(UniEmoError, match="make foundation"):
        step.run(Layout(tmp_path / "other", PLANS["quick"], seed=0))
    assert not (tmp_path / "other" / "foundation").exists()


def test_data_scarce_plan_trains_stages_on_the_scarce_split(tmp_path):
    import dataclasses

    from uniemo.demo.runner import PLANS, STEPS, Layout

    plan = dataclasses.replace(PLANS["quick"], train_per_emotion=3)
    layout = Layout(tmp_path, plan, seed=0)
    next(s for s in STEPS if s.name == "synth").run(layout)
    full, scarce = (json.loads((tmp_path / d / "train.json").read_text()) for d in ("data", "data-scarce"))
    assert len(scarce) == 8 * 3 < len(full)
    assert (tmp_path / "data-scarce" / "test.json").read_bytes() == (tmp_path / "data" / "test.json").read_bytes()
    assert layout.train_data == str(tmp_path / "data-scarce")
    assert main(["demo", "--train-per-emotion", "0", "--out", str(tmp_path / "x")]) == 2


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_benchmark(name, argv, monkeypatch):
    """A benchmark script's main() with ``argv``, imported as `make evidence` runs it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, argv)])
    module = importlib.import_module(name)
    module.main()
    return module


def test_evidence_queries_table_on_the_scarce_split_and_its_reuse(quick_demo, monkeypatch):
    argv = ["--demo", quick_demo, "--train-per-emotion", 2, "--epochs", 2, "--query-lens", 4, "--seeds", 0]
    _run_benchmark("ablation_understanding", argv, monkeypatch)
    scarce = quick_demo / "data-scarce-2"
    assert Counter(e for e, *_ in json.loads((scarce / "train.json").read_text())) == {e: 2 for e in EMOTIONS}
    assert (scarce / "test.json").read_bytes() == (quick_demo / "data" / "test.json").read_bytes()
    result = json.loads((quick_demo / "ablations" / "understanding-scarce2.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["multi-stage", "single-step", "none", "multi-stage, 4 queries"]
    assert all(len(r["val_curve"]) == 2 and 0 <= r["test_top1"]["mean"] <= 1 for r in result["rows"])
    work = quick_demo / "ablations" / "understanding-scarce2" / "e2"
    assert load_config(work / "multi-stage-4-queries" / "seed0" / "config.yaml").understanding.query_len == 4
    assert load_config(work / "none" / "seed0" / "config.yaml").understanding.queries == "none"
    assert (quick_demo / "ablations" / "understanding-scarce2_curves.png").stat().st_size > 1000
    evals = sorted(work.glob("*/seed0/eval.json"))
    stamps = [p.stat().st_mtime_ns for p in evals]
    _run_benchmark("ablation_understanding", argv, monkeypatch)  # finished runs are reused
    assert len(evals) == 4 and [p.stat().st_mtime_ns for p in evals] == stamps


def test_evidence_feedback_tables_share_images_and_give_verdicts(quick_demo, monkeypatch, tmp_path):
    argv = ["--demo", quick_demo, "--seeds", 0, "--train-per-emotion", 2, "--stage1-epochs", 1, "--stage2-epochs", 1,
            "--epochs", 1, "--per-emotion", 2, "--steps", 2]
    _run_benchmark("ablation_feedback", argv, monkeypatch)
    result = json.loads((quick_demo / "ablations" / "feedback-scarce2.json").read_text())
    assert {k: [r["condition"] for r in v] for k, v in result["tables"].items()} == {
        "criteria": ["Emo-A only", "Sem-C only", "Emo-A + Sem-C"],
        "window": ["[0%, 100%)", "[10%, 90%)", "[20%, 80%)", "[50%, 100%)"],
        "proportion": ["5%", "10%", "20%", "30%"]}
    proportions = {r["condition"]: r["proportion"][0] for r in result["tables"]["proportion"]}
    assert proportions["5%"] <= proportions["10%"] <= proportions["20%"] <= proportions["30%"] < 0.31
    runs = sorted((quick_demo / "ablations" / "feedback-scarce2" / "e1+1+1-n2-t2" / "seed0").glob("*_p*"))
    assert len(runs) == 9  # the paper's setting appears in all three tables and runs once
    first = [next(r.glob("generated/image/amusement/*")) for r in runs]
    assert len({p.stat().st_ino for p in first}) == 1  # every setting filters the very same images

    evidence = importlib.import_module("evidence")
    verdicts = {c["claim"]: c for c in evidence.claims({"feedback": result})}
    assert len(verdicts) == 6 and all(c["rows"][0][0] == c["rows"][1][0] == "feedback" for c in verdicts.values())
    both = verdicts["explicit feedback improves understanding"]
    rows = evidence.rows(result)
    assert both["effect"] == pytest.approx(rows["Emo-A + Sem-C"]["mean"] - rows["no feedback (real images only)"]["mean"])
    assert result["world"] == both["world"] == WORLD_VERSION  # the table and its verdicts name the demo's world


def test_evidence_cond_tables_share_the_joint_runs_images_and_train_each_schedule(quick_demo, monkeypatch):
    argv = ["--demo", quick_demo, "--seeds", 0, "--train-per-emotion", 2, "--stage1-epochs", 1, "--epochs", 1,
            "-n", 1, "--steps", 2]
    module = _run_benchmark("ablation_generation", [*argv, "--table", "cond-schedule"], monkeypatch)
    schedule = json.loads((quick_demo / "ablations" / "generation-cond-schedule-scarce2.json").read_text())
    assert [r["variant"] for r in schedule["rows"]] == list(module.COND_SCHEDULE)
    runs = quick_demo / "ablations" / "generation-cond-schedule-scarce2" / "e1+1-n1-t2"
    both = load_config(runs / "L_cond_at_0.05-both" / "seed0" / "run2" / "config.yaml")
    assert (both.fusion.cond_warmup_steps, both.stage2.optim.mapper_lr) == (100, 1e-3)
    assert both.fusion.joint_weights == [0.3, 0.05, 0.65] and both.fusion.cond_loss == "cond"
    slow = load_config(runs / "L_cond_at_0.05-mappers_at_lr_1e-3" / "seed0" / "run2" / "config.yaml")
    assert (slow.fusion.cond_warmup_steps, slow.stage2.optim.mapper_lr) == (0, 1e-3)
    shared = quick_demo / "ablations" / "joint-scarce2" / "e1+1" / "seed0" / "generation-n1-t2" / "metrics.json"
    stamp = shared.stat().st_mtime_ns  # the shared joint run's own row lives beside that run

    _run_benchmark("ablation_generation", [*argv, "--table", "cond"], monkeypatch)
    cond = json.loads((quick_demo / "ablations" / "generation-cond-scarce2.json").read_text())
    assert shared.stat().st_mtime_ns == stamp  # generated and evaluated once for both tables
    assert cond["rows"][0]["emo_a"] == schedule["rows"][0]["emo_a"]
    assert not (quick_demo / "ablations" / "generation-cond-scarce2" / "e1+1-n1-t2" / "neither").exists()


def test_verdicts_need_twice_the_larger_std_in_the_papers_direction(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    verdict = importlib.import_module("evidence").verdict

    def row(mean, std):
        return {"mean": mean, "std": std}

    assert verdict(row(0.80, 0.01), row(0.75, 0.02))["verdict"] == "confirmed"  # 0.05 > 0.04
    assert verdict(row(0.80, 0.01), row(0.77, 0.02))["verdict"] == "inconclusive"  # 0.03 < 0.04
    assert verdict(row(0.70, 0.03), row(0.77, 0.01))["verdict"] == "not confirmed"  # -0.07 beyond 0.06
    assert verdict(row(0.70, 0.03), row(0.75, 0.01))["bar"] == pytest.approx(0.06)


def test_evidence_records_where_the_demos_foundation_models_came_from(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    foundation = importlib.import_module("evidence").foundation
    assert foundation(tmp_path) == "unrecorded"  # no report.json: the demo did not finish
    for trained, origin in ((False, "shipped with uniemo"), (True, "trained by that demo")):
        (tmp_path / "report.json").write_text(json.dumps({"foundation": {"trained_here": trained}}))
        assert foundation(tmp_path) == origin


def test_the_report_shows_the_latest_evidence_run_as_such(tmp_path):
    from uniemo.demo.html import Table
    from uniemo.demo.report import _claims

    assert "No evidence run" in _claims(tmp_path / "missing.json").blocks[0]
    claim = {"claim": "α helps", "paper": "Table V", "better": 0.7, "worse": 0.75, "effect": -0.05, "bar": 0.02,
             "verdict": "not confirmed", "world": WORLD_VERSION}
    record = {"date": "2026-12-03", "commit": "abc1234", "foundation": "shipped with uniemo", "claims": [claim]}
    (tmp_path / "claims.json").write_text(json.dumps(record))
    text, table = _claims(tmp_path / "claims.json").blocks
    assert "2026-12-03" in text and "abc1234" in text and "not from this demo" in text
    assert "foundation models shipped with uniemo" in text
    assert isinstance(table, Table) and table.rows == [["α helps", "Table V", "70.00% vs 75.00%", "-5.00 (bar 2.00)",
                                                        "not confirmed", WORLD_VERSION]]
    (tmp_path / "claims.json").write_text(json.dumps({"date": "2026-12-03", "commit": "abc1234",
                                                      "claims": [claim, {**claim, "world": "3.1 / 3.3"}]}))
    text, stale, table = _claims(tmp_path / "claims.json").blocks  # an earlier world's claims say so
    assert "foundation models unrecorded" in text  # a record written before it said
    assert f"1 of the 2 claims were measured on an earlier world than this demo's {WORLD_VERSION}" in stale
    assert [row[-1] for row in table.rows] == [WORLD_VERSION, "3.1 / 3.3"]
