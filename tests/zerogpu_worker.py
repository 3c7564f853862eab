"""ZeroGPU's worker, simulated as the `spaces` package runs it: one forked child process, started once and
reused for every call, receiving each call's arguments and sending back its result through pickling.

The functions it runs are the app's own, unchanged; only the process boundary is recreated, so that what
crosses it (and its size) and what the child can see (only what existed when it was forked, plus files) are
as on a ZeroGPU Space.
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import traceback
from collections.abc import Callable
from typing import Any


class SimulatedWorker:
    """Fork once; then ``call(function, *args)`` runs ``function`` in the child with pickled args and result."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self._parent, child = context.Pipe()
        self._process = context.Process(target=self._serve, args=(child,), daemon=True)
        self._process.start()
        self.transferred: list[tuple[str, int, int]] = []  # (function, argument bytes, result bytes)

    @staticmethod
    def _serve(connection) -> None:
        while True:
            message = connection.recv_bytes()
            if not message:
                return
            (module, name), args, kwargs = pickle.loads(message)
            try:
                function = getattr(importlib.import_module(module), name)  # as the child saw it at the fork
                payload = pickle.dumps((True, function(*args, **kwargs)))
            except Exception as error:  # noqa: BLE001 - sent back, raised in the parent like ZeroGPU does
                payload = pickle.dumps((False, (type(error), str(error), traceback.format_exc())))
            connection.send_bytes(payload)

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The function goes by name: the child runs its own copy of the module's function.
        arguments = pickle.dumps(((function.__module__, function.__qualname__), args, kwargs))
        self._parent.send_bytes(arguments)
        payload = self._parent.recv_bytes()
        self.transferred.append((function.__name__, len(arguments), len(payload)))
        ok, value = pickle.loads(payload)
        if not ok:
            error_type, message, _ = value
            raise error_type(message)
        return value

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def through_worker(*args: Any, **kwargs: Any) -> Any:
            return self.call(function, *args, **kwargs)

        through_worker.__name__ = function.__name__
        through_worker.__module__, through_worker.__qualname__ = function.__module__, function.__qualname__
        return through_worker

    def close(self) -> None:
        self._parent.send_bytes(b"")
        self._process.join(timeout=10)
