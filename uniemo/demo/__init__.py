"""The embedded default: everything ``uniemo demo`` needs besides the method itself.

- ``synth``: the synthetic emotional world, written in EmoSet's on-disk format;
- ``foundation``: CLIP / Stable-Diffusion-layout directories of any size (random weights),
  and the CLIP-format BPE tokenizer;
- ``pretrain_base``: trains the tiny CLIP and tiny Stable Diffusion that stand in for the
  weights a real user downloads;
- ``runner``: the demo's steps (each a ``uniemo`` command run in-process);
- ``report`` and ``html``: the demo's report.

The method's modules (understanding, fusion, joint, feedback, pipeline, metrics, data) never
import from here."""
