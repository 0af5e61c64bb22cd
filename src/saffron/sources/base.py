"""What the in-process producers share: a thread that presents frames at a fixed rate."""

from __future__ import annotations

import logging
import threading
import time

from ..display import Display

log = logging.getLogger("saffron.sources")


class TimedSource:
    """Calls ``tick`` ``fps`` times a second on its own thread until stopped.

    A late tick is not made up for: the schedule moves on, as a display's
    refresh would.
    """

    name = "source"

    def __init__(self, display: Display, fps: int) -> None:
        self.display = display
        self.fps = fps
        self.frames = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def setup(self) -> None:
        """Runs first on the producer's thread (where a GL context must live)."""

    def teardown(self) -> None:
        """Runs last on the producer's thread."""

    def tick(self, t: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        self.setup()
        try:
            self._loop()
        finally:
            self.teardown()

    def _loop(self) -> None:
        period = 1.0 / self.fps
        start = time.monotonic()
        deadline = start
        while not self._stop.is_set():
            try:
                self.tick(time.monotonic() - start)
            except Exception:
                log.exception("the %s producer failed", self.name)
                return
            self.frames += 1
            deadline += period
            delay = deadline - time.monotonic()
            if delay < -period:
                deadline = time.monotonic()
            elif delay > 0:
                self._stop.wait(delay)
