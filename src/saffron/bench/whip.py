"""WHIP through a real media server: Janus (Debian's ``janus``) behind simple-whip-server,
watched by Chromium through Janus's own JavaScript (``libjs-janus-gateway``).

- :func:`contained`: a network namespace of its own (:mod:`saffron.bench.netns`) with
  the calling thread inside: everything below runs in one. ICE stacks leave loopback
  out (aioice, libnice, Chromium), so the WebRTC media would otherwise go over the
  host's own address; in the namespace the peers meet on its interface ``d0``
  (:data:`ADDRESS`), and nothing leaves it.
- :class:`JanusWhip` starts Janus (VideoRoom and WebSockets only, on free loopback
  ports, ICE on ``d0`` only, config in a temporary folder) and simple-whip-server in
  front of it, and creates one WHIP endpoint with a token; it stops what it started.
- :class:`ViewerPage` serves a small page that subscribes to the room with janus.js
  and, for every video frame Chromium presents, reads the pattern source's capture
  stamp from the picture (top rows) and keeps its age.
- :func:`bench`: inside :func:`contained`, Saffron (a subprocess, pattern source) with
  the WHIP publish off and on: its CPU (one extra viewer's cost), and the frame age
  through Janus beside that of Saffron's own page in the same Chromium on the same run
  (the page's ``saffron_web_latency_ms``: capture to acknowledged decode). Medians of
  the runs.

``python -m saffron.bench.whip [--seconds S] [--runs N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import http.server
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..table import print_table
from . import netns
from .chromium import CHROMIUM, CHROMIUM_ARGS
from .process import SaffronProcess, cpu_seconds, free_port, saffron_command, start_saffron

JANUS = "/usr/bin/janus"
JANUS_LIBS = Path("/usr/lib/x86_64-linux-gnu/janus")
JANUS_JS = Path("/usr/share/javascript/janus-gateway/janus.js")
ROOT = Path(__file__).resolve().parents[3]
WHIP_SERVER_DIRS = (
    Path("/usr/share/simple-whip-server"),
    ROOT / ".cache" / "simple-whip-server",  # scripts/setup-whip-server.sh's fallback
)
NODE_PATHS = ("/usr/share/nodejs", "/usr/lib/nodejs")
ROOM = 1234
TOKEN = "saffron-test-token"
ROOM_BITRATE = 6_000_000
"""The VideoRoom's cap for publishers, which Janus sends them as REMB (bit/s)."""
START_S = 30.0
NETNS_PREFIX = "saffron-whip"
ADDRESS = "10.203.0.1/24"
"""The namespace's interface ``d0``: where Janus, Saffron and Chromium meet over ICE."""
ICE_INTERFACE = "d0"


def whip_server_dir() -> Path | None:
    """Where simple-whip-server's JavaScript is (Debian's package or the setup's copy)."""
    for d in WHIP_SERVER_DIRS:
        if (d / "src" / "server.js").is_file():
            return d
    return None


def missing() -> str | None:
    """What is missing to run Janus with simple-whip-server here, in words; None: nothing."""
    if not Path(JANUS).is_file():
        return "Debian's janus is not installed (scripts/apt-packages.txt)"
    if not JANUS_JS.is_file():
        return "libjs-janus-gateway is not installed (scripts/apt-packages.txt)"
    if whip_server_dir() is None:
        return "simple-whip-server is not installed (scripts/setup-whip-server.sh)"
    if shutil.which("node") is None:
        return "Node.js is not installed"
    return None


@dataclasses.dataclass(frozen=True)
class Namespace:
    name: str
    address: str


@contextlib.contextmanager
def contained() -> Iterator[Namespace]:
    """A fresh network namespace with lo and ``d0`` (:data:`ADDRESS`), the calling thread
    inside it for the block (the processes and threads it starts stay there); deleted
    afterwards, also on failure. Needs root."""
    with netns.namespace(NETNS_PREFIX, address=ADDRESS) as name, netns.entered(name):
        yield Namespace(name, ADDRESS.split("/")[0])


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _janus_config(folder: Path, ws_port: int) -> Path:
    """A configuration folder for Janus: the VideoRoom and the WebSockets API only."""
    plugins = sorted(p.name for p in (JANUS_LIBS / "plugins").glob("*.so"))
    transports = sorted(p.name for p in (JANUS_LIBS / "transports").glob("*.so"))
    events = sorted(p.name for p in (JANUS_LIBS / "events").glob("*.so"))
    loggers = sorted(p.name for p in (JANUS_LIBS / "loggers").glob("*.so"))
    off = ",".join
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{JANUS_LIBS / "plugins"}"
    transports_folder = "{JANUS_LIBS / "transports"}"
    events_folder = "{JANUS_LIBS / "events"}"
    loggers_folder = "{JANUS_LIBS / "loggers"}"
    debug_level = 4
    log_to_stdout = true
    admin_secret = "{os.urandom(8).hex()}"
}}
media: {{
    rtp_port_range = "20000-40000"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{ICE_INTERFACE}"
}}
plugins: {{ disable = "{off(p for p in plugins if "videoroom" not in p)}" }}
transports: {{ disable = "{off(p for p in transports if "websockets" not in p)}" }}
events: {{ disable = "{off(events)}" }}
loggers: {{ disable = "{off(loggers)}" }}
"""
    )
    (folder / "janus.transport.websockets.jcfg").write_text(
        f"""general: {{
    json = "plain"
    ws = true
    ws_port = {ws_port}
    ws_interface = "lo"
    wss = false
}}
admin: {{ admin_ws = false }}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        f"""general: {{ }}
room-{ROOM}: {{
    description = "Saffron"
    publishers = 3
    bitrate = {ROOM_BITRATE}
    fir_freq = 10
    videocodec = "h264,vp8"
    audiocodec = "opus"
}}
"""
    )
    return folder / "janus.jcfg"


class JanusWhip:
    """Janus and simple-whip-server on loopback, one WHIP endpoint; a context manager.
    Started inside :func:`contained`: its ICE candidates are on ``d0`` only."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ws_port = free_port()
        self.whip_port = free_port()
        self.endpoint = "saffron"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def janus_ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def whip_url(self) -> str:
        return f"http://127.0.0.1:{self.whip_port}/whip/endpoint/{self.endpoint}"

    def __enter__(self) -> JanusWhip:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)
        self._procs.append(proc)
        return proc

    def _start(self) -> None:
        why = missing()
        if why is not None:
            raise RuntimeError(why)
        cfg = self.folder / "janus"
        cfg.mkdir(parents=True, exist_ok=True)
        config = _janus_config(cfg, self.ws_port)
        janus_log = self.folder / "janus.log"
        janus = self._spawn([JANUS, "-C", str(config), "-F", str(cfg), "-N"], janus_log)
        _wait_ws(self.ws_port, START_S, janus, janus_log)
        # simple-whip-server reads ./config.js beside its server.js: a copy of its two
        # files with our config (ports) runs from a folder of ours.
        app = whip_server_dir()
        assert app is not None
        src = self.folder / "whip" / "src"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(app / "src" / "whip-janus.js", src / "whip-janus.js")
        server_js = (app / "src" / "server.js").read_text()  # it listens on every address:
        server_js = server_js.replace(
            "http.listen(config.port,", "http.listen(config.port, '127.0.0.1',"
        )
        (src / "server.js").write_text(server_js)
        (src / "config.js").write_text(
            "module.exports = {\n"
            f"  janus: {{ address: '{self.janus_ws}' }},\n"
            f"  port: {self.whip_port},\n"
            "  rest: '/whip',\n"
            "  allowTrickle: true,\n"
            "  strictETags: false,\n"
            "  iceServers: []\n"
            "};\n"
        )
        env = dict(os.environ)
        env["NODE_PATH"] = ":".join([str(app / "node_modules"), *NODE_PATHS])
        env["DEBUG"] = "whip:*,-whip:debug"
        whip_log = self.folder / "whip.log"
        whip = self._spawn(["node", str(src / "server.js")], whip_log, cwd=str(src.parent), env=env)
        _wait_http(f"http://127.0.0.1:{self.whip_port}/whip/healthcheck", START_S, whip, whip_log)
        body = json.dumps({"id": self.endpoint, "room": ROOM, "token": TOKEN}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.whip_port}/whip/create",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def logs(self, full: bool = False) -> str:
        """Janus's and simple-whip-server's output: their last lines, or all of it."""
        keep = None if full else -3000
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[keep:]}"
            for p in (self.folder / "janus.log", self.folder / "whip.log")
            if p.is_file()
        )

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()


def _wait_ws(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Janus's WebSockets port answers HTTP with an error page: that is enough."""
    end = time.monotonic() + timeout
    import socket

    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"janus exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"janus did not listen on {port} within {timeout:.0f} s")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Saffron through Janus</title>
<style>body{margin:0;background:#222} video{display:block}</style>
<script src="janus.js"></script></head>
<body><video id="v" autoplay muted playsinline></video>
<canvas id="c" style="display:none"></canvas>
<script>
const SERVER = "%(server)s", ROOM = %(room)d;
const st = window.whip = {state: "init", frames: 0, presented: 0, ages: [], stamps: 0,
                          width: 0, height: 0, errors: [], blank: null, pairs: []};
let subscriber = null;
async function icePairs() {  // the candidate pairs in use: [local, remote] addresses
  const pc = subscriber && subscriber.webrtcStuff && subscriber.webrtcStuff.pc;
  if (!pc) return [];
  const stats = await pc.getStats(), pairs = [];
  stats.forEach(r => {
    if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
      const l = stats.get(r.localCandidateId), rm = stats.get(r.remoteCandidateId);
      pairs.push([l.address || l.ip, rm.address || rm.ip]);
    }
  });
  return pairs;
}
const video = document.getElementById("v"), canvas = document.getElementById("c");
const ctx = canvas.getContext("2d", {willReadFrequently: true});
function stamp(w) {
  // saffron.sources.pattern: 64 cells across rows 0-15, white = 1, most significant first
  const row = ctx.getImageData(0, 0, w, 16).data;
  let v = 0n;
  for (let i = 0; i < 64; i++) {
    const x = Math.floor(((2 * i + 1) * w) / 128);
    let sum = 0;
    for (let y = 4; y < 12; y++) { const o = (y * w + x) * 4; sum += row[o] + row[o+1] + row[o+2]; }
    v = (v << 1n) | (sum / 24 > 127 ? 1n : 0n);
  }
  return v;
}
function onFrame(now, meta) {
  st.frames++; st.presented = meta.presentedFrames; st.width = meta.width; st.height = meta.height;
  if (canvas.width !== meta.width || canvas.height !== meta.height) {
    canvas.width = meta.width; canvas.height = meta.height;
  }
  ctx.drawImage(video, 0, 0, meta.width, meta.height);
  const s = stamp(meta.width);
  const ageMs = Number(BigInt(Math.round(Date.now() * 1000)) - s) / 1000;
  if (ageMs > -1000 && ageMs < 60000) { st.stamps++; st.ages.push(ageMs); }
  if (st.frames %% 30 === 1) {
    const px = ctx.getImageData(0, 16, meta.width, meta.height - 16).data;
    let min = 255, max = 0;
    for (let i = 0; i < px.length; i += 4 * 97) {
      const g = px[i+1]; if (g < min) min = g; if (g > max) max = g;
    }
    st.blank = max - min < 16;
  }
  video.requestVideoFrameCallback(onFrame);
}
video.requestVideoFrameCallback(onFrame);
const adapter = {browserDetails: {browser: "chrome", version: 120}};
Janus.init({debug: false, dependencies: Janus.useDefaultDependencies({adapter}), callback: () => {
  const janus = new Janus({server: SERVER, error: e => st.errors.push("janus: " + e),
                          success: () => {
    st.state = "connected";
    janus.attach({plugin: "janus.plugin.videoroom", error: e => st.errors.push("" + e),
      success: lister => {
        const look = () => lister.send({message: {request: "listparticipants", room: ROOM},
          success: r => {
            const pubs = (r.participants || []).filter(p => p.publisher);
            if (!pubs.length) { setTimeout(look, 300); return; }
            subscribe(janus, pubs[0].id);
          }});
        look();
      }});
  }});
}});
function subscribe(janus, feed) {
  st.state = "subscribing";
  let handle = null;
  janus.attach({plugin: "janus.plugin.videoroom", error: e => st.errors.push("" + e),
    success: h => { handle = h; subscriber = h;
      h.send({message: {request: "join", ptype: "subscriber", room: ROOM, streams: [{feed}]}}); },
    onmessage: (msg, jsep) => {
      if (msg.error) st.errors.push(msg.error);
      if (jsep) handle.createAnswer({jsep, tracks: [{type: "data"}],
        success: ans => handle.send({message: {request: "start", room: ROOM}, jsep: ans}),
        error: e => st.errors.push("answer: " + e)});
    },
    onremotetrack: (track, mid, on) => {
      if (on && track.kind === "video") {
        st.state = "watching";
        video.srcObject = new MediaStream([track]);
        video.play().catch(e => { if (e.name !== "AbortError") st.errors.push("play: " + e); });
      }
    }});
}
</script></body></html>
"""


class ViewerPage:
    """The subscriber page and janus.js, served on a loopback port; a context manager."""

    def __init__(self, folder: Path, janus_ws: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(PAGE % {"server": janus_ws, "room": ROOM})
        shutil.copy(JANUS_JS, folder / "janus.js")
        handler = functools.partial(_Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/index.html"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ViewerPage:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def page_state(page: Any) -> dict[str, Any]:
    """The page's counters (``window.whip``) without the ages list."""
    state: dict[str, Any] = page.evaluate(
        "() => Object.assign({}, window.whip, {ages: undefined, nAges: window.whip.ages.length})"
    )
    return state


def ice_pairs(page: Any) -> list[list[str]]:
    """The ICE candidate pairs the page's connection to Janus uses: [ours, Janus's]."""
    pairs: list[list[str]] = page.evaluate("() => icePairs()")
    return pairs


def take_ages(page: Any) -> list[float]:
    """The frame ages (ms) the page measured since the last call."""
    ages: list[float] = page.evaluate("() => window.whip.ages.splice(0)")
    return ages


def wait_watching(page: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Until the page has presented a frame with a stamp; its state."""
    end = time.monotonic() + timeout
    state = page_state(page)
    while time.monotonic() < end:
        state = page_state(page)
        if state["stamps"] > 0:
            return state
        time.sleep(0.2)
    raise RuntimeError(f"no stamped frame through Janus within {timeout:.0f} s: {state}")


# -- the bench ------------------------------------------------------------------


def _cpu(p: SaffronProcess, seconds: float) -> float:
    cpu0, t0 = cpu_seconds(p.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0)


def _run_once(
    tmp: Path, janus: JanusWhip, browser: Any, seconds: float, fps: int, size: str
) -> dict[str, Any]:
    """One run: Saffron with one page watching, CPU without then with the WHIP publish,
    and the ages through Janus and on the page meanwhile."""
    row: dict[str, Any] = {}
    for publish in (False, True):
        port = free_port()
        args = ["serve", "--source", "pattern", "--codec", "h264", "--fps", str(fps)]
        args += ["--size", size, "--web", f"127.0.0.1:{port}"]
        if publish:
            args += ["--publish-whip", janus.whip_url, "--whip-token", TOKEN]
        log = tmp / f"saffron-{'on' if publish else 'off'}.log"
        with start_saffron(saffron_command(*args), log, web_port=port) as p:
            own = browser.new_page()
            own.goto(p.url)
            time.sleep(3)  # the page's codec and rate settle
            if not publish:
                row["cpu_off"] = _cpu(p, seconds)
                own.close()
                continue
            with ViewerPage(tmp / "page", janus.janus_ws) as vp:
                page = browser.new_page()
                page.goto(vp.url)
                wait_watching(page)
                time.sleep(2)
                take_ages(page)
                f0 = page_state(page)["frames"]
                own_ages: list[float] = []
                t0 = time.monotonic()
                cpu0 = cpu_seconds(p.pid)
                while time.monotonic() - t0 < seconds:
                    time.sleep(0.5)
                    own_ages.append(p.metric("saffron_web_latency_ms"))
                span = time.monotonic() - t0
                row["cpu_on"] = (cpu_seconds(p.pid) - cpu0) / span
                ages = take_ages(page)
                row["janus_fps"] = (page_state(page)["frames"] - f0) / span
                row["age_janus_ms"] = statistics.median(ages) if ages else None
                row["age_own_ms"] = statistics.median(own_ages) if own_ages else None
                page.close()
            own.close()
    return row


def bench(
    seconds: float = 10.0, runs: int = 3, fps: int = 30, size: str = "1280x720"
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="saffron-whip-bench-") as tmpdir,
        contained(),
        JanusWhip(Path(tmpdir)) as janus,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                rows.append(_run_once(Path(tmpdir), janus, browser, seconds, fps, size))
        finally:
            browser.close()

    def med(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(vals), 3) if vals else None

    summary = {k: med(k) for k in ("cpu_off", "cpu_on", "janus_fps", "age_janus_ms", "age_own_ms")}
    return {"fps": fps, "size": size, "seconds": seconds, "runs": rows, "median": summary}


def print_results(result: dict[str, Any]) -> None:
    m = result["median"]
    extra = None
    if m["cpu_on"] is not None and m["cpu_off"] is not None:
        extra = round(m["cpu_on"] - m["cpu_off"], 3)
    print_table(
        [
            {
                "saffron_cpu_off": m["cpu_off"],
                "saffron_cpu_on": m["cpu_on"],
                "whip_viewer_cpu": extra,
                "fps_through_janus": m["janus_fps"],
                "age_janus_ms": m["age_janus_ms"],
                "age_own_page_ms": m["age_own_ms"],
            }
        ],
        f"WHIP to Janus: h264 {result['size']} at {result['fps']} fps, pattern source, "
        f"one page on Saffron; CPU in cores; medians of {len(result['runs'])} runs",
    )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m saffron.bench.whip", description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    why = missing() or netns.missing()
    if why is not None:
        raise SystemExit(f"cannot run the WHIP bench: {why}")
    result = bench(a.seconds, a.runs, a.fps, a.size)
    print_results(result)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
