"""Headless Chromium driving the app's Live tab, for the live-loop benchmark (and its smoke test).

- ``write_y4m`` writes the fake webcam clip: a white square stepping over a grid on black, one
  grid cell per frame, so every frame differs (none is skipped as static) and the square's
  position names the frame within the loop;
- ``launch_app`` serves the app in-process on a free port;
- ``live_page`` opens Chromium with that clip as its webcam, the Live tab shown and ``PROBE``
  injected, and starts the stream;
- ``PROBE`` (JavaScript) timestamps, with the page's ``performance.now()``:
  * each frame the page sends (the live client, ``sdxs_core/live_client.js``, draws the video into a
    canvas and calls ``canvas.toBlob(cb, "image/jpeg")`` once per frame it sends: that call is wrapped), with the
    square's position in it;
  * each new ``src`` of the generated image and of the control map (a MutationObserver), and when
    that picture has been decoded (``img.decode()``), with the square's position in the control
    map (a Canny map of the input frame: the square's outline).

Positions are the centre of the bright pixels in the centre square of a picture (sent frames read
at ``PROBE_SIDE`` px, control maps at up to 512 px), in units of 1/``PROBE_SIDE`` of its side; grid cells are 2 units apart, so
a position matches one frame of the loop to within 1 unit (Canny outline vs filled square, JPEG).
"""

import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream"]
PROBE_SIDE = 64  # position units per picture side
GRID_STEP = 16  # px between grid cells in a 512 px frame: 2 units of position


def square_positions(frames: int, side: int = 512) -> list[tuple[int, int]]:
    """Top-left corner of the square in each frame: a row-by-row snake over a grid, every cell
    used at most once (raises when the clip has more frames than the grid has cells)."""
    square, step = side // 8, GRID_STEP * side // 512
    cols = (side - square) // step + 1
    rows = -(-frames // cols)
    if rows > cols:
        raise ValueError(f"{frames} frames do not fit a {cols}x{cols} grid: shorten the clip")
    top = (side - square - step * (rows - 1)) // 2
    out = []
    for i in range(frames):
        row, col = divmod(i, cols)
        col = col if row % 2 == 0 else cols - 1 - col
        out.append((col * step, top + row * step))
    return out


def write_y4m(path: Path, side: int = 512, frames: int = 300, fps: int = 30) -> Path:
    """A 4:2:0 y4m clip of ``frames`` frames (Chromium plays it at ``fps`` and loops it)."""
    square = side // 8
    chroma = np.full(2 * (side // 2) ** 2, 128, np.uint8).tobytes()  # U and V planes: grey
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{side} H{side} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for x, y in square_positions(frames, side):
            luma = np.zeros((side, side), np.uint8)
            luma[y:y + square, x:x + square] = 255
            f.write(b"FRAME\n" + luma.tobytes() + chroma)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launch_app(hub):
    """The app over ``hub``, served in this process; yields its URL."""
    import app

    demo = app.build_demo(hub)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options(hub))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


PROBE = """(side) => {
  const P = window.__probe = {captures: [], outputs: [], controls: []};
  const small = document.createElement("canvas");
  const ctx = small.getContext("2d", {willReadFrequently: true});
  // centre of the bright pixels in the picture's centre square, in units of 1/side of its width,
  // or null, read at up to `most` px (a filled square survives a downscale to `side` px; a 1 px
  // Canny line of a large control map would fade: maps are read at up to 512 px).
  const locate = (source, w, h, most) => {
    const s = Math.min(w, h), n = Math.min(s, most);
    if (!s) return null;
    small.width = small.height = n;
    ctx.drawImage(source, (w - s) / 2, (h - s) / 2, s, s, 0, 0, n, n);
    const d = ctx.getImageData(0, 0, n, n).data;
    let x0 = n, y0 = n, x1 = -1, y1 = -1;
    for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) {
      if (d[(y * n + x) * 4 + 1] > 128) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
    return x1 < 0 ? null : [(x0 + x1) / 2 * side / n, (y0 + y1) / 2 * side / n];
  };
  // the live client encodes each frame it sends with canvas.toBlob(callback, "image/jpeg")
  const toBlob = HTMLCanvasElement.prototype.toBlob;
  HTMLCanvasElement.prototype.toBlob = function (...args) {
    if (this !== small && args[1] === "image/jpeg") {
      const t = performance.now();
      P.captures.push({t, pos: locate(this, this.width, this.height, side)});
    }
    return toBlob.apply(this, args);
  };
  const last = {};
  const check = () => {
    const t = performance.now();
    for (const [key, selector] of [["outputs", "#live-out img"], ["controls", "#live-control img"]]) {
      const img = document.querySelector(selector);
      const src = img && img.getAttribute("src");
      if (!src || src === last[key]) continue;
      last[key] = src;
      const rec = {t, shown: null, pos: null};
      P[key].push(rec);
      // resolves once this src is decoded; rejects when a newer src replaced it first
      img.decode().then(() => {
        rec.shown = performance.now();
        if (key === "controls" && img.getAttribute("src") === src)
          rec.pos = locate(img, img.naturalWidth, img.naturalHeight, 512);
      }).catch(() => {});
    }
  };
  new MutationObserver(check).observe(document.body,
    {subtree: true, childList: true, attributes: true, attributeFilter: ["src"]});
}"""


@contextmanager
def live_page(url: str, clip: Path, control_type: str = "canny", timeout_s: float = 60):
    """Chromium on the app's Live tab with ``clip`` as the webcam, ``PROBE`` installed and the
    stream started (the first frames may still be on their way); yields the Playwright page."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        raise RuntimeError("Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={Path(clip).resolve()}"])
        try:
            context = browser.new_context(permissions=["camera"], viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1e3)
            page.goto(url)  # never wait for "networkidle": Gradio pages keep a connection open
            page.wait_for_selector("#t2i-info p")  # the page's first text-to-image result: the app is up
            page.get_by_role("tab", name="Live").click()
            if control_type != "canny":
                page.get_by_label(control_type).check()
            page.evaluate(PROBE, PROBE_SIDE)
            page.locator("#live-start").click()
            yield page
        finally:
            browser.close()
