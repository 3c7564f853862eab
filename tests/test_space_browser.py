"""The Space in a real browser: Debian's Chromium driven by Playwright clicks an example, uploads a photo,
clicks on it, paints a correction on the trimap, computes the matte and checks that the pictures appear.

Chromium comes from Debian's package (installed here with apt-get when missing and running as root), never
from Playwright's own browser downloads. A screenshot of the finished page is kept in ``artifacts/``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.space_utils import ROOT, running_app, save_photo, save_tiny_mematte, save_tiny_sam

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"
TIMEOUT_MS = 90_000  # a click or a matte on a busy 2-core machine, with margin


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get if missing (root only); skip with the reason otherwise."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): "
                    "apt-get install -y chromium")  # fmt: skip
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if finished.returncode != 0:
            pytest.skip(f"could not install Debian's chromium ({' '.join(command)} failed): {finished.stderr[-500:]}")
    if not CHROMIUM.exists():
        pytest.skip(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-app")
    mematte = save_tiny_mematte(folder / "mematte")
    sam = save_tiny_sam(folder / "sam")
    with running_app(folder, mematte, sam) as url:
        yield url


@pytest.fixture()
def page(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def wait_for_status(page, text: str) -> str:
    page.wait_for_function(
        "text => document.querySelector('#status').innerText.includes(text)", arg=text, timeout=TIMEOUT_MS
    )
    return page.locator("#status").inner_text()


def image_loaded(page, selector: str) -> bool:
    """Whether the component shows a decoded picture (an <img> whose pixels arrived)."""
    page.wait_for_function(
        "s => { const img = document.querySelector(s + ' img'); return img && img.complete && img.naturalWidth > 0; }",
        arg=selector,
        timeout=TIMEOUT_MS,
    )
    return True


def test_upload_click_paint_and_matte_in_chromium(app_url, page, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#photo")

    # An example photo fills the clickable image.
    page.locator("#examples button.gallery-item").first.click()
    assert "640 x 480" in wait_for_status(page, "loaded")

    # Then an uploaded photo, larger than the previews, replaces it.
    photo = save_photo(tmp_path / "photo.png", 1100, 700)
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    assert "1100 x 700" in wait_for_status(page, "1100 x 700 px loaded")

    box = page.locator("#photo img").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    assert "Mask from 1 prompt" in wait_for_status(page, "Mask from")
    image_loaded(page, "#photo")

    # A white (foreground) stroke across the trimap editor, with its default brush.
    canvas = page.locator("#trimap canvas").first.bounding_box()
    y = canvas["y"] + canvas["height"] * 0.5
    page.mouse.move(canvas["x"] + canvas["width"] * 0.3, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(canvas["x"] + canvas["width"] * (0.3 + 0.03 * step), y, steps=2)
    page.mouse.up()

    page.locator("#run").click()
    assert "computed" in wait_for_status(page, "Matte of 1100 x 700 px computed")
    for selector in ("#alpha", "#cutout", "#composite"):
        assert image_loaded(page, selector)
    page.wait_for_selector("#routing img")
    assert page.locator("#routing img").count() >= 2, "one routing picture per router"
    stats = page.locator("#stats").inner_text()
    assert "brush corrections changed" in stats and "routed to global attention" in stats
    links = page.locator("#downloads a[href]")
    hrefs = sorted({links.nth(index).get_attribute("href") for index in range(links.count())})
    names = sorted(href.rsplit("/", 1)[-1] for href in hrefs)
    assert names == ["photo_alpha.png", "photo_alpha_16bit.png", "photo_cutout_rgba.png"]
    for href in hrefs:  # what the download links serve: the full resolution
        response = page.request.get(href)
        assert response.ok and Image.open(io.BytesIO(response.body())).size == (1100, 700)

    ARTIFACTS.mkdir(exist_ok=True)
    for path in (ARTIFACTS / "space_browser.png", tmp_path / "space_browser.png"):
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
