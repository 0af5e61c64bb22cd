// Saffron's viewer page: WebCodecs into a canvas, input back, live statistics,
// and still tiles at full quality drawn over the video where the picture stands still;
// the VM's sound (Opus, WebCodecs AudioDecoder, Web Audio) once the user turns it on.
// The wire format is described in saffron/web/protocol.py.

const CODEC_IDS = ["h264", "vp9", "vp8", "av1", "mjpeg"];
const KIND_VIDEO = 1;
const KIND_TILE = 2;
const KIND_VIDEO_DAMAGE = 3;
const KIND_AUDIO = 4;
const AUDIO_HEADER_SIZE = 16;
const AUDIO_LEAD_S = 0.03;    // a packet plays at least this long after it is decoded: jitter room
const AUDIO_SYNC_MAX_S = 0.5; // sound waits for the picture (same capture clock) up to this long
const AUDIO_DELAY_FALL_S = 0.0002;  // per 10 ms packet: the delay falls by 20 ms a second
const AUDIO_SLACK_S = 0.04;   // schedule drift tolerated before sound is cut or a gap inserted:
                              // a packet that would play this much later than its time is
                              // dropped, so the delay never grows (the server never queues either)
const HEADER_SIZE = 24;
const DAMAGE_SIZE = 8;
const TILE_HEADER_SIZE = 18;
const TILE_TYPES = ["image/png", "image/jpeg"];
const FLAG_KEYFRAME = 1;
const SESSION_ENDED = 4001;  // close code: this page's session ended (saffron/net/websocket.py)

const canvas = document.getElementById("screen");
const ctx2d = canvas.getContext("2d", { alpha: false, desynchronized: true });
const statusEl = document.getElementById("status");
const params = new URLSearchParams(location.search);
const wantSharp = params.get("sharp") !== "0";  // ?sharp=0: video only, no still tiles
const screenIndex = Number(params.get("screen") || "0");  // ?screen=N: the VM's screen N

const stats = {
  framesDecoded: 0, fps: 0, codec: "", width: 0, height: 0,
  latencyMs: 0, bitrateKbps: 0, dropped: 0, backend: "", decodeErrors: 0,
  stillTiles: 0, stillJpeg: 0, sharpTiles: 0,  // still tiles drawn (of them JPEG), sharp now
  videoAt: 0, tileAt: 0,  // performance.now() of the last video frame and still tile drawn
  resizable: "unknown",  // whether the VM's screen can follow this window ("yes", "no")
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
let statusAfter = 0;        // server µs: a frame captured before it must not clear it either

function setStatus(text, after = 0) { statusEl.textContent = text; statusSince += 1; statusAfter = after; }

// A frame shown: it clears the status only if it arrived after it (decoding is
// asynchronous, so a frame received just before "waiting for the VM" finishes after)
// and was captured after it (the VM's last picture, still queued or encoded again for
// a keyframe, is not the VM coming back).
function clearStatusFor(since, capture) { if (since === statusSince && capture > statusAfter) setStatus(""); }

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
      const meta = pending.get(frame.timestamp);
      pending.delete(frame.timestamp);
      drawVideo(frame, meta ? meta.damage : null);
      frame.close();
      if (meta) { frameShown(meta.frame, meta.capture); clearStatusFor(meta.since, meta.capture); }
    },
    error: (e) => {
      stats.decodeErrors += 1;
      sharpUndrawn(null);
      console.warn("decoder error", e);
      decoderKey = "";
    },
  });
  decoder.configure({ codec: codecString(codec, width, height), codedWidth: width, codedHeight: height, optimizeForLatency: true });
}

// -- still tiles --------------------------------------------------------------
// The picture is a grid of tiles (its size comes in "hello"). A tile the server sent
// again at full quality is kept in `sharp.canvas` and drawn over every video frame
// until a video frame sent after it (numbered above its `after`) changes it. Where
// a tile was ever sharp, video is drawn only where its frames changed the picture,
// so a blinking cursor does not blur the text beside it.

const sharp = {
  canvas: document.createElement("canvas"), ctx: null, tw: 128, th: 64,
  w: 0, h: 0, cols: 0, rows: 0, count: 0,
  after: new Float64Array(0),    // per tile: the frame number it is sharp after, or -1
  kept: new Uint8Array(0),       // per tile: it holds sharp pixels outside later damage
  undrawn: [],                   // damage of frames not drawn (null: unknown): drawn next
  damaged: new Float64Array(0),  // per tile: the last frame number whose damage covered it
};
sharp.ctx = sharp.canvas.getContext("2d", { alpha: false });

function sharpReset(width, height) {
  sharp.w = width; sharp.h = height;
  sharp.cols = Math.ceil(width / sharp.tw); sharp.rows = Math.ceil(height / sharp.th);
  sharp.after = new Float64Array(sharp.cols * sharp.rows).fill(-1);
  sharp.damaged = new Float64Array(sharp.cols * sharp.rows).fill(-1);
  sharp.kept = new Uint8Array(sharp.cols * sharp.rows);
  sharp.undrawn = [];
  sharp.count = 0;
  stats.sharpTiles = 0;
  if (width && height) { sharp.canvas.width = width; sharp.canvas.height = height; }
}

// Video frame `frame` changed `damage` ([x, y, w, h]; null: anything): tiles sharp
// from before it are lossy again.
function sharpDamage(frame, damage) {
  let c0 = 0, c1 = sharp.cols, r0 = 0, r1 = sharp.rows;
  if (damage) {
    const [x, y, w, h] = damage;
    if (w <= 0 || h <= 0) return;
    c0 = Math.floor(x / sharp.tw); c1 = Math.min(Math.ceil((x + w) / sharp.tw), sharp.cols);
    r0 = Math.floor(y / sharp.th); r1 = Math.min(Math.ceil((y + h) / sharp.th), sharp.rows);
  }
  for (let r = r0; r < r1; r++) {
    for (let c = c0; c < c1; c++) {
      const i = r * sharp.cols + c;
      if (sharp.damaged[i] < frame) sharp.damaged[i] = frame;
      if (sharp.after[i] >= 0 && sharp.after[i] < frame) { sharp.after[i] = -1; sharp.count -= 1; }
      if (!damage && sharp.after[i] < 0) sharp.kept[i] = 0;
    }
  }
  stats.sharpTiles = sharp.count;
}

// A frame whose damage never reached the canvas (skipped, or its decode failed): the
// next frame drawn draws that area too.
function sharpUndrawn(damage) { sharp.undrawn.push(damage); }

// A decoded video frame onto the canvas: everywhere no tile was ever sharp, and where
// this frame (or one not drawn) changed the picture; then the sharp tiles over it.
function drawVideo(image, damage) {
  stats.videoAt = performance.now();
  const extra = sharp.undrawn;
  sharp.undrawn = [];
  const fits = canvas.width === sharp.w && canvas.height === sharp.h;
  if (!fits || damage === null || extra.includes(null) || !sharp.kept.includes(1)) {
    if (fits && (damage === null || extra.includes(null))) {
      for (let i = 0; i < sharp.kept.length; i++) if (sharp.after[i] < 0) sharp.kept[i] = 0;
    }
    ctx2d.drawImage(image, 0, 0);
    sharpOverlay();
    return;
  }
  ctx2d.save();
  ctx2d.beginPath();
  for (const d of [damage, ...extra]) ctx2d.rect(d[0], d[1], d[2], d[3]);
  for (let r = 0; r < sharp.rows; r++) {
    let c = 0;
    while (c < sharp.cols) {
      if (sharp.kept[r * sharp.cols + c]) { c += 1; continue; }
      const c0 = c;
      while (c < sharp.cols && !sharp.kept[r * sharp.cols + c]) c += 1;
      ctx2d.rect(c0 * sharp.tw, r * sharp.th, (c - c0) * sharp.tw, sharp.th);
    }
  }
  ctx2d.clip();
  ctx2d.drawImage(image, 0, 0);
  ctx2d.restore();
  sharpOverlay();
}

// After a video frame is drawn: the sharp tiles over it again.
function sharpOverlay() {
  if (!sharp.count || canvas.width !== sharp.w || canvas.height !== sharp.h) return;
  ctx2d.save();
  ctx2d.beginPath();
  for (let r = 0; r < sharp.rows; r++) {
    let c = 0;
    while (c < sharp.cols) {
      if (sharp.after[r * sharp.cols + c] < 0) { c += 1; continue; }
      const c0 = c;
      while (c < sharp.cols && sharp.after[r * sharp.cols + c] >= 0) c += 1;
      ctx2d.rect(c0 * sharp.tw, r * sharp.th, (c - c0) * sharp.tw, sharp.th);
    }
  }
  ctx2d.clip();
  ctx2d.drawImage(sharp.canvas, 0, 0);
  ctx2d.restore();
}

async function onTile(buf) {
  const view = new DataView(buf);
  const type = TILE_TYPES[view.getUint8(1)];
  const x = view.getUint16(2, true), y = view.getUint16(4, true);
  const fw = view.getUint16(10, true), fh = view.getUint16(12, true);
  const after = view.getUint32(14, true);
  recent.push({ t: performance.now(), bytes: buf.byteLength, latency: null });
  if (!type || fw !== sharp.w || fh !== sharp.h) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([new Uint8Array(buf, TILE_HEADER_SIZE)], { type }),
      { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (e) { stats.decodeErrors += 1; return; }
  const i = Math.floor(y / sharp.th) * sharp.cols + Math.floor(x / sharp.tw);
  // A new size or stream meanwhile, or a video frame sent after the tile changed it.
  if (fw !== sharp.w || fh !== sharp.h || !(sharp.damaged[i] <= after)) { bitmap.close(); return; }
  sharp.ctx.drawImage(bitmap, x, y);
  if (canvas.width === fw && canvas.height === fh) ctx2d.drawImage(bitmap, x, y);
  bitmap.close();
  if (sharp.after[i] < 0) sharp.count += 1;
  sharp.after[i] = after;
  sharp.kept[i] = 1;
  stats.stillTiles += 1;
  stats.tileAt = performance.now();
  if (type === "image/jpeg") stats.stillJpeg += 1;
  stats.sharpTiles = sharp.count;
}

// -- video --------------------------------------------------------------------

const pending = new Map();   // chunk timestamp -> {frame, capture}
let jpegsReceived = 0;       // MJPEG frames received, and the number of the newest drawn
let jpegsDrawn = 0;

function onBinary(buf) {
  const kind = new DataView(buf).getUint8(0);
  if (kind === KIND_VIDEO || kind === KIND_VIDEO_DAMAGE) onVideo(buf, kind);
  else if (kind === KIND_TILE) onTile(buf);
  else if (kind === KIND_AUDIO) onAudio(buf);
  else console.warn("unknown binary message kind", kind);
}

async function onVideo(buf, kind) {
  const view = new DataView(buf);
  const codec = CODEC_IDS[view.getUint8(1)];
  const key = (view.getUint8(2) & FLAG_KEYFRAME) !== 0;
  const width = view.getUint16(4, true);
  const height = view.getUint16(6, true);
  const frame = view.getUint32(8, true);
  const capture = Number(view.getBigUint64(12, true));
  let damage = null;
  let start = HEADER_SIZE;
  if (kind === KIND_VIDEO_DAMAGE) {
    damage = [0, 2, 4, 6].map((o) => view.getUint16(HEADER_SIZE + o, true));
    start += DAMAGE_SIZE;
  }
  const data = new Uint8Array(buf, start);
  recent.push({ t: performance.now(), bytes: buf.byteLength, latency: null });
  const since = statusSince;
  if (width !== sharp.w || height !== sharp.h) sharpReset(width, height);
  sharpDamage(frame, damage);  // now, in the order sent: a tile sent later may be decoded first

  if (codec === "mjpeg") {
    const order = ++jpegsReceived;
    try {
      const bitmap = await createImageBitmap(new Blob([data], { type: "image/jpeg" }));
      // JPEGs decode side by side: an older (bigger) one may finish after a newer one,
      // and must not paint over it (nor size the canvas back after a resize)
      if (order < jpegsDrawn) { bitmap.close(); sharpUndrawn(damage); frameShown(frame, capture); return; }
      jpegsDrawn = order;
      sizeCanvas(bitmap.width, bitmap.height);
      drawVideo(bitmap, damage);
      bitmap.close();
      clearStatusFor(since, capture);
    } catch (e) { stats.decodeErrors += 1; sharpUndrawn(damage); }
    frameShown(frame, capture);
    return;
  }
  ensureDecoder(codec, width, height);
  if (waitKey && !key) { sharpUndrawn(damage); send({ type: "ack", frame }); return; }
  waitKey = false;
  pending.set(frame, { frame, capture, since, damage });
  try {
    decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: frame, data }));
  } catch (e) {
    stats.decodeErrors += 1;
    pending.delete(frame);
    sharpUndrawn(damage);
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
  document.getElementById("s-sound").textContent = sound.on ? `${Math.round(sound.playMs)} ms` : "–";
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
      if (msg.tile) { [sharp.tw, sharp.th] = msg.tile; }
      sharpReset(0, 0);
      setStatus(msg.enabled ? "Waiting for the first frame…" : "Waiting for the VM…", msg.enabled ? 0 : msg.now);
      send({ type: "start", codec, sharp: wantSharp });
      soundButton.hidden = !msg.audio;
      clip.shared = Boolean(msg.clipboard) && !viewOnly;
      pasteButton.hidden = !clip.shared;
      showScreens(msg.screens || []);
      if (sound.on) send({ type: "audio", on: true });  // a reconnection: still listening
      micButton.hidden = !(msg.mic && micPossible() && !viewOnly);
      if (mic.on) send({ type: "mic", on: true });
      sendViewport();
      break;
    }
    case "pong": onPong(msg); break;
    case "audio": if (msg.playing) sound.next = 0; break;  // a new start: no old schedule
    case "clipboard": guestCopied(msg.text); break;
    case "stats":
      stats.dropped = msg.dropped; stats.backend = msg.backend;
      showResizable(msg.resizable);
      document.getElementById("s-backend").textContent = stats.backend || "–";
      break;
    case "status": setStatus(msg.text, msg.after || 0); break;
    case "resize": break;  // frames carry their size; the decoder follows
    case "cursor": setCursor(msg); break;
    case "error": setStatus(msg.text); break;
    case "switch": {  // the server's encoder for our codec failed: take the next one we can decode
      const codec = await chooseCodec({ codecs: msg.codecs, default: msg.codecs[0] });
      if (!codec) { setStatus("This browser cannot decode any codec the server still offers."); return; }
      stats.codec = codec;
      decoderKey = "";
      sharpReset(0, 0);
      send({ type: "start", codec, sharp: wantSharp });
      break;
    }
    default: console.warn("unknown message", msg.type);
  }
}

function connect() {
  // Relative to the page, so that it works under any path a proxy publishes it at.
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = screenIndex ? `?screen=${screenIndex}` : "";
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onText(ev.data);
    else onBinary(ev.data);
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
    const down = kind === "keydown";
    // Ctrl+V (Cmd+V): this computer's clipboard goes to the VM first, then the keys that
    // paste it there; keys wait in order meanwhile
    if (down && ev.code === "KeyV" && (ev.ctrlKey || ev.metaKey) && clip.shared) {
      clip.keys = clip.keys.then(() => pasteToVm(false));
    }
    clip.keys = clip.keys.then(() => send({ type: "key", code: ev.code, down }));
    ev.preventDefault();
  });
}

// -- clipboard -----------------------------------------------------------------
// Text only, both ways. This computer -> VM: on Ctrl+V in the picture, on the browser's
// paste event, or with the "paste to VM" button (the Async Clipboard API; a browser that
// wants a gesture for it gets one from the button). VM -> this computer: written to the
// clipboard at once where the browser lets the page, else the "copy from VM" button does.
const CLIPBOARD_MAX_BYTES = 1 << 20;  // the server's limit (saffron.display): more is not sent
const pasteButton = document.getElementById("paste");
const copyButton = document.getElementById("copy");
const clip = { shared: false, keys: Promise.resolve(), sent: null, guest: null, received: [], written: [], refused: 0 };
window.saffronClipboard = clip;

function giveVm(text) {
  if (typeof text !== "string" || text === clip.sent || text === clip.guest) return;
  if (new TextEncoder().encode(text).length > CLIPBOARD_MAX_BYTES) {
    setStatus("The clipboard holds more than 1 MiB of text: not given to the VM.", 0);
    return;
  }
  clip.sent = text;
  send({ type: "clipboard", text });
}

async function pasteToVm(fromButton) {
  if (!clip.shared || !navigator.clipboard || !navigator.clipboard.readText) return;
  try {
    giveVm(await navigator.clipboard.readText());
  } catch (err) {
    clip.refused += 1;  // no permission without a gesture: the button asks with one
    if (fromButton) setStatus("The browser did not let the page read the clipboard.", 0);
  }
}

async function guestCopied(text) {
  clip.guest = text;
  clip.sent = null;  // the VM's clipboard holds this now: the same paste as before is news
  clip.received.push(text);
  try {
    await navigator.clipboard.writeText(text);
    clip.written.push(text);
    copyButton.hidden = true;
  } catch (err) {
    copyButton.hidden = false;  // the browser wants a gesture: the button is one
  }
}

pasteButton.addEventListener("click", () => { pasteToVm(true); canvas.focus(); });
copyButton.addEventListener("click", async () => {
  if (clip.guest !== null) {
    try { await navigator.clipboard.writeText(clip.guest); clip.written.push(clip.guest); } catch (err) { /* said by the button staying */ }
  }
  copyButton.hidden = true;
  canvas.focus();
});
document.addEventListener("paste", (ev) => {
  if (!clip.shared || viewOnly) return;
  giveVm(ev.clipboardData ? ev.clipboardData.getData("text/plain") : null);
});

// -- sound ----------------------------------------------------------------------
// Off until the user turns it on (browsers let a page play sound only after a gesture);
// then the server sends Opus packets, decoded by WebCodecs and scheduled back to back
// in an AudioContext, each at its capture time plus the picture's delay, so that sound
// and picture captured together are heard and seen together. Packets that would play
// too late are dropped, not queued.

const soundButton = document.getElementById("sound");
const sound = {
  on: false, ctx: null, decoder: null, next: 0,
  packets: 0, decoded: 0, dropped: 0, lastSeq: -1, lost: 0,
  loudAt: 0, loudCapture: 0,  // performance.now() and capture µs of the first loud packet
  loudHeardAt: 0,             // performance.now() when it comes out of the speakers
  arrivalMs: 0, playMs: 0,    // capture to decoded, and to heard (scheduled + output), smoothed
  delayS: 0,                  // the capture-to-heard delay aimed at: the picture's, smoothed
  tap: null,                  // an array to collect channel 0 in (tests set it)
};
window.saffronAudio = sound;

function soundOn() {
  if (!sound.ctx) sound.ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
  sound.ctx.resume();
  sound.decoder = new AudioDecoder({ output: playAudio, error: () => { sound.dropped += 1; } });
  sound.decoder.configure({ codec: "opus", sampleRate: 48000, numberOfChannels: 2 });
  sound.next = 0;
  sound.on = true;
  send({ type: "audio", on: true });
}

function soundOff() {
  sound.on = false;
  send({ type: "audio", on: false });
  if (sound.decoder && sound.decoder.state !== "closed") sound.decoder.close();
  sound.decoder = null;
  if (sound.ctx) sound.ctx.suspend();
}

soundButton.addEventListener("click", () => {
  if (sound.on) soundOff(); else soundOn();
  soundButton.textContent = sound.on ? "sound on" : "sound off";
  soundButton.classList.toggle("on", sound.on);
  canvas.focus();
});

function onAudio(buf) {
  if (!sound.on || !sound.decoder || sound.decoder.state !== "configured") return;
  const dv = new DataView(buf);
  const seq = dv.getUint32(4, true);
  if (sound.lastSeq >= 0 && seq > sound.lastSeq + 1) sound.lost += seq - sound.lastSeq - 1;
  sound.lastSeq = seq;
  sound.packets += 1;
  const capture = Number(dv.getBigUint64(8, true));
  sound.decoder.decode(new EncodedAudioChunk({
    type: "key", timestamp: capture, data: new Uint8Array(buf, AUDIO_HEADER_SIZE),
  }));
}

function playAudio(data) {
  const ctx = sound.ctx;
  const n = data.numberOfFrames;
  const buffer = ctx.createBuffer(data.numberOfChannels, n, data.sampleRate);
  const plane = new Float32Array(n);
  for (let ch = 0; ch < data.numberOfChannels; ch++) {
    data.copyTo(plane, { planeIndex: ch, format: "f32-planar" });
    buffer.copyToChannel(plane, ch);
    if (ch === 0) {
      if (sound.tap) sound.tap.push(...plane);
      if (!sound.loudAt && plane.some((v) => Math.abs(v) > 0.1)) {
        sound.loudAt = performance.now();
        sound.loudCapture = data.timestamp;
      }
    }
  }
  const arrival = localNow() + clockOffset - data.timestamp / 1000;
  data.close();
  sound.decoded += 1;
  // Heard at capture + the picture's delay (frames captured with it are shown then), but
  // never sooner than the jitter room allows nor later than AUDIO_SYNC_MAX_S.
  const output = ctx.outputLatency || ctx.baseLatency || 0;
  const arrivalS = arrival / 1000;
  // The delay aimed at rises at once (a gap in the sound) and falls slowly (a packet dropped
  // now and then), so a picture whose delay jumps about does not chop the sound up.
  const floor = arrivalS + AUDIO_LEAD_S + output;
  const wanted = Math.max(Math.min(stats.latencyMs / 1000, AUDIO_SYNC_MAX_S), floor);
  if (wanted > sound.delayS) sound.delayS = wanted;
  else sound.delayS = Math.max(wanted, sound.delayS - AUDIO_DELAY_FALL_S);
  const now = ctx.currentTime;
  const due = Math.max(now + sound.delayS - arrivalS - output, now + 0.005);
  if (sound.next > due + AUDIO_SLACK_S) { sound.dropped += 1; return; }  // behind: catch up
  if (sound.next < due - AUDIO_SLACK_S) sound.next = due;  // a gap (or the start): resync
  const play = arrival + (sound.next - now + output) * 1000;
  if (sound.loudAt && !sound.loudHeardAt) sound.loudHeardAt = performance.now() + play - arrival;
  sound.arrivalMs = sound.arrivalMs ? 0.9 * sound.arrivalMs + 0.1 * arrival : arrival;
  sound.playMs = sound.playMs ? 0.9 * sound.playMs + 0.1 * play : play;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  source.start(sound.next);
  sound.next += buffer.duration;
}

// -- the guest follows the window ("resize guest") -----------------------------
// The window's size in device pixels goes to the server once it stopped changing;
// the server debounces too and asks the VM (QEMU's SetUIInfo). Where the VM cannot
// resize, the picture is scaled to the window as always, and the box says so.

const RESIZE_QUIET_MS = 250;   // a window being dragged sends one size, when it stops
const resizeBox = document.getElementById("resize-guest");
const resizeNote = document.getElementById("resize-note");
let resizeTimer = 0;
try { resizeBox.checked = params.get("resize") === "1" || localStorage.getItem("saffron.resizeGuest") === "1"; } catch { /* no storage */ }

function sendViewport() {
  if (!resizeBox.checked || viewOnly) return;
  const dpr = window.devicePixelRatio || 1;
  send({ type: "viewport", width: Math.round(window.innerWidth * dpr), height: Math.round(window.innerHeight * dpr) });
}

function showResizable(value) {
  stats.resizable = value || "unknown";
  resizeNote.textContent = resizeBox.checked && stats.resizable === "no" ? "(the VM cannot: scaled)" : "";
}

window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(sendViewport, RESIZE_QUIET_MS);
});
resizeBox.addEventListener("change", () => {
  try { localStorage.setItem("saffron.resizeGuest", resizeBox.checked ? "1" : "0"); } catch { /* no storage */ }
  showResizable(stats.resizable);
  sendViewport();
  canvas.focus();
});

// -- microphone --------------------------------------------------------------------
// Only where the browser allows getUserMedia (a page served over HTTPS, or from
// localhost) and has WebCodecs' AudioEncoder and MediaStreamTrackProcessor (Chromium):
// the microphone's samples are encoded to Opus (20 ms packets) and sent as binary
// messages (web/protocol.py, kind 5). A packet that finds the socket's buffer full is
// dropped, not queued, so the VM never hears the user later and later.

const MIC_BUFFER_MAX = 32 * 1024;  // bytes waiting in the WebSocket beyond which packets drop
const micButton = document.getElementById("mic");
const mic = {
  on: false, stream: null, reader: null, encoder: null, seq: 0,
  sent: 0, bytes: 0, dropped: 0, errors: 0, error: "",
};
window.saffronMic = mic;

function micPossible() {
  return window.isSecureContext && !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)
    && typeof AudioEncoder !== "undefined" && typeof MediaStreamTrackProcessor !== "undefined";
}

function micPacket(chunk, channels) {
  if (!mic.on || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (ws.bufferedAmount > MIC_BUFFER_MAX) { mic.dropped += 1; return; }
  const out = new Uint8Array(8 + chunk.byteLength);
  const view = new DataView(out.buffer);
  out[0] = 5; out[1] = 0; out[2] = channels; out[3] = 0;
  view.setUint32(4, mic.seq, true);
  mic.seq = (mic.seq + 1) >>> 0;
  chunk.copyTo(out.subarray(8));
  ws.send(out);
  mic.sent += 1;
  mic.bytes += chunk.byteLength;
}

async function micOn() {
  try {
    mic.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    mic.error = String(err);
    setStatus(`The microphone is not available: ${err.message || err}`);
    return false;
  }
  const track = mic.stream.getAudioTracks()[0];
  mic.reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
  mic.on = true;
  send({ type: "mic", on: true });
  (async () => {
    let channels = 0;
    while (mic.on) {
      const { value: data, done } = await mic.reader.read();
      if (done) break;
      if (!mic.encoder) {
        channels = Math.min(data.numberOfChannels, 2);
        mic.encoder = new AudioEncoder({
          output: (chunk) => micPacket(chunk, channels),
          error: (e) => { mic.errors += 1; mic.error = String(e); },
        });
        mic.encoder.configure({
          codec: "opus", sampleRate: data.sampleRate, numberOfChannels: channels,
          bitrate: 32000, opus: { frameDuration: 20000 },
        });
      }
      if (data.numberOfChannels === channels && mic.encoder.state === "configured") mic.encoder.encode(data);
      data.close();
    }
  })().catch((e) => { mic.errors += 1; mic.error = String(e); });
  return true;
}

function micOff() {
  mic.on = false;
  send({ type: "mic", on: false });
  if (mic.reader) mic.reader.cancel().catch(() => {});
  if (mic.stream) mic.stream.getTracks().forEach((t) => t.stop());
  if (mic.encoder && mic.encoder.state !== "closed") mic.encoder.close();
  mic.stream = mic.reader = mic.encoder = null;
}

micButton.addEventListener("click", async () => {
  if (mic.on) micOff(); else await micOn();
  micButton.textContent = mic.on ? "mic on" : "mic off";
  micButton.classList.toggle("on", mic.on);
  canvas.focus();
});

// -- several screens -------------------------------------------------------------
// A VM with several screens (QEMU's consoles): the page shows one, ?screen=N; the
// list picks another, and "side by side" opens the others in windows beside this one.

const screensBox = document.getElementById("screens");
const screenPick = document.getElementById("screen-pick");

function screenUrl(index) {
  const p = new URLSearchParams(location.search);
  if (index) p.set("screen", String(index)); else p.delete("screen");
  const query = p.toString();
  return location.pathname + (query ? "?" + query : "");
}

function showScreens(screens) {
  screensBox.hidden = screens.length < 2;
  screenPick.replaceChildren(...screens.map((s, i) => {
    const size = s.width ? ` (${s.width}×${s.height})` : "";
    return new Option(`screen ${i + 1}${size}`, String(i), false, i === screenIndex);
  }));
}

screenPick.addEventListener("change", () => { location.href = screenUrl(Number(screenPick.value)); });
document.getElementById("side-by-side").addEventListener("click", () => {
  let left = window.screenX + window.outerWidth;
  for (let i = 0; i < screenPick.options.length; i++) {
    if (i === screenIndex) continue;
    const features = `popup,left=${left},top=${window.screenY},width=${window.outerWidth},height=${window.outerHeight}`;
    window.open(screenUrl(i), `saffron-screen-${i}`, features);
    left += window.outerWidth;
  }
});

document.getElementById("stats-toggle").addEventListener("click", () => {
  document.getElementById("stats").classList.toggle("hidden");
});

connect();
canvas.focus();
