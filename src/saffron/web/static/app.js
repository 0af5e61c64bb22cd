// Saffron's viewer page: WebCodecs into a canvas, input back, live statistics.
// The wire format is described in saffron/web/protocol.py.

const CODEC_IDS = ["h264", "vp9", "vp8", "av1", "mjpeg"];
const HEADER_SIZE = 24;
const FLAG_KEYFRAME = 1;
const SESSION_ENDED = 4001;  // close code: this page's session ended (saffron/net/websocket.py)

const canvas = document.getElementById("screen");
const ctx2d = canvas.getContext("2d", { alpha: false, desynchronized: true });
const statusEl = document.getElementById("status");
const params = new URLSearchParams(location.search);

const stats = {
  framesDecoded: 0, fps: 0, codec: "", width: 0, height: 0,
  latencyMs: 0, bitrateKbps: 0, dropped: 0, backend: "", decodeErrors: 0,
};
window.saffronStats = stats;

let ws = null;
let decoder = null;
let decoderKey = "";
let waitKey = true;
let clockOffset = 0;       // server ms - local ms
let bestRtt = Infinity;
let viewOnly = false;
const recent = [];         // {t, bytes, latency} over the last second

let statusSince = 0;        // bumped by each status: a frame received before it must not clear it

function setStatus(text) { statusEl.textContent = text; statusSince += 1; }

// A frame shown: it clears the status only if it arrived after it (decoding is
// asynchronous, so a frame received just before "waiting for the VM" finishes after).
function clearStatusFor(since) { if (since === statusSince) setStatus(""); }

function codecString(codec, width, height) {
  const px = width * height;
  switch (codec) {
    case "h264": return px <= 921600 ? "avc1.42E01F" : px <= 2228224 ? "avc1.42E028" : "avc1.42E033";
    case "vp8": return "vp8";
    case "vp9": return "vp09.00.10.08";
    case "av1": return px <= 2359296 ? "av01.0.08M.08" : "av01.0.12M.08";
    default: return codec;
  }
}

async function supported(codec) {
  if (codec === "mjpeg") return typeof createImageBitmap === "function";
  if (typeof VideoDecoder === "undefined") return false;
  try {
    const r = await VideoDecoder.isConfigSupported({ codec: codecString(codec, 1280, 720), codedWidth: 1280, codedHeight: 720 });
    return r.supported === true;
  } catch { return false; }
}

async function chooseCodec(hello) {
  const asked = params.get("codec");
  const wanted = asked && hello.codecs.includes(asked) ? asked : hello.default;
  const order = [wanted, ...hello.codecs.filter((c) => c !== wanted)];
  for (const codec of order) {
    if (hello.codecs.includes(codec) && await supported(codec)) return codec;
  }
  return null;
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function localNow() { return performance.timeOrigin + performance.now(); }

function frameShown(frameNo, captureUs) {
  const latency = localNow() + clockOffset - captureUs / 1000;
  stats.framesDecoded += 1;
  recent.push({ t: performance.now(), bytes: 0, latency });
  send({ type: "ack", frame: frameNo });
}

function sizeCanvas(width, height) {
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  stats.width = width;
  stats.height = height;
  fitCanvas();
}

function fitCanvas() {
  const scale = Math.min(window.innerWidth / canvas.width, window.innerHeight / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
}
window.addEventListener("resize", fitCanvas);

function ensureDecoder(codec, width, height) {
  const key = `${codec}:${width}x${height}`;
  if (decoder && decoderKey === key && decoder.state === "configured") return;
  if (decoder && decoder.state !== "closed") decoder.close();
  decoderKey = key;
  waitKey = true;
  decoder = new VideoDecoder({
    output: (frame) => {
      sizeCanvas(frame.displayWidth, frame.displayHeight);
      ctx2d.drawImage(frame, 0, 0);
      const meta = pending.get(frame.timestamp);
      pending.delete(frame.timestamp);
      frame.close();
      if (meta) { frameShown(meta.frame, meta.capture); clearStatusFor(meta.since); }
    },
    error: (e) => {
      stats.decodeErrors += 1;
      console.warn("decoder error", e);
      decoderKey = "";
    },
  });
  decoder.configure({ codec: codecString(codec, width, height), codedWidth: width, codedHeight: height, optimizeForLatency: true });
}

const pending = new Map();   // chunk timestamp -> {frame, capture}

async function onVideo(buf) {
  const view = new DataView(buf);
  const codec = CODEC_IDS[view.getUint8(1)];
  const key = (view.getUint8(2) & FLAG_KEYFRAME) !== 0;
  const width = view.getUint16(4, true);
  const height = view.getUint16(6, true);
  const frame = view.getUint32(8, true);
  const capture = Number(view.getBigUint64(12, true));
  const data = new Uint8Array(buf, HEADER_SIZE);
  recent.push({ t: performance.now(), bytes: buf.byteLength, latency: null });
  const since = statusSince;

  if (codec === "mjpeg") {
    try {
      const bitmap = await createImageBitmap(new Blob([data], { type: "image/jpeg" }));
      sizeCanvas(bitmap.width, bitmap.height);
      ctx2d.drawImage(bitmap, 0, 0);
      bitmap.close();
      clearStatusFor(since);
    } catch (e) { stats.decodeErrors += 1; }
    frameShown(frame, capture);
    return;
  }
  ensureDecoder(codec, width, height);
  if (waitKey && !key) { send({ type: "ack", frame }); return; }
  waitKey = false;
  pending.set(frame, { frame, capture, since });
  try {
    decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: frame, data }));
  } catch (e) {
    stats.decodeErrors += 1;
    pending.delete(frame);
    send({ type: "ack", frame });
    decoderKey = "";
  }
}

function updateStats() {
  const now = performance.now();
  while (recent.length && now - recent[0].t > 1000) recent.shift();
  let bytes = 0; let frames = 0; const lat = [];
  for (const r of recent) {
    bytes += r.bytes;
    if (r.latency !== null) { frames += 1; lat.push(r.latency); }
  }
  lat.sort((a, b) => a - b);
  stats.fps = frames;
  stats.bitrateKbps = Math.round(bytes * 8 / 1000);
  if (lat.length) stats.latencyMs = Math.round(lat[Math.floor(lat.length / 2)]);
  document.getElementById("s-codec").textContent = stats.codec || "–";
  document.getElementById("s-size").textContent = stats.width ? `${stats.width}×${stats.height}` : "–";
  document.getElementById("s-fps").textContent = stats.fps;
  document.getElementById("s-bitrate").textContent = `${(stats.bitrateKbps / 1000).toFixed(2)} Mbit/s`;
  document.getElementById("s-latency").textContent = `${stats.latencyMs} ms`;
  document.getElementById("s-dropped").textContent = stats.dropped;
  document.getElementById("s-backend").textContent = stats.backend || "–";
  send({ type: "stats", fps: stats.fps, latencyMs: stats.latencyMs, bitrateKbps: stats.bitrateKbps, framesDecoded: stats.framesDecoded });
}
setInterval(updateStats, 1000);

function ping() { send({ type: "ping", t0: localNow() }); }

function onPong(msg) {
  const t1 = localNow();
  const rtt = t1 - msg.t0;
  if (rtt <= bestRtt * 1.5) {
    bestRtt = Math.min(bestRtt, rtt);
    clockOffset = msg.server - (msg.t0 + t1) / 2;
  }
}

function setCursor(msg) {
  if (msg.hidden) { canvas.style.cursor = "none"; return; }
  const c = document.createElement("canvas");
  c.width = msg.width; c.height = msg.height;
  const img = c.getContext("2d").createImageData(msg.width, msg.height);
  const bgra = Uint8Array.from(atob(msg.bgra), (ch) => ch.charCodeAt(0));
  for (let i = 0; i < bgra.length; i += 4) {
    img.data[i] = bgra[i + 2]; img.data[i + 1] = bgra[i + 1];
    img.data[i + 2] = bgra[i]; img.data[i + 3] = bgra[i + 3];
  }
  c.getContext("2d").putImageData(img, 0, 0);
  canvas.style.cursor = `url(${c.toDataURL()}) ${msg.hotX} ${msg.hotY}, default`;
}

async function onText(text) {
  const msg = JSON.parse(text);
  switch (msg.type) {
    case "hello": {
      document.title = `${msg.name} · Saffron`;
      viewOnly = msg.viewOnly;
      if (msg.width) sizeCanvas(msg.width, msg.height);
      const codec = await chooseCodec(msg);
      if (!codec) { setStatus("This browser cannot decode any codec the server offers."); return; }
      stats.codec = codec;
      setStatus(msg.enabled ? "Waiting for the first frame…" : "Waiting for the VM…");
      send({ type: "start", codec });
      break;
    }
    case "pong": onPong(msg); break;
    case "stats": stats.dropped = msg.dropped; stats.backend = msg.backend; break;
    case "status": setStatus(msg.text); break;
    case "resize": break;  // frames carry their size; the decoder follows
    case "cursor": setCursor(msg); break;
    case "error": setStatus(msg.text); break;
    case "switch": {  // the server's encoder for our codec failed: take the next one we can decode
      const codec = await chooseCodec({ codecs: msg.codecs, default: msg.codecs[0] });
      if (!codec) { setStatus("This browser cannot decode any codec the server still offers."); return; }
      stats.codec = codec;
      decoderKey = "";
      send({ type: "start", codec });
      break;
    }
    default: console.warn("unknown message", msg.type);
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${scheme}//${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onText(ev.data);
    else onVideo(ev.data);
  };
  ws.onopen = () => { ping(); };
  ws.onclose = (ev) => {
    if (ev.code === SESSION_ENDED) { location.reload(); return; }  // back to the login form
    setStatus(ev.reason ? `Disconnected: ${ev.reason}; reconnecting…` : "Disconnected; reconnecting…");
    decoderKey = "";
    setTimeout(connect, 1000);
  };
}
setInterval(ping, 2000);

// -- input --------------------------------------------------------------------

function position(ev) {
  const r = canvas.getBoundingClientRect();
  return {
    x: Math.round((ev.clientX - r.left) * canvas.width / r.width),
    y: Math.round((ev.clientY - r.top) * canvas.height / r.height),
  };
}
const BUTTONS = { 0: 1, 1: 2, 2: 3, 3: 6, 4: 7 };   // DOM button -> SPICE numbering

canvas.addEventListener("pointermove", (ev) => {
  if (viewOnly) return;
  for (const e of ev.getCoalescedEvents ? ev.getCoalescedEvents().slice(-1) : [ev]) {
    send({ type: "pointer", ...position(e) });
  }
});
canvas.addEventListener("pointerdown", (ev) => {
  canvas.focus();
  if (viewOnly) return;
  canvas.setPointerCapture(ev.pointerId);
  send({ type: "pointer", ...position(ev) });
  send({ type: "button", button: BUTTONS[ev.button] ?? 1, down: true });
  ev.preventDefault();
});
canvas.addEventListener("pointerup", (ev) => {
  if (viewOnly) return;
  send({ type: "pointer", ...position(ev) });
  send({ type: "button", button: BUTTONS[ev.button] ?? 1, down: false });
});
canvas.addEventListener("wheel", (ev) => {
  if (!viewOnly) send({ type: "wheel", dy: ev.deltaY });
  ev.preventDefault();
}, { passive: false });
canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
for (const kind of ["keydown", "keyup"]) {
  canvas.addEventListener(kind, (ev) => {
    if (viewOnly) return;
    if (ev.repeat && kind === "keydown") { /* the guest repeats keys itself */ }
    send({ type: "key", code: ev.code, down: kind === "keydown" });
    ev.preventDefault();
  });
}

document.getElementById("stats-toggle").addEventListener("click", () => {
  document.getElementById("stats").classList.toggle("hidden");
});

connect();
canvas.focus();
