"""Installs that stay working (issue 18): uniemo's own calls into its libraries raise no
deprecation warning, so the next release of transformers / diffusers / accelerate does not
break them silently. (pytest ignores these warnings elsewhere: they come from the libraries'
own internals too.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import uniemo

PACKAGE = Path(uniemo.__file__).parent


def _ours(caught) -> list[str]:
    """The deprecation warnings whose reported caller is a file of the uniemo package, or
    diffusers' ``deprecate`` helper itself: it reports its own line (``torch_dtype`` passed to
    ``from_pretrained`` was caught only by reading the demo's console)."""
    return [f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning))
            and (Path(w.filename).resolve().is_relative_to(PACKAGE) or Path(w.filename).name == "deprecation_utils.py")]


def test_generation_editing_and_stage1_raise_no_deprecation_from_our_calls(tiny_models, tiny_emoset, tmp_path):
    import torch
    from PIL import Image
    from test_pipeline import write_run2

    from uniemo.cli import main
    from uniemo.pipeline import UniEmoPipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = UniEmoPipeline.from_pretrained(write_run2(tiny_models, tmp_path / "run2"), dtype=torch.float32,
                                              scheduler="UniPCMultistepScheduler")
        pipe(emotion="awe", object="bench", num_images=1, num_inference_steps=2, generator=0)
        pipe.edit(Image.new("RGB", (40, 32), "gray"), mix={"awe": 1, "fear": 1}, strength=0.5, num_inference_steps=2)
        pipe.read([Image.new("RGB", (8, 8))])
        assert main(["train", "understand", "--data", str(tiny_emoset), "--clip", str(tiny_models[0]), "--preset",
                     "tiny", "--max-steps", "2", "--out", str(tmp_path / "run1")]) == 0
    assert caught, "the check saw no warning at all: is warnings capture working?"
    assert _ours(caught) == []
