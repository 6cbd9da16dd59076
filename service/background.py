"""One background thread per service loop (the dispatcher, the scan scheduler): started with the
server, stopped with it."""

from __future__ import annotations

import threading


class BackgroundLoop:
    """Runs `self._loop()` in a daemon thread; `_loop` checks `self._stop` (an Event) to end."""

    thread_name = "circuitry-loop"

    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        raise NotImplementedError
