"""Startup: read the settings, load both models (failing early with one line), build the UI and serve it."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

# First: on ZeroGPU the `spaces` package must be imported before anything initialises CUDA.
from . import runtime
from .settings import parse_settings


def main(argv: Sequence[str] | None = None) -> int:
    """``python app.py [--model ID_OR_PATH] [--sam-model ID_OR_PATH] [--port N] [--host H] ...``"""
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("space").setLevel(logging.INFO)
    runtime.configure(settings)
    try:
        runtime.load_models()  # now, so that a wrong id or an unreachable Hub stops the start, not a click
    except runtime.StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(runtime.predictor().describe())  # which weights run, and whether routing is on
    from . import ui  # gradio is imported only once the models are there

    demo = ui.build_demo(settings)
    # SIGTERM (how a Space or a supervisor stops the app) ends like Ctrl+C: gradio closes its server, and every
    # session's files and the store are deleted on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(
            server_name=settings.host,
            server_port=settings.port,
            max_file_size=settings.max_file_size,
            share=settings.share,
            ssr_mode=False,  # no Node server: the plain client-side page works everywhere the Space runs
            css=ui.CSS,
            mcp_server=settings.mcp,
        )
    finally:
        ui.sessions().close()
        from .store import store

        store().close()
    return 0
