// The Sketch tab's browser half: a drawing canvas whose strokes are sent over the live WebSocket
// (sdxs_core/live_socket.py, wire format there) at the model's own size, as the control map itself
// (control type "none"): no whole-canvas upload through Gradio's queue, so a stroke shows its image
// after about the server's own time. Run by gr.HTML(js_on_load=...), with `element` its root.
//
// The pen is always on and the canvas is drawn 1:1 (no tool to pick, no zoom). Strokes are black on
// white on screen; what is sent is inverted (white on black: what sketch ControlNets expect). At most
// one frame is in flight: moves while it generates mark the drawing dirty, and the newest drawing
// goes out when the answer arrives, so the image follows the pen without a backlog.
const $ = (selector) => element.querySelector(selector);
const pad = $("#sketch-canvas"), outImg = $("#sketch-gen img"), readout = $("#sketch-readout");
const busy = $("#sketch-busy"), ctx = pad.getContext("2d");
const small = document.createElement("canvas"), smallCtx = small.getContext("2d");
const encoder = new TextEncoder(), decoder = new TextDecoder();
const field = (id, selector) => document.querySelector(`#${id} ${selector}`);
const settings = () => ({
  prompt: (field("sketch-prompt", "textarea") || field("sketch-prompt", "input") || {value: ""}).value,
  control_type: "none",
  strength: Number((field("sketch-strength", "input[type=number]") || {value: 0.8}).value),
  seed: Math.max(0, Math.floor(Number((field("sketch-seed", "input") || {value: 0}).value) || 0)),
});

let ws = null, hello = null, inFlight = null, dirty = false, drawing = false, last = null, nextId = 0, ink = false;
let dirtySince = 0;  // performance.now() of the oldest pen move not sent yet
const strokeTimes = new Map();  // frame id -> performance.now() of the pen move it carries

function clear() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ink = false;
}

function connect() {
  const url = new URL("sdxs/sketch", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = ws = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null; hello = null; inFlight = null; busy.textContent = "";
    if (event.code === 1013) readout.textContent = `⏳ ${event.reason}`;
    if (dirty) setTimeout(send, 1000);  // busy server: try again; an idle close just reconnects on the next stroke
  };
}

function changed() {
  if (!dirty) { dirty = true; dirtySince = performance.now(); }
  send();
}

function send() {
  if (!dirty || !ink) return;
  if (!ws) { connect(); return; }  // the hello sends the drawing
  if (!hello || inFlight !== null || ws.readyState !== WebSocket.OPEN) return;
  dirty = false;
  const size = hello.size, id = nextId++;
  small.width = small.height = size;
  smallCtx.filter = "invert(1)";
  smallCtx.drawImage(pad, 0, 0, size, size);
  inFlight = id;
  strokeTimes.set(id, dirtySince);
  busy.textContent = "⏳ generating…";
  small.toBlob((blob) => {
    if (!blob || !ws || ws.readyState !== WebSocket.OPEN) { inFlight = null; return; }
    const head = encoder.encode(JSON.stringify({id, ...settings()}));
    const n = new Uint8Array(4);
    new DataView(n.buffer).setUint32(0, head.length, true);
    ws.send(new Blob([n, head, blob]));
  }, "image/png");
}

function answered() {
  inFlight = null;
  busy.textContent = "";
  if (dirty) send();
}

function onMessage(event) {
  if (typeof event.data === "string") {
    const m = JSON.parse(event.data);
    if (m.type === "hello") {
      hello = m;
      if (!m.size) readout.textContent = "⚠️ no model is loaded: pick one in the Models tab";
      send();
    } else if (m.type === "error" || m.type === "dropped") {
      if (m.type === "error") readout.textContent = `⚠️ ${m.message}`;
      answered();
    }
    return;
  }
  const buffer = event.data, n = new DataView(buffer).getUint32(0, true);
  const head = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, n)));
  const strokeAt = strokeTimes.get(head.id);
  strokeTimes.delete(head.id);
  if (hello) hello.size = head.size;
  if (!head.reused) {
    const old = outImg.src;
    outImg.src = URL.createObjectURL(new Blob([new Uint8Array(buffer, 4 + n, head.image_bytes)], {type: "image/jpeg"}));
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  }
  const s = head.stages_ms;
  const shown = () => {
    const ms = strokeAt === undefined ? null : performance.now() - strokeAt;
    element.dataset.strokeMs = ms === null ? "" : ms.toFixed(1);
    readout.innerHTML = `<b>${ms === null ? "?" : ms.toFixed(0)} ms</b> stroke to image · server ${s.total_ms.toFixed(0)} ms: ` +
      `control ${s.control_ms.toFixed(0)} · U-Net ${s.unet_ms.toFixed(0)} · decode ${s.decode_ms.toFixed(0)} ms`;
  };
  if (head.reused) shown(); else outImg.decode().then(shown, () => {});
  answered();
}

function point(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  last = point(event);
  ctx.fillStyle = "#000";
  ctx.beginPath(); ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI); ctx.fill();
  ink = true;
  changed();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const p = point(event);
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
  last = p;
  changed();
});
const penUp = () => { drawing = false; };
pad.addEventListener("pointerup", penUp);
pad.addEventListener("pointercancel", penUp);
$("#sketch-clear").addEventListener("click", () => { clear(); outImg.src = outImg.dataset.placeholder; readout.textContent = "Draw on the pad: every stroke regenerates."; });
ctx.lineWidth = 12; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#000";
clear();
