"""ZeroGPU's worker, simulated as the installed `spaces` package runs it (spaces/zero/wrappers.py,
``regular_function_wrapper``): one forked child process, reused for later calls while the scheduler reports the
GPU idle and forked again when it does not, receiving each call's arguments and sending back its result through
the package's own queues (``spaces.utils.SimpleQueue``: multiprocessing's ForkingPickler, so torch tensors
travel through shared memory, as on a Space).

Errors come back as the package brings them back: a ``gr.Error`` raised in the call is raised again with its
message; any other exception becomes the package's "ZeroGPU worker error" ``gr.Error`` whose message is only the
exception's class name (``spaces.zero.gradio.error``, with ``spaces.zero.types.ExceptionResult``).

The functions it runs are the app's own, unchanged; only the process boundary is recreated. (The package's
wrapper module itself cannot be imported without CUDA, so its loop is restated here.)
"""

from __future__ import annotations

import importlib
import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

import gradio as gr
from spaces.utils import SimpleQueue
from spaces.zero.gradio import error as zerogpu_error
from spaces.zero.types import ExceptionResult, OkResult


def _exception_result(exception: Exception) -> ExceptionResult:
    """What the package's worker sends back for an exception: the gr.Error itself, else only its class name."""
    formatted = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    gradio_error = exception if isinstance(exception, gr.Error) else None
    return ExceptionResult(traceback=formatted, error_cls=type(exception).__name__, gradio_error=gradio_error)


class SimulatedWorker:
    """Fork once; then ``call(function, *args)`` runs ``function`` in the child. ``refork()`` starts a new child
    (what the package does when the scheduler's answer is not ``idle``)."""

    def __init__(self) -> None:
        self.transferred: list[tuple[str, int, int]] = []  # (function, argument bytes, result bytes)
        self.forks = 0
        self._functions: dict[tuple[str, str], Callable[..., Any]] = {}  # the app's own functions, by name
        self._start()

    def _start(self) -> None:
        self._arguments, self._results = SimpleQueue(), SimpleQueue()
        context = multiprocessing.get_context("fork")
        self._process = context.Process(target=self._serve, args=(self._arguments, self._results, self._functions),
                                        daemon=True)  # fmt: skip
        self._process.start()
        self.forks += 1

    @staticmethod
    def _serve(arguments: SimpleQueue, results: SimpleQueue, functions: dict) -> None:
        while True:
            message = arguments.get()
            if message is None:
                return
            (module, name), args, kwargs = message
            try:
                # the app's function, even where the module's name now leads to this worker's wrapper
                function = functions.get((module, name)) or getattr(importlib.import_module(module), name)
                result: Any = OkResult(function(*args, **kwargs))
            except Exception as exception:  # noqa: BLE001 - sent back, raised in the parent as the package does
                result = _exception_result(exception)
            results.put(result)

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The function goes by name: the child runs its own copy of the module's function.
        message = ((function.__module__, function.__qualname__), args, kwargs)
        self._arguments.put(message)
        result = self._results.get()
        self.transferred.append((function.__name__, len(ForkingPickler.dumps(message)),
                                 len(ForkingPickler.dumps(result))))  # fmt: skip
        if isinstance(result, ExceptionResult):
            if result.gradio_error is not None:
                raise result.gradio_error
            raise zerogpu_error("ZeroGPU worker error", result.error_cls)
        return result.value

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        self._functions[(function.__module__, function.__qualname__)] = function  # seen by the next fork

        def through_worker(*args: Any, **kwargs: Any) -> Any:
            return self.call(function, *args, **kwargs)

        through_worker.__name__ = function.__name__
        through_worker.__module__, through_worker.__qualname__ = function.__module__, function.__qualname__
        return through_worker

    def refork(self) -> None:
        """End the child and fork a new one from this process as it is now."""
        self.close()
        self._start()

    def close(self) -> None:
        self._arguments.put(None)
        self._process.join(timeout=10)
