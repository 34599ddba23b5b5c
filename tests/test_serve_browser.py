"""The web page in a real headless browser: Debian's chromium driven by Playwright, the real uvicorn server.

Uploads a real slice from ``../shared/data/brain-tumor-mri/Training`` and a text file, waits for the
results, checks the class text, the probability bars, the conformal set, the threshold slider, that the
preview and Grad-CAM images loaded, and the plain-words error; saves a screenshot.

Needs ``pip install playwright`` and ``apt-get install chromium`` (Playwright's own browser download is
not used: ``$BRAINMRI_CHROMIUM`` or /usr/bin/chromium). Skips with the reason when either is missing.
The screenshot goes to docs/img/serve_page.png when that file is missing or BRAINMRI_UPDATE_SCREENSHOTS=1
(so test runs do not rewrite a tracked file), else to the test's tmp folder.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from browser_support import chromium_path

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e '.[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

import test_bundle_support as support  # noqa: E402

bundle_dir = support.bundle_dir
tiny_run_dir = support.tiny_run_dir

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "img" / "serve_page.png"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_url(bundle_dir: Path):
    """The real uvicorn server on 127.0.0.1 and a free port, in a thread; stopped after the module."""
    import uvicorn

    from brainmri.serve.app import create_app
    from brainmri.serve.settings import ServeSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(bundle_dir, ServeSettings(port=port, access_log=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server_url: str):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.on("pageerror", lambda exc: pytest.fail(f"JavaScript error on the page: {exc}"))
    pg.goto(server_url + "/")
    yield pg
    context.close()


def loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_page_uploads_a_real_slice_and_shows_the_result(page, brain_tumor_mri_dir: Path, tmp_path: Path) -> None:
    image = sorted((brain_tumor_mri_dir / "Training" / "glioma").iterdir())[0]
    assert "Research use only" in page.inner_text("#disclaimer")
    page.wait_for_function("document.querySelector('#model').textContent.startsWith('Model ')", timeout=20_000)
    assert page.input_value("#threshold") == "0.3"  # the bundle's threshold

    page.set_input_files("#files", str(image))
    card = page.locator(".result").first
    page.wait_for_selector(".result[data-state=done]", timeout=60_000)
    label = card.locator(".label").inner_text()
    assert label in {c.replace("_", " ") for c in support.CLASSES}
    assert card.locator(".name").inner_text() == image.name
    assert card.locator(".bar").count() == len(support.CLASSES)
    bar, track = card.locator(".bar.top .fill").bounding_box(), card.locator(".bar.top .track").bounding_box()
    assert 0.2 * track["width"] < bar["width"] <= track["width"] + 1  # the top class's probability bar is drawn
    assert card.locator(".cset").inner_text().startswith("Conformal set (90.0% coverage)")
    page.wait_for_function("document.querySelector('.result .preview').naturalWidth > 0", timeout=10_000)
    assert loaded(page, ".result .preview")
    assert card.locator(".cam-fig").is_visible() and loaded(page, ".result .cam")  # Grad-CAM (torch installed)

    page.fill("#threshold", "0")
    page.dispatch_event("#threshold", "input")
    assert card.locator(".tumour").inner_text().startswith("Tumour at threshold 0.00")

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.set_input_files("#files", str(text))
    page.wait_for_selector(".result[data-state=error]", timeout=20_000)
    error = page.locator(".result[data-state=error] .error").inner_text()
    assert "not an image the model can read" in error and "notes.txt" in error

    page.fill("#threshold", "0.3")
    page.dispatch_event("#threshold", "input")
    update = os.environ.get("BRAINMRI_UPDATE_SCREENSHOTS") == "1" or not SCREENSHOT.exists()
    out = SCREENSHOT if update else tmp_path / SCREENSHOT.name
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000


def test_api_docs_render_with_every_other_origin_blocked(browser, server_url: str) -> None:
    """A hospital network without internet: Swagger UI comes from the app itself (fastapi-offline) and asks
    no other origin for anything."""
    context = browser.new_context()
    page = context.new_page()
    elsewhere: list[str] = []

    def only_local(route) -> None:
        if route.request.url.startswith(server_url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(server_url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI rendered the operations
    assert "/v1/predict" in page.content()
    context.close()
    assert elsewhere == [], elsewhere
