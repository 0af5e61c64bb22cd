"""The demo producer: lit, spinning cubes rendered off-screen with OpenGL through EGL.

Mesa's llvmpipe renders it where there is no GPU. Dragging with the left
button turns the scene and any key changes its colour, so a viewer sees its
input take effect and can judge the delay. Without EGL a NumPy drawing of the
same idea stands in.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, cast

import numpy as np

from ..display import Button, Display, Pixels, now_us
from .base import TimedSource

if TYPE_CHECKING:
    import moderngl

log = logging.getLogger("saffron.demo")

PALETTE = [
    (1.0, 0.55, 0.1),  # saffron
    (0.2, 0.6, 1.0),
    (0.3, 0.85, 0.35),
    (0.9, 0.25, 0.45),
    (0.75, 0.75, 0.8),
]

VERTEX_SHADER = """
#version 330
uniform mat4 mvp;
uniform mat4 model;
uniform vec3 offset;
in vec3 in_pos;
in vec3 in_normal;
out vec3 v_normal;
out vec3 v_pos;
void main() {
    vec4 world = model * vec4(in_pos + offset, 1.0);
    v_pos = world.xyz;
    v_normal = mat3(model) * in_normal;
    gl_Position = mvp * world;
    gl_Position.y = -gl_Position.y;  // rows come back top-down from glReadPixels
}
"""

FRAGMENT_SHADER = """
#version 330
uniform vec3 color;
in vec3 v_normal;
in vec3 v_pos;
out vec4 frag;
void main() {
    vec3 light = normalize(vec3(0.6, 0.8, 1.0));
    float diffuse = max(dot(normalize(v_normal), light), 0.0);
    vec3 c = color * (0.25 + 0.75 * diffuse) + vec3(0.04, 0.04, 0.08);
    c *= 0.85 + 0.15 * sin(v_pos.x * 3.0);
    frag = vec4(c.b, c.g, c.r, 1.0);  // stored as B, G, R, X: what the encoders take
}
"""


def _cube() -> np.ndarray:
    """36 vertices of a unit cube: position and normal."""
    faces = [
        ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
        ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
        ((0, 1, 0), (0, 0, 1), (1, 0, 0)),
        ((0, -1, 0), (1, 0, 0), (0, 0, 1)),
        ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
        ((0, 0, -1), (0, 1, 0), (1, 0, 0)),
    ]
    out = []
    for n, u, v in faces:
        nv, uv, vv = (np.array(a, np.float32) for a in (n, u, v))
        corners = [
            nv * 0.5 + uv * su * 0.5 + vv * sv * 0.5
            for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, -1), (1, 1), (-1, 1))
        ]
        out += [np.concatenate([c, nv]) for c in corners]
    return np.array(out, np.float32)


def _perspective(fov: float, aspect: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / math.tan(fov / 2)
    return np.array(
        [
            [f / aspect, 0, 0, 0],
            [0, f, 0, 0],
            [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
            [0, 0, -1, 0],
        ],
        np.float32,
    )


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = np.array([[cy, 0, sy, 0], [0, 1, 0, 0], [-sy, 0, cy, 0], [0, 0, 0, 1]], np.float32)
    rx = np.array([[1, 0, 0, 0], [0, cp, -sp, 0], [0, sp, cp, 0], [0, 0, 0, 1]], np.float32)
    return rx @ ry


class DemoInput:
    """Turns viewers' input into the scene's rotation and colour."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.yaw = 0.0
        self.pitch = 0.35
        self.color = 0
        self.keys = 0
        self.dragging = False
        self.version = 0
        """Bumped on every change that alters the picture."""
        self._last: tuple[int, int] | None = None

    def key(self, scancode: int, down: bool) -> None:
        if down:
            with self.lock:
                self.color = (self.color + 1) % len(PALETTE)
                self.keys += 1
                self.version += 1

    def pointer(self, x: int, y: int) -> None:
        with self.lock:
            if self.dragging and self._last is not None:
                self._turn(x - self._last[0], y - self._last[1])
            self._last = (x, y)

    def motion(self, dx: int, dy: int) -> None:
        with self.lock:
            if self.dragging:
                self._turn(dx, dy)

    def button(self, button: Button, down: bool) -> None:
        with self.lock:
            if button == Button.LEFT:
                self.dragging = down
            elif down and button in (Button.WHEEL_UP, Button.WHEEL_DOWN):
                self._turn(40 if button == Button.WHEEL_UP else -40, 0)

    def _turn(self, dx: int, dy: int) -> None:
        self.yaw += dx * 0.01
        self.pitch = max(-1.4, min(1.4, self.pitch + dy * 0.01))
        self.version += 1


class GLScene:
    """The cubes, drawn by moderngl into an off-screen framebuffer."""

    def __init__(self, width: int, height: int) -> None:
        import moderngl

        self.width, self.height = width, height
        self.ctx = moderngl.create_standalone_context(backend="egl")  # type: ignore[arg-type]
        self.renderer = self.ctx.info.get("GL_RENDERER", "unknown")
        self.prog = self.ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        vbo = self.ctx.buffer(_cube().tobytes())
        self.vao = self.ctx.vertex_array(self.prog, [(vbo, "3f 3f", "in_pos", "in_normal")])
        self.fbo = self.ctx.simple_framebuffer((width, height), components=4)
        self.proj = _perspective(math.radians(45), width / height, 0.1, 100.0)

    def render(self, t: float, state: DemoInput, out: Pixels) -> None:
        with state.lock:
            yaw, pitch, color = state.yaw, state.pitch, state.color
        self.fbo.use()
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.clear(0.1, 0.05, 0.05)  # B, G, R: a dark blue
        view = np.eye(4, dtype=np.float32)
        view[2, 3] = -9.0
        model = _rotation(yaw + t * 0.6, pitch)
        self._uniform("model").write(model.T.copy().tobytes())
        self._uniform("mvp").write((self.proj @ view).T.copy().tobytes())
        base = np.array(PALETTE[color], np.float32)
        for i in range(-1, 2):
            for j in range(-1, 2):
                lift = 0.4 * math.sin(t * 2 + i + j * 1.7)
                tint = base * (0.8 + 0.1 * (i + 2))
                self._uniform("offset").value = (i * 1.8, j * 1.8 + lift, 0.0)
                self._uniform("color").value = tuple(float(c) for c in np.clip(tint, 0, 1))
                self.vao.render()
        self.fbo.read_into(out, components=4)

    def _uniform(self, name: str) -> moderngl.Uniform:
        return cast("moderngl.Uniform", self.prog[name])

    def close(self) -> None:
        self.ctx.release()


class NumpyScene:
    """What the demo draws without EGL: moving rings, turned and coloured the same way."""

    renderer = "NumPy (no EGL)"

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        self._x = (x - width / 2) / height
        self._y = (y - height / 2) / height

    def render(self, t: float, state: DemoInput, out: Pixels) -> None:
        with state.lock:
            yaw, pitch, color = state.yaw, state.pitch, state.color
        cx, cy = 0.3 * math.cos(t + yaw), 0.3 * math.sin(t * 0.7 + pitch)
        r = np.hypot(self._x - cx, self._y - cy)
        wave = (0.5 + 0.5 * np.sin(r * 30 - t * 4)).astype(np.float32)
        rgb = np.array(PALETTE[color], np.float32)
        for ch, c in zip((2, 1, 0), rgb, strict=True):
            out[..., ch] = (wave * c * 255).astype(np.uint8)
        out[..., 3] = 255

    def close(self) -> None:
        pass


class DemoSource(TimedSource):
    """The default producer: ``saffron serve`` with no source shows this."""

    name = "demo"

    def __init__(
        self, display: Display, width: int, height: int, fps: int, still: bool = False
    ) -> None:
        super().__init__(display, fps)
        self.width, self.height = width, height
        self.still = still
        """No motion of its own: a new picture only when input changes it."""
        self._drawn = -1
        self.state = DemoInput()
        self.scene: GLScene | NumpyScene | None = None
        display.input = self.state
        display.refresh_hook = self._refresh
        display.scanout(width, height)

    def _refresh(self) -> None:
        self._drawn = -1

    def setup(self) -> None:
        try:
            self.scene = GLScene(self.width, self.height)
            log.info("demo scene renders with OpenGL on %s", self.scene.renderer)
        except Exception as exc:  # no EGL, no Mesa: still show something
            log.warning("OpenGL through EGL is not available (%s); drawing with NumPy", exc)
            self.scene = NumpyScene(self.width, self.height)

    def teardown(self) -> None:
        if self.scene is not None:
            self.scene.close()

    def tick(self, t: float) -> None:
        if self.scene is None or not self.display.wants_frame:
            return
        if self.still:
            if self._drawn == self.state.version:
                return
            self._drawn, t = self.state.version, 0.0
        capture = now_us()
        out = np.empty((self.height, self.width, 4), np.uint8)
        self.scene.render(t, self.state, out)
        self.display.present(out, owned=True, capture_us=capture)
