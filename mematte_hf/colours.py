"""Colours as people type them: '#rrggbb', '#rgb', a CSS name, 'rgb(...)' or 'rgba(...)' (Gradio's colour picker).

Torch-free, so the command line can check a `--background` before it loads anything.
"""

from __future__ import annotations

import re

from .errors import InputError

# Gradio's colour picker may send fractional channels ('rgba(12.5, 0, 255, 1)'), which Pillow refuses.
_RGB_FUNCTION = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)")


def parse_colour(text: str | None, what: str = "colour") -> tuple[int, int, int]:
    """``text`` as an (r, g, b) tuple of 0..255; an `InputError` naming ``what`` when it is not a colour."""
    from PIL import ImageColor

    text = (text or "").strip()
    match = _RGB_FUNCTION.fullmatch(text)
    if match:
        return tuple(min(255, round(float(value))) for value in match.groups())  # type: ignore[return-value]
    try:
        return tuple(ImageColor.getrgb(text)[:3])  # type: ignore[return-value]
    except ValueError:
        raise InputError(
            f"{what} {text!r} is not a colour: use #rrggbb (e.g. #00ff00) or a name such as white"
        ) from None
