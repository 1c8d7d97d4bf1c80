"""`uniemo serve` on the demo's models (issue targets: up in <= 15 s, classify <= 0.5 s per image,
4 images at 25 steps <= 6 s), then 16 simultaneous classify and 4 simultaneous generate requests:
all must complete; the server's peak resident memory is printed.

    python benchmarks/bench_serve.py [--run demo-out/run2-joint] [--screenshot docs/serve.png]

The server runs as its own process (`uniemo serve`), as a user starts it; requests come from
gradio_client, as a script would send them."""

from __future__ import annotations

import argparse
import glob
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, server: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not come up")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_images(run: Path, count: int, folder: Path) -> list[str]:
    """Test images of the demo's world if they sit beside the run, else random pictures."""
    found = sorted(glob.glob(str(run.parent / "data" / "image" / "*" / "*.jpg")))[:count]
    if len(found) == count:
        return found
    rng = np.random.default_rng(0)
    paths = [folder / f"img{i:02d}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return [str(p) for p in paths]


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def screenshot(url: str, image: str, path: str) -> None:
    import shutil

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.set_input_files("#understand-image input[type=file]", image)
        page.click("#classify")
        page.locator("#attention img").nth(2).wait_for(timeout=30_000)
        page.screenshot(path=path, full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="demo-out/run2-joint")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a screenshot of the page after a classify")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "uniemo.cli", "serve", "--run", args.run, "--port", str(port)],
                              stdout=subprocess.DEVNULL)
    try:
        wait_up(url, server)
        up = time.perf_counter() - start
        print(f"server up (process start -> page served): {up:.1f} s  (target <= 15 s)")
        client = Client(url, verbose=False)
        with tempfile.TemporaryDirectory() as tmp:
            images = test_images(Path(args.run), 16, Path(tmp))
            client.predict(handle_file(images[0]), api_name="/classify")  # warm-up
            classify = timed(lambda: client.predict(handle_file(images[1]), api_name="/classify"), 20)
            print(f"classify, one image per request: median {statistics.median(classify):.3f} s "
                  f"(min {min(classify):.3f}, max {max(classify):.3f}; target <= 0.5 s)")
            generate = timed(lambda: client.predict("awe", "", 0, 25, 4, api_name="/generate"), 5)
            print(f"generate 4 images at 25 steps: median {statistics.median(generate):.2f} s "
                  f"(min {min(generate):.2f}, max {max(generate):.2f}; target <= 6 s)")
            begin = time.perf_counter()
            jobs = [client.submit(handle_file(p), api_name="/classify") for p in images] + \
                   [client.submit("fear", "", seed, 25, 4, api_name="/generate") for seed in range(4)]
            results = [job.result(timeout=600) for job in jobs]
            print(f"16 classify + 4 generate (4 images, 25 steps) at once: {len(results)} of 20 completed in "
                  f"{time.perf_counter() - begin:.1f} s")
            if args.screenshot:
                screenshot(url, images[0], args.screenshot)
                print(f"screenshot: {args.screenshot}")
        print(f"server peak resident memory: {peak_rss_mib(server.pid):.0f} MiB")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
