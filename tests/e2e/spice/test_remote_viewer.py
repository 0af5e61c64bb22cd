"""remote-viewer (virt-viewer 11, spice-gtk 0.42) under Xvfb shows the producer's picture.

The screenshot (``import -window root``) is kept in .cache/test-artifacts/ for a person
to look at; the test itself finds the producer's last frame, pixel for pixel, in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tests.support.artifacts import ARTIFACTS
from tests.support.harness import spice_server
from tests.support.wait import wait_until

# CI installs these (scripts/apt-packages.txt): missing, the test fails, not skips.
NEEDED = ("remote-viewer", "Xvfb", "import")

SCREEN = (1024, 768)


@contextmanager
def xvfb() -> Iterator[str]:
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), timeout=20)
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


def screenshot(display: str, path: Path) -> np.ndarray:
    subprocess.run(["import", "-window", "root", "-display", display, str(path)], check=True)
    raw = subprocess.run(
        ["convert", str(path), "-depth", "8", "rgb:-"], check=True, capture_output=True
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(SCREEN[1], SCREEN[0], 3)


def find(shot: np.ndarray, frame: np.ndarray) -> tuple[int, int] | None:
    """Where the frame (RGB) sits in the screenshot, exactly; None if nowhere."""
    h, w = frame.shape[:2]
    row = 240  # a row through the checkerboard, below the stamp
    target = frame[row]
    ys, xs = np.nonzero(np.all(shot == target[0], axis=2))
    for y, x in zip(ys, xs, strict=True):
        top = y - row
        if top < 0 or top + h > shot.shape[0] or x + w > shot.shape[1]:
            continue
        if np.array_equal(shot[top : top + h, x : x + w], frame):
            return int(x), int(top)
    return None


def test_remote_viewer_shows_the_scene() -> None:
    missing = [name for name in NEEDED if shutil.which(name) is None]
    assert not missing, f"not installed: {', '.join(missing)} (scripts/apt-packages.txt)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "remote-viewer.png"
    with spice_server(fps=30) as (srv, scene), xvfb() as display:
        assert scene is not None
        env = {**os.environ, "DISPLAY": display}
        viewer = subprocess.Popen(
            ["remote-viewer", f"spice://127.0.0.1:{srv.port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_until(lambda: sum(srv.codecs_sent.values()) > 60, timeout=30)
            assert viewer.poll() is None, "remote-viewer exited"
            scene.pause()
            time.sleep(3)  # the sharp refresh comes about 0.3 s after the last frame
            shot = screenshot(display, png)
            frame = srv.display.last_frame
            assert frame is not None
            rgb = frame.pixels[..., 2::-1]  # BGRX -> RGB
            where = find(shot, np.ascontiguousarray(rgb))
            assert where is not None, f"the producer's picture is not on screen: see {png}"
        finally:
            viewer.terminate()
            viewer.wait(10)
