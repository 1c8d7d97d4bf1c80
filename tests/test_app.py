"""``uniemo serve`` (uniemo/app.py): the valence-arousal mix, each action on a tiny stage-2 run,
bad uploads, request limits, and the running server through gradio_client: concurrency, order
of arrival, and that a refused request leaves it serving. The real-browser test is in
test_app_browser.py."""

from __future__ import annotations

import functools
import socket
import time

import numpy as np
import pytest
from PIL import Image

from uniemo.app import Limits, Studio, mix_at, mix_text
from uniemo.cli import main
from uniemo.errors import UniEmoError
from uniemo.pipeline import parse_mix
from uniemo.vocab import EMOTIONS, VALENCE_AROUSAL


@pytest.fixture(scope="module")
def run2(tiny_models, tmp_path_factory):
    from test_pipeline import write_run2

    return write_run2(tiny_models, tmp_path_factory.mktemp("run2"))


@pytest.fixture(scope="module")
def studio(run2):
    return Studio(run2, Limits(max_images=4, max_steps=8))


def photo(path, seed: int = 0, size=(48, 40), mode="RGB"):
    """test_edit's random photo, saved to ``path`` in ``mode``."""
    from test_edit import photo as random_photo

    random_photo(seed, size).convert(mode).save(path)
    return str(path)


# ---------------------------------------------------------------------------- valence-arousal


def test_mix_at_an_emotions_own_position_is_led_by_it():
    for name, (valence, arousal) in VALENCE_AROUSAL.items():
        weights = mix_at(valence, arousal)
        assert max(weights, key=weights.get) == name
        assert sum(weights.values()) == pytest.approx(1.0)


def test_mix_at_sadness_pinned_by_hand():
    # at sadness (2.40, 2.81), spread 1: kernels exp(-d²/2) are sadness 1, disgust exp(-5.6425/2) = 0.0595,
    # anger 0.0077 and fear 0.0034 (under 1% of the total 1.0706: dropped), the rest < 1e-4
    weights = mix_at(2.40, 2.81)
    assert set(weights) == {"sadness", "disgust"}
    assert weights["sadness"] == pytest.approx(1 / 1.0595, abs=1e-3)
    assert weights["disgust"] == pytest.approx(0.0595 / 1.0595, abs=1e-3)


def test_mix_at_a_tiny_spread_far_from_everything_takes_the_nearest():
    assert mix_at(9, 9, spread=0.01) == {"excitement": 1.0}


@pytest.mark.parametrize("valence, arousal", [(0.5, 5), (5, 9.5), ("5", 5)])
def test_mix_at_refuses_a_point_off_the_scales(valence, arousal):
    with pytest.raises(UniEmoError, match="from 1 to 9"):
        mix_at(valence, arousal)


def test_mix_text_is_a_target_the_pipeline_parses():
    weights = {"awe": 0.6, "fear": 0.4, "anger": 0.0}
    assert mix_text(weights) == "awe=0.6,fear=0.4"
    assert parse_mix(mix_text(weights), EMOTIONS) == {"awe": 0.6, "fear": 0.4}


# ---------------------------------------------------------------------------- the actions


def test_classify_reads_probabilities_binary_matches_and_attention(studio, tmp_path):
    probs, binary, matched, gallery = studio.classify(photo(tmp_path / "a.png"))
    assert list(probs) == list(EMOTIONS) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert binary["positive"] == pytest.approx(sum(probs[e] for e in EMOTIONS[:4]), abs=1e-6)
    assert binary["negative"] == pytest.approx(1 - binary["positive"])
    for kind, bank in studio.banks.items():
        assert len(matched[kind]) == min(3, len(bank.names)) and set(matched[kind]) <= set(bank.names)
        scores = list(matched[kind].values())
        assert scores == sorted(scores, reverse=True)
    assert [caption for _, caption in gallery] == ["the view the model saw", "scene query attention",
                                                    "object query attention"]
    view, scene, obj = (np.asarray(image, dtype=np.float32) for image, _ in gallery)
    assert view.shape == (256, 256, 3) and np.abs(scene - obj).mean() > 1  # two different maps over one view
    assert np.abs((scene + obj) / 2 - view).mean() > 10  # each overlay is half heat map


def test_a_16_bit_png_reads_like_its_8_bit_original(studio, tmp_path):
    eight = photo(tmp_path / "gray8.png", mode="L")
    sixteen = tmp_path / "gray16.png"
    values = np.asarray(Image.open(eight), dtype=np.uint16) * 257
    Image.fromarray(values).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    assert studio.classify(str(sixteen))[0] == pytest.approx(studio.classify(eight)[0], abs=1e-6)


def test_a_cmyk_jpeg_is_read(studio, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.open(photo(tmp_path / "rgb.png")).convert("CMYK").save(path)
    assert sum(studio.classify(str(path))[0].values()) == pytest.approx(1.0, abs=1e-5)


def bad_uploads(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    good = (tmp_path / "good.png").read_bytes() if (tmp_path / "good.png").exists() else \
        open(photo(tmp_path / "good.png"), "rb").read()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (8000, 6000)).save(tmp_path / "bomb.png")  # 48 MP of zeros: a 50 KB file
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    return {"notes.png": "cannot be read as an image", "truncated.png": "cannot be read as an image",
            "bomb.png": "over this server's limit of 40 megapixels", "dot.png": "at least 16 px on each side"}


def test_bad_uploads_are_refused_in_one_line(studio, tmp_path):
    for name, message in bad_uploads(tmp_path).items():
        with pytest.raises(UniEmoError, match=message) as caught:
            studio.classify(str(tmp_path / name))
        assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_generate_is_seeded_and_each_image_carries_its_reading(studio):
    gallery, metadata = studio.generate("awe", "", 3, 2, 2)
    again, _ = studio.generate("awe", "", 3, 2, 2)
    assert [np.asarray(a).tobytes() for a, _ in gallery] == [np.asarray(b).tobytes() for b, _ in again]
    assert [m["seed"] for m in metadata] == [3, 4]
    probs = studio.pipe.read([image for image, _ in gallery])
    for meta, p, (_, caption) in zip(metadata, probs, gallery):
        assert meta["reading"]["emotion"] == EMOTIONS[int(p.argmax())]
        assert meta["reading"]["target_probability"] == pytest.approx(float(p[EMOTIONS.index("awe")]), abs=1e-4)
        assert caption.startswith(f"seed {meta['seed']} · read as {meta['reading']['emotion']}")


def test_draws_give_each_image_the_best_of_them_as_the_pipeline_does(studio):
    gallery, metadata = studio.generate("awe", "house", 0, 2, 2, 2)
    best = studio.pipe(emotion="awe", object="house", num_images=2, num_inference_steps=2, generator=0, candidates=2)
    assert [np.asarray(a).tobytes() for a, _ in gallery] == [np.asarray(b).tobytes() for b in best.images]
    assert [(m["candidates"], m["candidate"]) for m in metadata] == [(2, m["candidate"]) for m in best.metadata]
    assert all("reading" in m for m in metadata)


def test_a_mix_target_scores_the_mass_of_both_emotions(studio):
    _, metadata = studio.generate("awe=0.5,fear=0.5", "house", 0, 2, 1)
    probs = studio.pipe.read([studio.generate("awe=0.5,fear=0.5", "house", 0, 2, 1)[0][0][0]])[0]
    assert metadata[0]["mix"] == {"awe": 0.5, "fear": 0.5} and metadata[0]["object"] == "house"
    expected = float(probs[EMOTIONS.index("awe")] + probs[EMOTIONS.index("fear")])
    assert metadata[0]["reading"]["target_probability"] == pytest.approx(expected, abs=1e-4)


def test_edit_gives_before_and_after_with_both_readings(studio, tmp_path):
    gallery, metadata = studio.edit(photo(tmp_path / "src.png"), "fear", 0.5, 1, 4)
    (before, before_caption), (after, after_caption) = gallery
    assert before.size == after.size and np.asarray(before).tobytes() != np.asarray(after).tobytes()
    source_reading = metadata[0]["source_reading"]
    assert before_caption == f"before: {source_reading['emotion']} ({source_reading['probability']:.2f})"
    assert after_caption.startswith("seed 1 · after: read as") and metadata[0]["strength"] == 0.5
    assert metadata[0]["object"] is None
    _, kept = studio.edit(photo(tmp_path / "src.png"), "fear", 0.5, 1, 4, True)
    named = studio.generator().read_objects([before])[0]
    assert kept[0]["object"] == named and kept[0]["prompt"].endswith(f" {named}")
    inverted, records = studio.edit(photo(tmp_path / "src.png"), "fear", 0.5, 1, 4, False, True)
    assert records[0]["invert"] is True and metadata[0]["invert"] is False
    assert np.asarray(inverted[1][0]).tobytes() != np.asarray(after).tobytes()
    region, records = studio.edit(photo(tmp_path / "src.png"), "fear", 0.5, 1, 4, False, True, 0.3)
    pipe = studio.generator()
    direct = pipe.edit(before, emotion="fear", strength=0.5, num_inference_steps=4, generator=1, invert=True,
                       keep_region=0.3).images[0]
    assert records[0]["keep_region"] == 0.3 and np.asarray(region[1][0]).tobytes() == np.asarray(direct).tobytes()
    assert np.asarray(region[1][0]).tobytes() != np.asarray(inverted[1][0]).tobytes()
    _, worded = studio.edit(photo(tmp_path / "src.png"), "fear", 0.5, 1, 4, False, False, 0.0, False, " bench ")
    assert worded[0]["object"] == "bench" and worded[0]["prompt"] == pipe.prompt("bench")
    _, until = studio.edit(photo(tmp_path / "src.png"), "fear", 0.3, 1, 4, False, False, 0.0, True)
    assert until[0]["reached"] == (until[0]["reading"]["emotion"] == "fear") and until[0]["strength"] >= 0.3
    assert until[0]["reached"] or until[0]["strength"] == 1.0


@pytest.mark.parametrize("call, message", [
    (lambda s: s.generate("awe", "", 0, 2, 5), "5 images is over this server's limit of 4"),
    (lambda s: s.generate("awe", "", 0, 9, 1), "9 steps is over this server's limit of 8"),
    (lambda s: s.generate("awe", "", 0, 2, 1.5), "1.5 images is invalid"),
    (lambda s: s.generate("awe", "", 0, 2, 3, 2), "3 images × 2 draws is over this server's limit of 4"),
    (lambda s: s.generate("awe", "", 0, 2, 1, 0), "0 draws is invalid"),
    (lambda s: s.generate("awe", "", -1, 2, 1), "seed -1 is invalid"),
    (lambda s: s.generate("awe", "", 2**64, 2, 1), "seed 18446744073709551616 is invalid"),
    (lambda s: s.generate("awe", "", float("nan"), 2, 1), "seed nan is invalid"),
    (lambda s: s.generate("awe", "", 0, float("inf"), 1), "inf steps is invalid"),
    (lambda s: s.generate("awe", "", 0, 2, float("nan")), "nan images is invalid"),
    (lambda s: s.generate("joy", "", 0, 2, 1), "unknown emotion 'joy'"),
    (lambda s: s.generate("", "", 0, 2, 1), "no target"),
    (lambda s: s.generate("awe=x", "", 0, 2, 1), "malformed --mix"),
    (lambda s: s.edit(None, "awe", 0.5, 0, 2), "no image given"),
    (lambda s: s.edit(None, "awe", 0.5, 0, 2, False, False, 0.3), "keeping the object's region needs the inversion"),
    (lambda s: s.edit(None, "awe", 0.5, 0, 2, False, True, 1.5), "keep region 1.5 is invalid"),
    (lambda s: s.edit(None, "awe", 0.5, 0, 2, True, False, 0.0, False, "bench"), "name the object or tick"),
])
def test_requests_out_of_bounds_are_refused(studio, call, message):
    with pytest.raises(UniEmoError, match=message):
        call(studio)


def test_an_understanding_only_run_classifies_and_refuses_to_generate(run2, tmp_path):
    import shutil

    from uniemo.rundir import STAGE2

    run3 = tmp_path / "run3"  # what stage 3 writes: the understanding branch without the fusion files
    shutil.copytree(run2, run3, ignore=lambda d, names: [n for n in names if n in [f.name for f in STAGE2[1:]]])
    only = Studio(run3)
    assert only.pipe is None and sum(only.classify(photo(tmp_path / "a.png"))[0].values()) == pytest.approx(1.0)
    with pytest.raises(UniEmoError, match="not a stage-2 run"):
        only.generate("awe")


def test_serve_command_refuses_bad_options_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv, message in [(["serve"], "run `make demo` first"), (["serve", "--run", "nowhere"], "not a directory"),
                          (["serve", "--max-images", "0"], "--max-images 0 is invalid"),
                          (["serve", "--port", "70000"], "--port 70000 is invalid")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    assert main(["serve"]) == 2 and "pip install 'uniemo[serve]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the running server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run2):
    """The app on a free local port, its classify and generate calls logged in order of handling."""
    from uniemo.app import serve

    studio = Studio(run2, Limits(max_images=4, max_steps=8))
    handled = []
    for name in ("classify", "generate"):
        action = getattr(studio, name)

        @functools.wraps(action)
        def logged(*args, _action=action, _name=name):
            handled.append((_name, args[0] if _name == "classify" else args[2]))
            return _action(*args)
        setattr(studio, name, logged)
    port = free_port()
    app = serve(studio, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", handled
    app.close()


def submit_in_order(url, calls):
    """Submit each call once the previous one is in the queue, so that arrival order is known.

    One client per call, as from as many users: calls of one client share one event stream, and
    gradio_client 2.7 cancels a call submitted just as the server closes that stream because
    the calls before it had finished (``CancelledError``, seen once in CI).
    """
    from gradio_client import Client

    jobs = []
    for args, api_name in calls:
        job = Client(url, verbose=False).submit(*args, api_name=api_name)
        deadline = time.time() + 30
        while job.status().code.name in ("STARTING", "JOINING_QUEUE") and time.time() < deadline:
            time.sleep(0.01)
        jobs.append(job)
    return jobs


def test_16_classify_and_4_generate_at_once_complete_in_order_of_arrival(server, tmp_path):
    from gradio_client import handle_file

    url, handled = server
    handled.clear()
    images = [photo(tmp_path / f"img{i:02d}.png", seed=i) for i in range(16)]
    calls = [((handle_file(p),), "/classify") for p in images] + \
            [(("awe", "", seed, 2, 2), "/generate") for seed in range(4)]
    order = [calls[i] for i in (*range(0, 8), 16, 17, *range(8, 16), 18, 19)]  # the two queues interleaved
    jobs = submit_in_order(url, order)
    results = [job.result(timeout=120) for job in jobs]
    assert all(len(r) == 4 for r, (_, api) in zip(results, order) if api == "/classify")
    assert all(len(r[1]) == 2 for r, (_, api) in zip(results, order) if api == "/generate")
    classified = [name.rsplit("/", 1)[-1] for kind, name in handled if kind == "classify"]
    assert classified == [f"img{i:02d}.png" for i in range(16)]
    assert [seed for kind, seed in handled if kind == "generate"] == [0, 1, 2, 3]


def test_a_refused_request_is_a_message_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server[0], verbose=False)
    for name, message in bad_uploads(tmp_path).items():
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(tmp_path / name)), api_name="/classify")
    with pytest.raises(AppError, match="over this server's limit of 4"):
        client.predict("awe", "", 0, 2, 5, api_name="/generate")
    probs = client.predict(handle_file(photo(tmp_path / "ok.png")), api_name="/classify")[0]
    assert {c["label"] for c in probs["confidences"]} == set(EMOTIONS)


def test_the_api_names_are_stable(server):
    from gradio_client import Client

    endpoints = Client(server[0], verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/classify", "/generate", "/edit"}
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == \
        ["target", "object", "seed", "steps", "count", "draws"]
    assert [p["parameter_name"] for p in endpoints["/edit"]["parameters"]] == \
        ["image", "target", "strength", "seed", "steps", "keep_object", "invert", "keep_region", "until_target",
         "object"]


def test_server_listens_on_the_loopback_address_only(server):
    port = int(server[0].rsplit(":", 1)[1].strip("/"))
    with open("/proc/net/tcp") as table:  # local address:port in hex, state 0A = listening
        listening = [line.split()[1] for line in table.readlines()[1:] if line.split()[3] == "0A"]
    assert [address for address in listening if address.endswith(f":{port:04X}")] == [f"0100007F:{port:04X}"]


def test_a_port_in_use_is_a_one_line_error(studio):
    from uniemo.app import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UniEmoError, match=f"cannot serve on 127.0.0.1:{port} .*pass another --port"):
            serve(studio, port=port, block=False, quiet=True)


def test_the_serve_command_serves_the_page_until_stopped(run2):
    import signal
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "uniemo.cli", "serve", "--run", str(run2), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.time() + 60, None
        while page is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    page = response.read().decode()
            except OSError:
                time.sleep(0.1)
        assert page is not None and "\"title\":\"UniEmo\"" in page.replace(" ", "")
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=30)
    assert f"serving {run2} at http://127.0.0.1:{port}" in out
