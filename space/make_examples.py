"""Draw the demo's example photos: synthetic scenes with the soft or see-through edges matting is about.

Nothing is downloaded: each picture is drawn from a fixed random seed, so the files are the same on every run.

* ``fluffy_ball.png``: a pom-pom of fine hair strands over out-of-focus foliage (fur, the classic case).
* ``wine_glass.png``: a wine glass over a striped gradient (transparency and refraction: alpha well below 1).
* ``dandelion.png``: a dandelion seed head of thin filaments against a dusk sky (thin structures).

Run ``python space/make_examples.py [FOLDER]`` to (re)write them; the app writes any that are missing at
startup.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
WIDTH, HEIGHT = 640, 480
SUPERSAMPLE = 2  # strands are drawn at twice the size and downscaled, which anti-aliases them


def _canvas_size() -> tuple[int, int]:
    return WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE


def _finish(picture: Image.Image) -> Image.Image:
    return picture.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).convert("RGB")


def _vertical_gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    width, height = _canvas_size()
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    gradient = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return np.broadcast_to(gradient, (height, width, 3)).copy()


def _bokeh(base: np.ndarray, rng: np.random.Generator, count: int, palette: list[tuple[int, int, int]]) -> Image.Image:
    """Soft discs of light over ``base``, blurred as an out-of-focus background looks."""
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture, "RGBA")
    width, height = picture.size
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.02, 0.09) * width
        colour = palette[rng.integers(len(palette))]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(*colour, int(rng.uniform(40, 110))))
    return picture.filter(ImageFilter.GaussianBlur(radius=9 * SUPERSAMPLE))


def fluffy_ball(rng: np.random.Generator) -> Image.Image:
    """Thousands of slightly curved hair strands around a warm core, lit from the upper left."""
    greens = [(90, 140, 60), (160, 190, 90), (40, 80, 40), (210, 220, 150)]
    picture = _bokeh(_vertical_gradient((120, 160, 110), (40, 70, 40)), rng, 40, greens)
    draw = ImageDraw.Draw(picture, "RGBA")
    width, height = picture.size
    centre_x, centre_y, radius = width * 0.5, height * 0.52, height * 0.27
    draw.ellipse((centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius), fill=(200, 140, 80))
    for _ in range(6000):
        angle = rng.uniform(0, 2 * math.pi)
        start = radius * math.sqrt(rng.uniform(0.0, 1.0))
        length = radius * rng.uniform(0.25, 0.75)
        bend = rng.normal(0, 0.35)
        light = 0.75 + 0.35 * math.cos(angle + 2.4) * (start / radius)  # brighter towards the upper left
        colour = tuple(int(min(255, c * light + rng.normal(0, 12))) for c in (236, 178, 110))
        points = []
        for step in range(6):
            t = step / 5
            heading = angle + bend * t
            distance = start + length * t
            points.append((centre_x + distance * math.cos(heading), centre_y + distance * math.sin(heading)))
        draw.line(points, fill=(*colour, int(rng.uniform(150, 255))), width=SUPERSAMPLE)
    return _finish(picture)


def _glass_profile(y: np.ndarray, top: float, bowl: float, stem: float, bottom: float, width: float) -> np.ndarray:
    """Half-width of a wine glass at each row: a rounded bowl, a thin stem and a flat foot."""
    half = np.zeros_like(y)
    in_bowl = (y >= top) & (y < top + bowl)
    t = (y[in_bowl] - top) / bowl
    half[in_bowl] = width * (0.82 + 0.18 * np.sin(np.pi * t * 0.85)) * np.sqrt(np.clip(1.08 - t**2, 0, None))
    in_stem = (y >= top + bowl) & (y < bottom - stem * 0.06)
    half[in_stem] = width * 0.06
    in_foot = (y >= bottom - stem * 0.06) & (y < bottom)
    half[in_foot] = width * 0.62
    return half


def wine_glass(rng: np.random.Generator) -> Image.Image:
    """A clear glass: the background shows through, shifted and dimmed, with bright rims and a highlight."""
    width, height = _canvas_size()
    backdrop = _vertical_gradient((250, 214, 165), (120, 60, 110))
    stripes = (np.sin(np.linspace(0, 14 * np.pi, width)) > 0.6)[None, :, None]
    backdrop = np.where(stripes, backdrop * 0.7 + np.array([30, 40, 90]) * 0.3, backdrop)
    backdrop += rng.normal(0, 2.0, backdrop.shape)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    centre = width * 0.5
    half = _glass_profile(yy[:, :1], height * 0.12, height * 0.42, height * 0.34, height * 0.9, width * 0.16)
    offset = np.abs(xx - centre)
    inside = offset < half
    edge = np.clip(1 - np.abs(offset - half) / (3.0 * SUPERSAMPLE), 0, 1) * (half > 0)
    # Refraction: inside the glass the background is seen squeezed towards the axis and slightly dimmed.
    source_x = np.clip(centre + (xx - centre) * 0.75, 0, width - 1).astype(int)
    refracted = backdrop[yy.astype(int), source_x] * 0.85 + np.array([235, 245, 255]) * 0.08
    picture = np.where(inside[..., None], refracted, backdrop)
    picture = picture * (1 - 0.8 * edge[..., None]) + 250 * 0.8 * edge[..., None]
    highlight = inside & (np.abs(xx - (centre - half * 0.55)) < 4 * SUPERSAMPLE) & (yy < height * 0.45)
    picture[highlight] = picture[highlight] * 0.4 + 255 * 0.6
    return _finish(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)))


def dandelion(rng: np.random.Generator) -> Image.Image:
    """A seed head: filaments from a small core, each ending in a fine tuft, over a dusk sky."""
    blues = [(70, 90, 150), (150, 110, 160), (230, 160, 120)]
    picture = _bokeh(_vertical_gradient((40, 50, 100), (200, 130, 120)), rng, 25, blues)
    draw = ImageDraw.Draw(picture, "RGBA")
    width, height = picture.size
    centre_x, centre_y, reach = width * 0.48, height * 0.42, height * 0.3
    draw.line([(centre_x, centre_y), (centre_x + width * 0.03, height)], fill=(90, 120, 70), width=5 * SUPERSAMPLE)
    for _ in range(260):
        angle = rng.uniform(0, 2 * math.pi)
        length = reach * rng.uniform(0.75, 1.0)
        tip = (centre_x + length * math.cos(angle), centre_y + length * math.sin(angle))
        draw.line([(centre_x, centre_y), tip], fill=(240, 240, 230, 170), width=1 * SUPERSAMPLE)
        for _ in range(9):  # the tuft (pappus) at the tip
            spread = angle + rng.uniform(-0.9, 0.9)
            size = reach * rng.uniform(0.08, 0.16)
            end = (tip[0] + size * math.cos(spread), tip[1] + size * math.sin(spread))
            draw.line([tip, end], fill=(255, 255, 250, 120), width=1 * SUPERSAMPLE)
    core = reach * 0.1
    draw.ellipse((centre_x - core, centre_y - core, centre_x + core, centre_y + core), fill=(150, 130, 90))
    return _finish(picture)


#: file name -> (drawing function, seed)
EXAMPLES: dict[str, tuple[Callable[[np.random.Generator], Image.Image], int]] = {
    "fluffy_ball.png": (fluffy_ball, 1),
    "wine_glass.png": (wine_glass, 2),
    "dandelion.png": (dandelion, 3),
}


def write_examples(folder: str | Path = EXAMPLES_DIR, overwrite: bool = False) -> list[Path]:
    """Draw every example into ``folder`` (only missing ones unless ``overwrite``); return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (draw, seed) in EXAMPLES.items():
        path = folder / name
        if overwrite or not path.exists():
            temporary = path.with_suffix(".tmp.png")
            draw(np.random.default_rng(seed)).save(temporary, optimize=True)
            temporary.replace(path)  # a half-written file never looks like a finished example
        paths.append(path)
    return paths


def example_paths() -> list[Path]:
    """The example photos, drawn first if missing; none if the folder cannot be written (read-only install)."""
    try:
        return write_examples()
    except OSError:
        return sorted(path for path in EXAMPLES_DIR.glob("*.png") if not path.name.endswith(".tmp.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(EXAMPLES_DIR), help="where to write (default: examples/)")
    args = parser.parse_args(argv)
    for path in write_examples(args.folder, overwrite=True):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
