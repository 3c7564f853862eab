"""The Space in a real browser: Debian's Chromium driven by Playwright, on a 1366 x 768 screen, clicks an
example, uploads a photo, says what to cut out, clicks on it, paints a correction, cuts out and checks that the
pictures appear, the results come into view and every download button serves the full-size file; then two
tabs cut out at once.

Chromium comes from Debian's package (installed here with apt-get when missing and running as root), never
from Playwright's own browser downloads. A screenshot of the finished page is kept in ``artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.space_utils import ROOT, disc_photo, running_app, save_photo, save_tiny_mematte, save_tiny_sam
from tests.test_text_prompts import save_tiny_owlv2

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


VIEWPORT = {"width": 1366, "height": 768}
TEXT = "the dog"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from mematte_hf.text_prompts import load_text_model

    folder = tmp_path_factory.mktemp("browser-app")
    mematte = save_tiny_mematte(folder / "mematte")
    sam = save_tiny_sam(folder / "sam")
    owl = save_tiny_owlv2(folder / "owl")
    # Random weights: accept the best box the tiny detector finds for TEXT on the test photo.
    found = load_text_model(owl, device="cpu").detect(disc_photo(1100, 700), TEXT, threshold=0.0)
    threshold = f"{float(found.scores.max()) - 1e-3:.6f}"
    with running_app(folder, mematte, sam, "--text-model", str(owl), "--text-threshold", threshold) as url:
        yield url


@pytest.fixture()
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_tab(browser):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    return page


@pytest.fixture()
def page(browser):
    return new_tab(browser)


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


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).first.bounding_box()
    return box is not None and box["y"] < VIEWPORT["height"] and box["y"] + box["height"] > 0


def downloads_serve_full_size(page, size: tuple[int, int]) -> list[str]:
    """Press each download button as a visitor does; every file is the full-size PNG."""
    names = []
    for selector in ("#download-rgba", "#download-alpha", "#download-alpha16"):
        with page.expect_download() as download:
            page.locator(selector).click()
        path = download.value.path()
        assert Image.open(path).size == size, selector
        names.append(download.value.suggested_filename)
    return names


def text_click_and_cut_out(page, photo: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    wait_for_status(page, "1100 x 700 px loaded")
    page.locator("#text textarea, #text input").first.fill(TEXT)
    page.locator("#find").click()
    wait_for_status(page, f'Outline from "{TEXT}"')
    box = page.locator("#photo img").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    wait_for_status(page, "and your clicks")


def test_text_click_paint_and_cut_out_on_a_laptop_screen(app_url, page, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#photo")

    # An example photo fills the clickable image, which stays on a 1366 x 768 screen with the text box.
    page.locator("#examples button.gallery-item").first.click()
    assert "640 x 480" in wait_for_status(page, "loaded")
    assert in_view(page, "#photo img") and in_view(page, "#text")

    text_click_and_cut_out(page, save_photo(tmp_path / "photo.png", 1100, 700))

    # A white (keep) stroke across the outline editor, with its default brush.
    page.locator("#trimap canvas").first.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)  # the page's smooth scrolls settle before the stroke's coordinates are read
    canvas = page.locator("#trimap canvas").first.bounding_box()
    y = canvas["y"] + canvas["height"] * 0.5
    page.mouse.move(canvas["x"] + canvas["width"] * 0.3, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(canvas["x"] + canvas["width"] * (0.3 + 0.03 * step), y, steps=2)
    page.mouse.up()

    page.locator("#run").click()
    assert "Cut out 1100 x 700 px" in wait_for_status(page, "Cut out 1100 x 700 px")
    image_loaded(page, "#before-after")
    image_loaded(page, "#composite")
    page.wait_for_function("() => { const r = document.getElementById('results').getBoundingClientRect();"
                           " return r.top < innerHeight && r.bottom > 0; }")  # fmt: skip
    assert sorted(downloads_serve_full_size(page, (1100, 700))) == [
        "photo_alpha.png", "photo_alpha_16bit.png", "photo_cutout_rgba.png"
    ]  # fmt: skip
    page.locator("#advanced").first.click()  # the measurements live under "Advanced"
    page.wait_for_selector("#routing img")
    assert "brush corrections changed" in page.locator("#stats").inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    for path in (ARTIFACTS / "space_browser.png", tmp_path / "space_browser.png"):
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000


def test_two_tabs_cut_out_at_once(app_url, browser, tmp_path):
    photo = save_photo(tmp_path / "photo.png", 1100, 700)
    tabs = [new_tab(browser) for _ in range(2)]
    for tab in tabs:
        tab.goto(app_url)
        tab.wait_for_selector("#photo")
        text_click_and_cut_out(tab, photo)
    for tab in tabs:  # both runs queued before either finishes
        tab.locator("#run").click()
    for tab in tabs:
        wait_for_status(tab, "Cut out 1100 x 700 px")
        downloads_serve_full_size(tab, (1100, 700))


def test_examples_twice_no_dead_pictures_the_video_tab_and_tab_close(app_url, browser):
    """An example clicked twice, and by a second visitor, loads every time; after Cut out the page requests no
    picture that was deleted; Video is a tab beside Photo on one tab bar; a closed tab's folder goes."""
    forbidden: list[str] = []
    first, second = new_tab(browser), new_tab(browser)
    for tab in (first, second):
        tab.on("response", lambda response: forbidden.append(response.url) if response.status in (403, 404) else None)
        tab.goto(app_url)
        tab.wait_for_selector("#photo")
    first.locator("#examples button.gallery-item").first.click()
    wait_for_status(first, "640 x 480 px loaded")
    first.get_by_role("button", name="Start over").click()
    wait_for_status(first, "Cleared")
    first.locator("#examples button.gallery-item").first.click()  # the same example again
    wait_for_status(first, "640 x 480 px loaded")
    second.locator("#examples button.gallery-item").first.click()  # and by another visitor
    wait_for_status(second, "640 x 480 px loaded")

    box = first.locator("#photo img").first.bounding_box()
    first.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    wait_for_status(first, "Outline from your clicks")
    first.locator("#run").click()
    wait_for_status(first, "Cut out 640 x 480 px")
    image_loaded(first, "#before-after")
    first.wait_for_timeout(1000)  # the page's requests for the pictures it now shows
    assert not forbidden, f"the page asked for files that are gone: {forbidden}"

    assert first.locator("[role=tablist]").count() == 1
    first.get_by_role("tab", name="Video").click()
    first.wait_for_selector("#video-upload")
    assert in_view(first, "#video-upload"), "the Video tab's content is on screen, not below the photo results"

    folders = {path.name for path in app_url.cache.glob("mematte-downloads-*")}
    assert len(folders) >= 2, "each tab has its session folder"
    first.close()  # gradio's unload event ends the session when the tab's connection goes
    deadline = time.monotonic() + 60
    while len(list(app_url.cache.glob("mematte-downloads-*"))) >= len(folders) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(app_url.cache.glob("mematte-downloads-*"))) < len(folders), "the closed tab's folder went"
