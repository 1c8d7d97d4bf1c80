"""Issue 18: the GPU check runs end to end at the tiny size, so it cannot rot before a GPU runs it."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("xl", [False, True])
def test_bench_gpu_tiny_prints_every_part_and_writes_json(tmp_path, capsys, monkeypatch, xl):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_gpu")
    rows = bench.main(["--tiny", "--json", str(tmp_path / "bench.json"), *(["--xl"] if xl else [])])
    parts = [r["part"] for r in rows]
    assert parts == ["stage 1"] * 2 + ["stage 2"] * 3 + ["generation"] * 2 + ["edit"] * (0 if xl else 2) + ["data"] * 2
    assert all(r["value"] > 0 for r in rows)
    plain = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
    assert {r["what"].split(",")[0] for r in rows if r["part"] == "generation"} == {"UniEmoPipeline", plain}
    assert any("checkpointing on" in r["what"] for r in rows) and any("checkpointing off" in r["what"] for r in rows)
    assert any(r["what"].endswith("VAE latents cached") for r in rows if r["part"] == "stage 2")
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["tiny"] is True and written["xl"] is xl and written["rows"] == json.loads(json.dumps(rows))
    assert "| stage 2 |" in capsys.readouterr().out
    if not xl:
        edits = bench.main(["--tiny", "--parts", "edit"])
        assert [r["what"].split(",")[0] for r in edits] == ["SDEdit", "from the DDIM inversion"]
    sys.modules.pop("bench_gpu", None)


def test_bench_gpu_times_loading_on_a_given_folder_at_its_own_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_gpu")
    from uniemo.demo.synth import write_synthetic

    root = write_synthetic(tmp_path / "world", num_images=40, size=48)
    rows = bench.bench_loading(bench.TINY, root)
    assert [r["what"] for r in rows] == ["48-px JPEGs, num_workers 0", "48-px JPEGs, num_workers 2"]
    assert all(r["value"] > 0 for r in rows)
    sys.modules.pop("bench_gpu", None)
