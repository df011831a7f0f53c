// The Live tab's browser half (the wire format is in sdxs_core/live_socket.py). Run by Gradio as
// gr.HTML(js_on_load=...), with `element` the component's root.
//
// webcam -> canvas at the model's size (mirrored like the preview) -> JPEG -> WebSocket; the reply
// carries the generated frame and the control map. At most `max_in_flight` frames are unanswered:
// a camera frame that finds the pipe full is not queued, the next reply sends the newest one.
// FPS and latency are measured here, where frames are shown: latency runs from grabbing a camera
// frame to the generated frame made from it being decoded in the page.
//
// While the page is hidden (another browser tab) or the Live tab is not shown (another tab of the
// app) the stream pauses: its socket is closed, so its live slot and the server's time go to other
// users and tabs, and it reconnects when shown again. The server also releases a socket that sends
// nothing for a while (code 4000); a shown, started page then simply reconnects.
const $ = (selector) => element.querySelector(selector);
const video = $("#live-webcam"), outImg = $("#live-out img"), controlImg = $("#live-control img");
const button = $("#live-start"), mirror = $("#live-mirror"), readout = $("#live-readout");
const saveButton = $("#live-save"), recordButton = $("#live-record");
const grab = document.createElement("canvas"), grabCtx = grab.getContext("2d");
const encoder = new TextEncoder(), decoder = new TextDecoder();
const WINDOW_MS = 2000, RETRY_MS = 3000, READOUT_EVERY_MS = 250;

// The Gradio controls beside this component, read for every frame: a change applies to the next one.
const field = (id, selector) => document.querySelector(`#${id} ${selector}`);
const settings = () => ({
  prompt: (field("live-prompt", "textarea") || field("live-prompt", "input") || {value: ""}).value,
  control_type: (field("live-control-type", "input:checked") || {value: "canny"}).value,
  strength: Number((field("live-strength", "input[type=number]") || {value: 0.8}).value),
  seed: Math.max(0, Math.floor(Number((field("live-seed", "input") || {value: 0}).value) || 0)),
});

let ws = null, camera = null, wanted = false, retryTimer = null, hello = null, shownNow = true;
let nextId = 0, waiting = false, lastReadout = 0;
let cameraFrame = 0, sentFrame = -1;  // the newest camera frame, and the last one sent: never send one twice
const sent = new Map();  // frame id -> performance.now() when grabbed
const shown = [];  // [performance.now() when decoded, latency ms or null] over the last WINDOW_MS
let last = null, problem = "";  // the newest frame header; the newest error from the server

const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function render(force = false) {
  const now = performance.now();
  if (!force && now - lastReadout < READOUT_EVERY_MS) return;
  lastReadout = now;
  if (!last) {
    readout.innerHTML = problem ? `⚠️ ${esc(problem)}` : readout.innerHTML;
    return;
  }
  const n = shown.length;
  const fps = n > 1 ? (n - 1) * 1000 / (shown[n - 1][0] - shown[0][0]) : 0;
  const sorted = shown.map(([, ms]) => ms).filter((ms) => ms !== null).sort((a, b) => a - b);
  const p50 = sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  const s = last.stages_ms, st = last.stats;
  const stages = ["extract", "text", "control", "unet", "decode"].map((k) => `${k} ${s[k + "_ms"].toFixed(0)}`).join(" · ");
  const server = last.reused ? "static frame, last output reused" : `server ${s.total_ms.toFixed(0)} ms: ${stages} ms`;
  readout.innerHTML =
    `<b>${fps.toFixed(1)} fps</b> · latency ${p50.toFixed(0)} ms (camera to screen, median of ${sorted.length}) · ` +
    `control <b>${esc(last.control_type)}</b> · ${server}<br>` +
    `${st.generated} generated · ${st.reused} static reused · ${st.superseded} superseded` +
    (last.notice ? `<br>⚠️ ${esc(last.notice)}` : "") + (problem ? `<br>⚠️ ${esc(problem)}` : "");
}

function show(img, bytes) {
  const old = img.src;
  img.src = URL.createObjectURL(new Blob([bytes], {type: "image/jpeg"}));
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  if (img === outImg) {
    saveButton.disabled = recordButton.disabled = false;
    if (recording) img.decode().then(() => recording && recording.ctx.drawImage(img, 0, 0, CLIP_SIDE, CLIP_SIDE), () => {});
  }
}

// A short clip of the generated frames: each frame is drawn onto a canvas whose stream a
// MediaRecorder encodes (WebM), downloaded when CLIP_MS have passed or the button is pressed again.
const CLIP_MS = 5000, CLIP_SIDE = 512;
let recording = null;

function record() {
  if (recording) { recording.recorder.stop(); return; }
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = CLIP_SIDE;
  const ctx = canvas.getContext("2d");
  if (outImg.src.startsWith("blob:")) ctx.drawImage(outImg, 0, 0, CLIP_SIDE, CLIP_SIDE);
  const recorder = new MediaRecorder(canvas.captureStream(30), {mimeType: "video/webm"});
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    clearTimeout(recording.timer);
    recording = null;
    recordButton.textContent = "Record 5 s";
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob(chunks, {type: "video/webm"}));
    a.download = `sdxs-live-${new Date().toISOString().replace(/[:.]/g, "-")}.webm`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  };
  recording = {recorder, ctx, timer: setTimeout(() => recorder.stop(), CLIP_MS)};
  recorder.start(250);
  recordButton.textContent = "Stop recording";
}

function saveFrame() {
  // the generated frame on screen, as the JPEG the server sent
  if (!outImg.src.startsWith("blob:")) return;
  const a = document.createElement("a");
  a.href = outImg.src;
  a.download = `sdxs-live-${new Date().toISOString().replace(/[:.]/g, "-")}.jpg`;
  a.click();
}

function sendFrame() {
  if (!ws || ws.readyState !== WebSocket.OPEN || !hello || !hello.size || video.readyState < 2) return;
  if (cameraFrame === sentFrame) return;
  if (sent.size >= hello.max_in_flight) { waiting = true; return; }
  waiting = false;
  sentFrame = cameraFrame;
  const size = hello.size, vw = video.videoWidth, vh = video.videoHeight, side = Math.min(vw, vh);
  grab.width = grab.height = size;
  if (mirror.checked) grabCtx.setTransform(-1, 0, 0, 1, size, 0);
  grabCtx.drawImage(video, (vw - side) / 2, (vh - side) / 2, side, side, 0, 0, size, size);
  const id = nextId++;
  sent.set(id, performance.now());
  grab.toBlob((blob) => {
    if (!blob || !ws || ws.readyState !== WebSocket.OPEN) { sent.delete(id); return; }
    const head = encoder.encode(JSON.stringify({id, ...settings()}));
    const n = new Uint8Array(4);
    new DataView(n.buffer).setUint32(0, head.length, true);
    ws.send(new Blob([n, head, blob]));
  }, "image/jpeg", 0.9);
}

function answered(id) {
  sent.delete(id);
  if (waiting) sendFrame();  // a camera frame found the pipe full: send the newest one now
}

function onMessage(event) {
  if (typeof event.data === "string") {
    const m = JSON.parse(event.data);
    if (m.type === "hello") {
      hello = m;
      problem = m.size ? "" : "no model is loaded: pick one in the Models tab";
      readout.innerHTML = `Connected to ${esc(m.model)} + ${esc(m.controlnet || "no ControlNet")}: waiting for the first frame…`;
      sendFrame();
    } else if (m.type === "error") {
      problem = m.message;
      render(true);
      answered(m.id);
    } else if (m.type === "dropped") {
      answered(m.id);
    }
    return;
  }
  const buffer = event.data, n = new DataView(buffer).getUint32(0, true);
  const head = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, n)));
  const grabbed = sent.get(head.id);
  if (!head.reused) {
    show(outImg, new Uint8Array(buffer, 4 + n, head.image_bytes));
    show(controlImg, new Uint8Array(buffer, 4 + n + head.image_bytes, head.control_bytes));
  }
  last = head;
  problem = "";
  if (hello) hello.size = head.size;  // a model switched in the Models tab: send at its size from now on
  const done = () => {
    const now = performance.now();
    shown.push([now, grabbed === undefined ? null : now - grabbed]);  // undefined: sent before a reconnect
    while (now - shown[0][0] > WINDOW_MS) shown.shift();
    render();
  };
  if (head.reused) done(); else outImg.decode().then(done, () => {});  // rejected: a newer frame replaced it
  answered(head.id);
}

function connect() {
  retryTimer = null;
  const url = new URL("sdxs/live", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = ws = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null; hello = null; sent.clear();
    if (!wanted) return;
    if (!shownNow) return;  // paused: reconnects when shown again
    const why = [1013, 1008, 4000].includes(event.code) ? event.reason : "the connection to the server was lost";
    readout.innerHTML = `⏳ ${esc(why)} (retrying in ${RETRY_MS / 1000} s)`;
    if (event.code !== 1008) retryTimer = setTimeout(connect, RETRY_MS);
  };
}

function onCameraFrame(now, metadata) {
  if (!camera) return;
  cameraFrame = metadata.presentedFrames;
  sendFrame();
  video.requestVideoFrameCallback(onCameraFrame);
}

async function start() {
  wanted = true;
  button.textContent = "Stop";
  readout.innerHTML = "Opening the webcam…";
  try {
    camera = await navigator.mediaDevices.getUserMedia({audio: false,
      video: {width: {ideal: 512}, height: {ideal: 512}}});
  } catch (e) {
    stop();
    readout.innerHTML = `⚠️ Could not open the webcam (${esc(e.message || e.name || e)}). ` +
      "Browsers only offer webcams to pages served over HTTPS or from localhost: start the app with " +
      "--ssl-certfile/--ssl-keyfile to film from another machine.";
    return;
  }
  video.srcObject = camera;
  await video.play().catch(() => {});
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(onCameraFrame);
  else camera.timer = setInterval(() => { cameraFrame = video.currentTime; sendFrame(); }, 33);
  if (shownNow) connect(); else pause();
}

function stop() {
  wanted = false;
  button.textContent = "Start webcam";
  if (retryTimer) clearTimeout(retryTimer);
  if (ws) { const socket = ws; ws = null; socket.close(); }
  if (camera) { clearInterval(camera.timer); camera.getTracks().forEach((t) => t.stop()); camera = null; }
  video.srcObject = null;
  hello = null; sent.clear(); waiting = false;
}

function pause() {
  if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  if (ws) { const socket = ws; ws = null; socket.close(1000, "paused"); }
  hello = null; sent.clear(); waiting = false;
  readout.innerHTML = "⏸ Paused while the Live tab is hidden: it resumes when you come back.";
}

function visibilityChanged() {
  const now = document.visibilityState === "visible" && element.offsetParent !== null;
  if (now === shownNow) return;
  shownNow = now;
  if (!wanted) return;
  if (!now) pause();
  else if (!ws && !retryTimer) { readout.innerHTML = "Resuming…"; connect(); }
}

button.addEventListener("click", () => (wanted ? stop() : start()));
saveButton.addEventListener("click", saveFrame);
recordButton.addEventListener("click", record);
document.addEventListener("visibilitychange", visibilityChanged);
// Gradio hides an unselected tab's content (display: none): an observer sees it leave and come back
new IntersectionObserver(visibilityChanged).observe(element);
const mirrorPreview = () => video.classList.toggle("mirrored", mirror.checked);
mirror.addEventListener("change", mirrorPreview);
mirrorPreview();
