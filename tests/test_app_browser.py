"""``uniemo serve`` in a real browser: headless Chromium (Debian's package) driven by Playwright.
It opens the page, classifies an upload, shows a bad upload's message, generates, saves a
screenshot to test-artifacts/ (or $UNIEMO_TEST_ARTIFACTS), and checks that the page never asked
any host but the server for anything. Skipped without a chromium executable unless
UNIEMO_REQUIRE_BROWSER=1 (`.ci/run` sets it and installs chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from uniemo.vocab import EMOTIONS

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("UNIEMO_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("UNIEMO_REQUIRE_BROWSER") == "1":
            pytest.fail("no chromium executable: `apt-get install -y chromium` (.ci/run does)")
        pytest.skip("no chromium executable (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app_url(tiny_models, tmp_path_factory):
    from test_app import free_port
    from test_pipeline import write_run2

    from uniemo.app import Studio, serve

    studio = Studio(write_run2(tiny_models, tmp_path_factory.mktemp("run2")))
    port = free_port()
    app = serve(studio, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}", studio
    app.close()


def test_classify_a_bad_upload_and_generate_in_the_page(browser, app_url, tmp_path):
    from test_app import photo

    url, studio = app_url
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)

    image = photo(tmp_path / "street.png")
    page.set_input_files("#understand-image input[type=file]", image)
    page.click("#classify")
    expected = max(studio.classify(image)[0].items(), key=lambda kv: kv[1])[0]
    page.locator("#emotion h2").filter(has_text=expected).wait_for(timeout=30_000)
    assert page.locator("#attention img").count() == 3

    (tmp_path / "broken.png").write_bytes(Path(image).read_bytes()[:200])
    page.locator("#understand-image button[aria-label='Clear']").first.click()
    page.set_input_files("#understand-image input[type=file]", str(tmp_path / "broken.png"))
    page.click("#classify")
    page.get_by_text("broken.png cannot be read as an image").first.wait_for(timeout=30_000)

    page.get_by_role("tab", name="Generate").click()
    page.get_by_role("tab", name="Valence-arousal").first.click()
    page.get_by_role("button", name="Use this point").first.click()
    target = page.locator(".target textarea").first
    page.wait_for_function("el => el.value.includes('=')", arg=target.element_handle(), timeout=10_000)
    assert set(dict(part.split("=") for part in target.input_value().split(","))) <= set(EMOTIONS)
    page.click("#generate")
    page.locator("#gallery img").nth(3).wait_for(timeout=60_000)
    assert "read as" in page.inner_text("#gallery")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)
    foreign = [u for u in requests if not u.startswith(url) and not u.startswith(("data:", "blob:"))]
    assert requests and foreign == []
