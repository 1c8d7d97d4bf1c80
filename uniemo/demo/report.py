"""The demo's report: ``OUT/report.html`` (self-contained) and ``OUT/report.json`` (every
figure in it, machine-readable). Each table keeps this run's figures (a synthetic world,
tiny models trained here) apart from the paper's (EmoSet, CLIP ViT, SD 1.5), labelled as such."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageOps

from uniemo.config import load_config
from uniemo.fusion import transfer_prompt
from uniemo.io import read_json, write_json
from uniemo.demo.html import Figure, Section, Table, write_report
from uniemo.demo.pretrain_base import STEP_COUNTS
from uniemo.demo.synth import WORLD_VERSION
from uniemo.rundir import RunDir
from uniemo.vocab import EMOTIONS, normalise_attribute

THIS_RUN = "this run (synthetic world, tiny models)"
PAPER = "paper (EmoSet, ViT-B/32, SD 1.5)"
PAPER_UNDERSTANDING = {"stage1": None, "stage2": 84.96, "stage3": 85.30}  # Tables VI/VII (ViT-L/14 setting)
PAPER_GENERATION = {  # Table IV
    "baseline": {"fid": 44.05, "lpips": 0.687, "emo_a": 70.77, "sem_c": 0.608, "sem_d": 0.0199},
    "uniemo": {"fid": 27.73, "lpips": 0.793, "emo_a": 79.66, "sem_c": 0.640, "sem_d": 0.0383},
}
CLAIMS = Path(__file__).with_name("claims.json")  # written by benchmarks/evidence.py (`make evidence`)
METRICS = (("fid", "FID ↓"), ("lpips", "LPIPS ↑"), ("emo_a", "Emo-A ↑"), ("sem_c", "Sem-C ↑"), ("sem_d", "Sem-D ↑"))


def write_demo_report(layout, seconds: dict[str, float], wall: float, peak_memory_gib: float) -> Path:
    """``seconds``: each step's (reused steps: their first run's); ``wall``: this invocation's."""
    out = layout.out
    figures = out / "figures"
    summary = collect(layout, seconds, wall, peak_memory_gib)
    sections = [
        _overview(summary),
        _world(layout, summary, figures),
        _understanding(layout, summary, figures),
        _generation(layout, summary, figures),
        _feedback(summary),
        _claims(CLAIMS),
    ]
    write_json(out / "report.json", summary)
    write_report(out / "report.html", "UniEmo demo report", sections)
    print(headline(summary))
    return out / "report.html"


def headline(summary: dict) -> str:
    """The demo's figures in one line."""
    u, g = summary["understanding"], summary["generation"]
    transfer = g["transfer"].values()
    return (f"understanding {_pct(u['test_accuracy'])} (ceiling {_pct(summary['world']['ceiling'])}); "
            f"Emo-A {_pct(g['emo_a'])} (emotion-word baseline {_pct(g['emo_a_baseline'])}); "
            f"transfer Emo-A {_pct(min(t['emo_a'] for t in transfer))}+, object kept "
            f"{_pct(min(t['object_kept'] for t in transfer))}+; fusion mass {_pct(g['fusion']['mean_mass'])}; "
            f"edit Emo-A {_pct(g['edit']['emo_a'])}, object kept {_pct(g['edit']['object_kept'])}")


def collect(layout, seconds: dict[str, float], wall: float, peak_memory_gib: float) -> dict:
    """Every figure of the report, read from what the steps wrote."""
    out = layout.out
    pretrain = read_json(out / "foundation" / "pretrain_report.json")
    stages = {n: read_json(out / "metrics" / f"understanding-{n}.json") for n in ("stage1", "stage2", "stage3")}
    generation = {n: _generation_figures(read_json(out / "metrics" / f"generation-{n}.json"))
                  for n in ("uniemo", "baseline")}
    feedback = read_json(RunDir(layout.run3).feedback)
    return {
        "plan": {"seed": layout.seed, **layout.plan.__dict__},
        "world": world_figures(layout),
        "timings": {"steps": seconds, "total": sum(seconds.values()), "wall": wall, "peak_memory_gib": peak_memory_gib},
        "foundation": {"trained_here": layout.plan.train_foundation, "world": pretrain.get("world"),
                       "steps": {k.removesuffix("_steps"): pretrain["config"][k] for k in STEP_COUNTS},
                       "zero_shot": pretrain.get("zero_shot"), "times_s": pretrain.get("times_s")},
        "understanding": {
            "test_accuracy": stages["stage1"]["top1"],
            "test_accuracy_binary": stages["stage1"].get("binary"),
            "by_stage": {n: r["top1"] for n, r in stages.items()},
            "per_class_stage1": stages["stage1"]["per_class"],
        },
        "generation": {
            "emo_a": generation["uniemo"]["emo_a"],
            "emo_a_baseline": generation["baseline"]["emo_a"],
            "uniemo": generation["uniemo"],
            "baseline": generation["baseline"],
            "transfer": transfer_figures(layout),
            "fusion": fusion_figures(layout),
            "edit": edit_figures(layout),
        },
        "feedback": feedback,
    }


def world_figures(layout) -> dict:
    """The world as the demo built it: its rule, its ceilings, and the α stage 2 gave each
    scene and object (the largest entry of its row of P, and for which emotion)."""
    from uniemo.demo import synth

    table = read_json(RunDir(layout.run2).alpha_table)
    noise = layout.plan.label_noise
    return {"version": WORLD_VERSION, **synth.emotional_attributes(), "label_noise": noise,
            "ceiling": synth.ceiling(noise),
            "ceiling_by_channels": {"+".join(c): synth.ceiling(noise, c) for c in CHANNEL_SETS},
            "transfer_objects": list(layout.plan.transfer_objects), "alpha_method": table["method"],
            "alpha": attribute_alpha(table)}


def attribute_alpha(table: dict) -> dict:
    """α of every scene and object of a stage-2 run's table P (its row's largest entry, and for
    which emotion), and whether the world made it neutral."""
    from uniemo.demo import synth

    neutral = {"scene": set(synth.NEUTRAL_SCENES), "object": set(synth.NEUTRAL_OBJECTS)}
    return {kind: {name: {"alpha": max(row), "emotion": table["emotions"][row.index(max(row))],
                          "neutral": any(name == normalise_attribute(n) for n in neutral[kind])}
                   for name, row in table[kind].items()} for kind in ("scene", "object")}


CHANNEL_SETS = (("style",), ("scene",), ("object",), ("scene", "object"))


def transfer_figures(layout) -> dict:
    """Per transfer object: Emo-A and the share of images where the object was kept."""
    figures = {}
    for o in layout.plan.transfer_objects:
        metrics = read_json(Path(layout.metrics) / "transfer" / f"{o}.json")["metrics"]
        figures[o] = {"emo_a": metrics["emo_a"]["all"], "object_kept": metrics["object_kept"]["all"]}
    return figures


def mix_folder(weights: dict[str, float]) -> str:
    """The folder `uniemo generate --mix` writes these weights to (zero weights dropped)."""
    from uniemo import metrics
    from uniemo.pipeline import normalise_weights

    return metrics.mix_folder(normalise_weights(weights, tuple(EMOTIONS)))


def fusion_figures(layout) -> dict:
    """Mix mass per 0.5/0.5 pair, and the sweep: the first emotion's mean probability per weight."""
    per_mix = read_json(Path(layout.metrics) / "generation-fusion.json")["metrics"]["mix_mass"]["per_mix"]
    (a, b), *_ = layout.plan.fusion_pairs
    pairs = {"+".join(m): per_mix[mix_folder(m)]["mass"] for m in layout.plan.pair_mixes()}
    sweep = [per_mix[mix_folder(m)] for m in layout.plan.sweep_mixes()]
    drawn = world_drawn_mass(layout)
    return {"pairs": pairs, "mean_mass": sum(pairs.values()) / len(pairs),
            "world_drawn": {"pairs": drawn, "mean_mass": sum(drawn.values()) / len(drawn), "images": WORLD_DRAWN_IMAGES},
            "sweep": {"pair": [a, b], "weights": list(layout.plan.sweep),
                      "p_first": [m["mean_probability"][a] for m in sweep],
                      "p_second": [m["mean_probability"][b] for m in sweep]}}


WORLD_DRAWN_IMAGES = 32  # per pair: the renders cost milliseconds, and 8 would leave the figure noisy


def world_drawn_mass(layout) -> dict[str, float]:
    """Per fusion pair, the mix mass the run's evaluator gives the world's own images of the two
    emotions (``synth.crossed_images``): what an image that shows both scores with this
    evaluator, beside what UniEmo's mix scores (docs/BENCHMARKS.md, session 28)."""
    from uniemo.demo.synth import crossed_images, world_of
    from uniemo.evaluator import Evaluator
    from uniemo.metrics import class_indices

    evaluator = Evaluator.from_pretrained(layout.evaluator)
    size = world_of(layout.data)["size"]
    masses = {}
    for a, b in layout.plan.fusion_pairs:
        proba = evaluator.predict_proba(crossed_images(a, b, WORLD_DRAWN_IMAGES, size, layout.seed))
        masses[f"{a}+{b}"] = float(proba[:, class_indices(evaluator, [a, b])].sum(-1).mean())
    return masses


def edit_figures(layout) -> dict:
    """Edits toward each emotion: the evaluator's Emo-A, the object kept and the CLIP distance to
    the source (from `evaluate generation`), and how often the understanding branch read the target."""
    from uniemo.metrics import METADATA_FILE, read_metadata

    metrics = read_json(Path(layout.metrics) / "generation-edit.json")["metrics"]
    records = read_metadata(Path(layout.edits) / METADATA_FILE).values()
    return {"emo_a": metrics["emo_a"]["all"], "per_emotion_emo_a": metrics["emo_a"]["per_emotion"],
            "object_kept": metrics["edit_kept"]["all"], "clip_distance": metrics["edit_distance"]["all"],
            "understanding_reads_target": sum(r["reached"] for r in records) / max(1, len(records)),
            "strength": layout.plan.edit_strength, "invert": layout.plan.edit_invert,
            "keep_region": layout.plan.edit_keep_region, "object_named": layout.plan.edit_name_object,
            "edits": len(records), "sources": len({r["source"] for r in records})}


def _generation_figures(report: dict) -> dict:
    metrics = report["metrics"]
    figures = {key: metrics[key].get("all") if key in metrics else None for key, _ in METRICS}
    figures["networks"] = {key: metrics[key].get("network") for key, _ in METRICS if key in metrics}
    figures["per_emotion"] = {key: metrics[key].get("per_emotion") for key in ("fid", "lpips") if key in metrics}
    figures["per_emotion_emo_a"] = metrics.get("emo_a", {}).get("per_emotion")
    return figures


def _overview(summary: dict) -> Section:
    steps = summary["timings"]["steps"]
    return Section("What ran", [
        "Every figure labelled 'this run' was measured by this demo, on this machine's CPU: a synthetic "
        "emotional world (in EmoSet's format) and tiny foundation models trained from scratch on that world "
        f"({_foundation_origin(summary['foundation'])}). "
        "Columns labelled 'paper' are the paper's full-scale results (EmoSet, CLIP ViT, Stable Diffusion 1.5); "
        "they are there for the shape of the comparison, not as the same quantity.",
        Table(["step", "seconds"], [[name, round(s, 1)] for name, s in steps.items()] +
              [["sum of the steps", round(summary["timings"]["total"], 1)]],
              "Wall-clock time per step (reused steps: their first run)"),
        f"After stage 2, two steps run side by side (two processes), so this invocation took "
        f"{summary['timings']['wall']:.0f} s of wall-clock time. Peak memory of this invocation: "
        f"{summary['timings']['peak_memory_gib']:.2f} GiB (both processes' peaks added up).",
    ])


def _foundation_origin(foundation: dict) -> str:
    if foundation["trained_here"]:
        return "trained by this run on its own world"
    world, steps = foundation["world"], foundation["steps"]
    return (f"shipped with uniemo: trained once by `make foundation` on another draw of the same world, "
            f"{world['num_images']:,} images of seed {world['seed']}, CLIP / VAE / UNet "
            f"{steps['clip']:,} / {steps['vae']:,} / {steps['unet']:,} steps")


def _world(layout, summary: dict, figures: Path) -> Section:
    items = json.loads((Path(layout.data) / "test.json").read_text())[:16]
    cells, captions = [], []
    for k in range(0, len(items), 8):
        row = items[k:k + 8]
        cells.append([Image.open(Path(layout.data) / path).convert("RGB") for _, path, _ in row])
        captions.append([_caption(Path(layout.data) / ann, emotion) for emotion, _, ann in row])
    from uniemo.plots import image_table_png

    image_table_png(cells, ["test"] * len(cells), figures / "world.png", captions=captions,
                    title="Synthetic world: style + scene + object -> emotion")
    w = summary["world"]
    zero_shot = summary["foundation"]["zero_shot"]
    rows = [[f"{source} images", kind, value, zero_shot["judge"][source][kind]] for source in ("real", "generated")
            for kind, value in zero_shot[source].items() if kind != "images"]
    alpha_rows = [[kind, name, "neutral" if a["neutral"] else "emotional", a["emotion"], round(a["alpha"], 3)]
                  for kind in ("scene", "object")
                  for name, a in sorted(w["alpha"][kind].items(), key=lambda kv: (kv[1]["neutral"], kv[0]))]
    return Section("The synthetic world and its foundation models", [
        "Emotion is carried by three channels that combine freely (rule: uniemo/demo/synth.py): a global "
        "style, one per emotion (EmoSet's brightness for valence and colorfulness for arousal, a warm or "
        "cool tone within each quadrant, and a pattern that is the emotion's own); the emotion's own scene (in "
        f"{w['emotional_scene_p']:.0%} of its images) "
        f"and its own object (in {w['emotional_object_p']:.0%}). The other images show neutral scenes and "
        "objects, drawn uniformly whatever the emotion. The tiny CLIP and tiny Stable Diffusion were trained "
        f"on captions naming only style, scene and object — never an emotion word ("
        f"{_foundation_origin(summary['foundation'])}). The judge, a second tiny CLIP trained three times as long "
        "that no model of UniEmo uses, names the objects and scenes of generated images in the metrics below.",
        Table(["emotion", "style", "emotional scene", "emotional object"],
              [[e, *w["emotional"][e].values()] for e in EMOTIONS], "Each emotion's channels"),
        f"Neutral scenes: {', '.join(w['neutral']['scene'])}. Neutral objects: {', '.join(w['neutral']['object'])}. "
        f"Transfer objects of this plan: {', '.join(w['transfer_objects'])}.",
        Table(["what a classifier sees", "best achievable test top-1"],
              [["style + scene + object (the world's ceiling)", _pct(w["ceiling"])]] +
              [[k.replace("+", " + "), _pct(v)] for k, v in w["ceiling_by_channels"].items()],
              f"Ceilings, computed exactly from the rule with {w['label_noise']:.0%} label noise"),
        Table(["kind", "attribute", "in the world", "its emotion in P", "α (largest entry of its row of P)"],
              alpha_rows, f"The emotional correlation coefficient α per attribute ({w['alpha_method']} table of "
              "stage 2; uniform would be 0.125)"),
        Figure(figures / "world.png", "Test images with their scene, object and emotion label"),
        Table(["images", "attribute", "tiny CLIP zero-shot accuracy", "the judge's"], rows,
              "Zero-shot accuracy of the tiny CLIP and of the judge on held-out real images and on images the tiny "
              "SD generated from captions"),
    ])


def _caption(annotation: Path, emotion: str) -> str:
    data = json.loads(annotation.read_text())
    objects = data.get("object") or ["?"]
    return f"{data.get('scene', '?')}\n{objects[-1]}\n-> {emotion}"


def _understanding(layout, summary: dict, figures: Path) -> Section:
    from uniemo.plots import curves_png

    u = summary["understanding"]
    ceiling = _pct(summary["world"]["ceiling"])
    curves = _curves(Path(layout.run1) / "metrics.jsonl", ("train_loss", "train_acc", "val_top1"))
    curves_png(curves, figures / "stage1_curves.png", "epoch", "Stage 1 training")
    joint = _curves(Path(layout.run2) / "metrics.jsonl", ("train_loss_u", "train_loss_cond", "train_loss_diff"))
    curves_png(joint, figures / "stage2_curves.png", "epoch", "Stage 2 (joint) losses")
    explain = sorted(Path(layout.explain).glob("*.png"))
    return Section("Understanding (stage 1, paper §III-A)", [
        Table(["model", THIS_RUN, PAPER], [
            ["UniEmo, test top-1 (8 emotions)", _pct(u["test_accuracy"]), "83.52% (Table I)"],
            ["UniEmo, 2-class (positive/negative)", _pct(u["test_accuracy_binary"]), "—"],
            ["the world's ceiling (Bayes accuracy)", ceiling, "—"],
            ["chance", "12.50%", "12.50%"],
        ], "Table I shape: understanding accuracy"),
        Figure(figures / "stage1_curves.png", "Stage 1: loss, training accuracy and validation accuracy per epoch"),
        Figure(Path(layout.metrics) / "understanding-stage1.png", "Stage 1 confusion matrix (test split)"),
        Figure(figures / "stage2_curves.png", "Stage 2: the three terms of L_joint (eq. 10), weighted L_U/L_cond/L_diff = "
               + "/".join(f"{w:g}" for w in load_config(RunDir(layout.run2).config).fusion.joint_weights)),
        *[Figure(p, f"Expert-query attention (paper Fig. 9): {p.stem}") for p in explain],
    ])


def _curves(path: Path, keys: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {k: ([r["epoch"] for r in lines if k in r], [r[k] for r in lines if k in r]) for k in keys}


def _generation(layout, summary: dict, figures: Path) -> Section:
    from uniemo.plots import image_table_png

    g = summary["generation"]
    n = layout.plan.images_per_emotion
    image_table_png([_images(Path(layout.generated) / e, min(n, 8)) for e in EMOTIONS], list(EMOTIONS),
                    figures / "generated.png", title="UniEmo: generated images per emotion")
    image_table_png([_images(Path(layout.baseline) / e, min(n, 8)) for e in EMOTIONS], list(EMOTIONS),
                    figures / "baseline.png", title="Baseline: base model prompted with the emotion word")
    objects = list(layout.plan.transfer_objects)
    t, fusion, drawn = g["transfer"], load_config(RunDir(layout.run2).config).fusion, g["fusion"]["world_drawn"]
    prompt = transfer_prompt(fusion.transfer_prompt, fusion.placeholder, "object")
    image_table_png([[_first(Path(layout.transfer) / o / e) for o in objects] for e in EMOTIONS], list(EMOTIONS),
                    figures / "transfer.png", title=f"Emotion transfer: '{prompt}'",
                    col_labels=[f"{o}\nEmo-A {_pct(t[o]['emo_a'])}\nkept {_pct(t[o]['object_kept'])}" for o in objects])
    _fusion_figures(layout, g["fusion"], figures)
    rows = [[f"{label}, {THIS_RUN}", *[_metric(g[name][k], k) for k, _ in METRICS]]
            for name, label in (("baseline", "base model + emotion word"), ("uniemo", "UniEmo"))]
    rows += [[f"{label}, {PAPER}", *[_metric(PAPER_GENERATION[name][k], k, paper=True) for k, _ in METRICS]]
             for name, label in (("baseline", "Stable Diffusion"), ("uniemo", "UniEmo"))]
    networks = "; ".join(f"{k}: {v}" for k, v in g["uniemo"]["networks"].items())
    per = {name: g[name].get("per_emotion", {}) for name in ("uniemo", "baseline")}
    per_rows = [[e, *[_metric((per[name].get(k) or {}).get(e), k) for k in ("fid", "lpips")
                      for name in ("uniemo", "baseline")]] for e in EMOTIONS]
    return Section("Generation (stage 2, paper §III-B)", [
        Table(["method", *[label for _, label in METRICS]], rows, "Table IV shape: generation metrics"),
        f"Networks behind this run's numbers — {networks}. FID compares {n} generated images per emotion "
        f"with {layout.plan.fid_real_per_emotion} real ones: at so few samples FID is biased upward and not comparable with the paper's in "
        "absolute terms (the paper uses thousands); the comparison that holds is UniEmo against the baseline.",
        Table(["emotion", "FID UniEmo", "FID baseline", "LPIPS UniEmo", "LPIPS baseline"], per_rows,
              "FID and LPIPS per emotion"),
        Figure(figures / "generated.png", "Generated images, one row per emotion"),
        Figure(figures / "baseline.png", "The base model prompted with the plain emotion word"),
        Table(["object", "Emo-A", "object kept (the judge's zero-shot)"],
              [[o, _pct(t[o]["emo_a"]), _pct(t[o]["object_kept"])] for o in objects],
              f"Emotion transfer onto neutral objects, {layout.plan.transfer_images} images per object and emotion, "
              f"each {_ranked(layout.plan)}"),
        Figure(figures / "transfer.png", "Emotion transfer (paper Fig. 10a): the first image per object and emotion"),
        Table(["pair at 0.5 / 0.5", "UniEmo's mix: evaluator probability of the two emotions together",
               "the world's own images of both: the same probability"],
              [[k, _pct(v), _pct(drawn["pairs"][k])] for k, v in g["fusion"]["pairs"].items()]
              + [["mean", _pct(g["fusion"]["mean_mass"]), _pct(drawn["mean_mass"])]],
              f"Emotion fusion, {layout.plan.fusion_images} images per pair, each {_ranked(layout.plan)}"),
        f"The last column is what an image that shows both emotions scores here: the world's own renderer draws "
        f"{drawn['images']} per pair, half in one emotion's style with the other's scene and object, half the other "
        "way round, and the same evaluator reads them. It never saw two emotions' cues in one image, and often "
        "reads such an image as a third emotion. One draw of UniEmo's mix scores about as low (the tiny Stable "
        "Diffusion draws the midpoint of two looks); of several draws, the understanding branch keeps the one it "
        "reads nearest to the two emotions (docs/BENCHMARKS.md).",
        Figure(figures / "fusion.png", "Emotion fusion of two emotions at equal weight (paper Fig. 10b)"),
        Figure(figures / "fusion_sweep.png", "Fusion sweep: the same seeds at each weight of the first emotion"),
        Figure(figures / "fusion_sweep_plot.png", "Fusion sweep: the evaluator's mean probability of each emotion"),
        *_edit_section(layout, g["edit"], figures),
    ])


EDIT_METHODS = {True: "from the source's DDIM inversion", False: "SDEdit"}


def _pair(source: str, edit: Path):
    """A source image and its edit side by side (the source fitted to the edit's size)."""
    after = Image.open(edit).convert("RGB")
    before = ImageOps.fit(Image.open(source).convert("RGB"), after.size)
    pair = Image.new("RGB", (2 * after.width + 4, after.height), "white")
    pair.paste(before, (0, 0))
    pair.paste(after, (after.width + 4, 0))
    return pair


def _edit_section(layout, edit: dict, figures: Path) -> list:
    """The edit matrix: a row per source emotion, a column per target, each cell a before / after
    pair with the understanding branch's reading of each side."""
    from uniemo.metrics import METADATA_FILE, read_metadata
    from uniemo.plots import image_table_png

    records = read_metadata(Path(layout.edits) / METADATA_FILE).values()
    edited = {(Path(r["source"]).parent.name, r["emotion"]): r for r in records}  # EmoSet: image/<emotion>/...
    cells, captions = [], []
    for source in EMOTIONS:
        row = [edited.get((source, target)) for target in EMOTIONS]
        cells.append([None if r is None else _pair(r["source"], Path(layout.edits) / r["file"]) for r in row])
        captions.append(["" if r is None else f"{r['source_emotion']} -> {r['result_emotion']} "
                         f"{r['target_probability']:.2f} @{r['strength']:g}" for r in row])
    image_table_png(cells, [f"{e} image" for e in EMOTIONS], figures / "edits.png",
                    col_labels=[f"-> {e}" for e in EMOTIONS], captions=captions, cell=(2.4, 1.5),
                    title="Emotion editing: a test image of a neutral object of each emotion (left) toward each "
                    "other emotion (right)")
    region = edit.get("keep_region")
    flags = (" --invert" if edit["invert"] else "") + (" --object-from DATA" if edit["object_named"] else "") + \
        (f" --keep-region {region:g}" if region else "")
    kept_region = f", keeping where the object queries look ({region:g} of their maximum or more)" if region else ""
    named = ", the prompt naming the source's annotated object" if edit["object_named"] else ""
    return [
        Table(["Emo-A of the edits (evaluator)", "object kept (the judge's zero-shot)", "CLIP distance to the source",
               "understanding branch reads the target"],
              [[_pct(edit["emo_a"]), _pct(edit["object_kept"]), f"{edit['clip_distance']:.3f}",
                _pct(edit["understanding_reads_target"])]],
              f"Emotion editing (`uniemo edit --until-target{flags}`, {EDIT_METHODS[edit['invert']]} from "
              f"strength {edit['strength']:g}{kept_region}{named}): {edit['edits']} edits of {edit['sources']} test "
              "images of neutral objects, each turned toward another emotion, every ordered pair of emotions once "
              "(an emotional object, kept, keeps its emotion: docs/BENCHMARKS.md)"),
        Figure(figures / "edits.png", "The edit matrix: each cell a test image and its edit; under it, the "
               "understanding branch's reading of the source -> of the edit, its probability of the target and @ "
               "the strength that made it"),
    ]


def _ranked(plan) -> str:
    """How the plan's transfer and fusion images were chosen, for a caption."""
    if plan.candidates == 1:
        return "one draw"
    return f"the best of {plan.candidates} draws as UniEmo's understanding branch reads them"


def _fusion_figures(layout, fusion: dict, figures: Path) -> None:
    from uniemo.plots import curves_png, image_table_png

    pairs = [Path(layout.fusion) / mix_folder(m) for m in layout.plan.pair_mixes()]
    image_table_png([_images(m, 4) for m in pairs], [m.name.removeprefix("mix_") for m in pairs],
                    figures / "fusion.png", title="Emotion fusion: e = sum of w_k e_k, at the token norm")
    sweep = fusion["sweep"]
    a, b = sweep["pair"]
    strips = [_images(Path(layout.fusion) / mix_folder(m), 4) for m in layout.plan.sweep_mixes()]
    image_table_png([[s[k] if k < len(s) else None for s in strips] for k in range(4)],
                    [f"seed +{k}" for k in range(4)], figures / "fusion_sweep.png",
                    col_labels=[f"{a} {w:g}" for w in sweep["weights"]], title=f"Sweep {a} -> {b}")
    curves_png({f"P({a})": (sweep["weights"], sweep["p_first"]), f"P({b})": (sweep["weights"], sweep["p_second"])},
               figures / "fusion_sweep_plot.png", f"weight of {a}", "Fusion sweep (evaluator's mean probability)")


def _images(folder: Path, count: int) -> list:
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("[0-9]*.png"))[:count]]


def _first(folder: Path):
    images = _images(folder, 1)
    return images[0] if images else None


def _feedback(summary: dict) -> Section:
    by_stage = summary["understanding"]["by_stage"]
    fb = summary["feedback"]
    return Section("Feedback (stage 3, paper §III-C)", [
        Table(["understanding model", f"test top-1, {THIS_RUN}", f"test top-1, {PAPER}"], [
            ["stage 1 (understanding only)", _pct(by_stage["stage1"]), "—"],
            ["stage 2 (+ implicit feedback: joint training)", _pct(by_stage["stage2"]), "84.96% (Table VI, w/o explicit)"],
            ["stage 3 (+ explicit feedback: Algorithm 1)", _pct(by_stage["stage3"]), "85.30% (Table VI, Emo-A & Sem-C)"],
        ], "Fig. 8 / Table VI shape: what feedback does to understanding"),
        f"Explicit feedback kept {fb['kept']} of {fb['generated']} generated images "
        f"({', '.join(fb['criteria'])} ranks within [{fb['eta']:g}%, {fb['delta']:g}%)) and mixed in "
        f"{fb['mixed_in']} with {fb['real']} real training images ({fb['proportion']:.1%} of the set).",
    ])


def _claims(path: Path) -> Section:
    """The verdicts of the latest evidence run on the paper's claims: not measured by this demo."""
    title = "The paper's claims, measured by the evidence run"
    if not path.is_file():
        return Section(title, ["No evidence run is recorded with this package: `make evidence` measures the claims."])
    evidence = read_json(path, "evidence claims")
    earlier = [c for c in evidence["claims"] if c["world"] != WORLD_VERSION]
    stale = [f"{len(earlier)} of the {len(evidence['claims'])} claims were measured on an earlier world than this "
             f"demo's {WORLD_VERSION} (uniemo/demo/synth.py; their world is in the last column) and have not been "
             "measured again on it yet."] if earlier else []
    rows = [[c["claim"], c["paper"], f"{_pct(c['better'])} vs {_pct(c['worse'])}",
             f"{c['effect'] * 100:+.2f} (bar {c['bar'] * 100:.2f})", c["verdict"], c["world"]]
            for c in evidence["claims"]]
    return Section(title, [
        f"From the evidence run of {evidence['date']} (commit {evidence['commit']}, foundation models "
        f"{evidence.get('foundation', 'unrecorded')}; `make evidence`, 3 seeds each, docs/EVIDENCE.md), not from "
        "this demo. A claim is confirmed when its effect exceeds twice the larger seed "
        "standard deviation (the bar) in the paper's direction.", *stale,
        Table(["claim", "paper", "measured (paper's better row vs worse row)", "effect, points", "verdict", "world"],
              rows),
    ])


def _pct(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def _metric(value, key: str, paper: bool = False) -> str:
    if value is None:
        return "not computed"
    if key == "emo_a":
        return f"{value:.2f}%" if paper else f"{value:.2%}"
    return f"{value:.4f}" if key == "sem_d" else f"{value:.3f}"
