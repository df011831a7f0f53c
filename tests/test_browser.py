"""The app in a real browser: Debian's Chromium, headless, with a fake webcam that plays a y4m file
of a white square moving across black. Checks what a user would see: frames that follow the
camera, a live FPS readout, the control type switching mid-stream, and a sketch stroke."""

import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "outputs" / "screenshots" / "live.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run installs it)")


def write_y4m(path: Path, side: int = 256, frames: int = 30, fps: int = 10) -> Path:
    """A 4:2:0 y4m clip: a 64 px white square sliding left to right over black (Chromium loops it)."""
    chroma = np.full(2 * (side // 2) ** 2, 128, np.uint8).tobytes()  # U and V planes: grey
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{side} H{side} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            luma = np.zeros((side, side), np.uint8)
            x = (side - 64) * i // (frames - 1)
            luma[96:160, x:x + 64] = 255
            f.write(b"FRAME\n" + luma.tobytes() + chroma)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import app
    from sdxs_core.presets import ASSETS
    from sdxs_core.hub import ModelHub

    outputs = tmp_path_factory.mktemp("browser") / "outputs"  # a fresh clone's outputs/, kept out of the repo
    hub = ModelHub(search_dirs=[outputs, ASSETS], device="cpu", outputs=outputs)
    hub.start(hub.default_model())  # what `python app.py` opens with
    demo = app.build_demo(hub)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options(hub))
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    clip = write_y4m(tmp_path_factory.mktemp("camera") / "square.y4m")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={clip}"])
        context = browser.new_context(permissions=["camera"], viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(server)
        page.wait_for_selector("#t2i-info p")  # the first text-to-image result: the app is up
        yield page
        browser.close()


def readout(page) -> str:
    return page.locator("#live-readout").inner_text()


SIGNATURE = """(selector) => {  // the picture an <img> shows, as 8x8 grey levels (null before the first)
  const img = document.querySelector(selector);
  if (!img || !img.complete || !img.naturalWidth) return null;
  const c = document.createElement("canvas");
  c.width = c.height = 8;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0, 8, 8);
  return Array.from(ctx.getImageData(0, 0, 8, 8).data.filter((_, i) => i % 4 === 1)).join(",");
}"""


def sample(page, seconds: float) -> tuple[list[str], list[str], list[str]]:
    """What the generated image and the control map showed, and the readouts, over ``seconds``."""
    outs, maps, texts = [], [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        outs.append(page.evaluate(SIGNATURE, "#live-out img"))
        maps.append(page.evaluate(SIGNATURE, "#live-control img"))
        texts.append(readout(page))
        time.sleep(0.1)
    return outs, maps, texts


def generated(text: str) -> int:
    return int(re.search(r"(\d+) generated", text).group(1))


def test_live_stream_follows_the_camera_and_reports_fps(page):
    page.get_by_role("tab", name="Live").click()
    page.locator("#live-start").click()
    page.wait_for_function("document.querySelector('#live-readout').innerText.includes('fps')")

    outs, maps, texts = sample(page, 3.0)
    assert len(set(outs) - {None}) >= 3, "the generated frame did not follow the moving square"
    assert len(set(maps) - {None}) >= 3
    assert len(set(texts)) >= 3, "the FPS / latency readout did not update"
    fps = float(re.search(r"([\d.]+) fps", texts[-1]).group(1))
    latency = float(re.search(r"latency (\d+) ms", texts[-1]).group(1))
    assert fps > 0 and latency > 0 and "control canny" in texts[-1]
    assert generated(texts[-1]) > generated(texts[0])

    page.get_by_label("sketch").check()  # switch the extractor while the stream runs
    page.wait_for_function("document.querySelector('#live-readout').innerText.includes('control sketch')")
    before = generated(readout(page))
    # frames already in flight when the type changed may still paint a canny map: let two new ones land first
    page.wait_for_function(f"parseInt(document.querySelector('#live-readout').innerText.match(/(\\d+) generated/)[1]) >= {before + 2}")
    outs_after, maps_after, _ = sample(page, 1.5)
    assert generated(readout(page)) > before + 2, "the stream stopped after switching the control type"
    new_maps = [m for m in maps_after if m is not None and m not in set(maps)]
    assert len(new_maps) >= 0.8 * len(maps_after), "the control map did not change to the sketch extractor"

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    page.locator("#live-start").click()  # Stop: the camera and the stream end
    assert page.locator("#live-start").inner_text() == "Start webcam"
    time.sleep(0.5)
    stopped = generated(readout(page))
    time.sleep(1.0)
    assert generated(readout(page)) == stopped
    assert page.evaluate("document.querySelector('#live-webcam').srcObject") is None


def test_sketch_stroke_regenerates(page):
    """The pad draws at once (no tool to pick), and a stroke's image comes back over the sketch socket."""
    page.get_by_role("tab", name="Sketch").click()
    assert page.locator("#sketch-gen img").get_attribute("src").startswith("data:image/svg+xml")  # placeholder
    box = page.locator("#sketch-canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 80, y - 40)
    page.mouse.down()
    for i in range(20):
        page.mouse.move(x - 80 + 8 * i, y - 40 + 4 * i)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#sketch-readout').innerText.includes('stroke to image')")
    assert page.locator("#sketch-gen img").get_attribute("src").startswith("blob:")
    assert float(page.evaluate("document.querySelector('[data-stroke-ms]').dataset.strokeMs")) > 0


def test_live_pauses_while_its_tab_is_hidden_and_saves_a_frame(page):
    text = "document.querySelector('#live-readout').textContent"
    page.get_by_role("tab", name="Live").click()
    page.locator("#live-start").click()
    page.wait_for_function(f"{text}.includes('fps')")
    assert page.locator("#live-save").is_enabled()
    with page.expect_download() as download:
        page.locator("#live-save").click()
    assert download.value.suggested_filename.startswith("sdxs-live-")
    with page.expect_download(timeout=15000) as clip:
        page.locator("#live-record").click()
        page.wait_for_function("document.querySelector('#live-record').textContent.includes('Stop')")
    assert clip.value.suggested_filename.endswith(".webm")  # after the 5 s the clip downloads by itself
    video = Path(clip.value.path()).read_bytes()
    assert len(video) > 1000 and video[:4] == bytes.fromhex("1a45dfa3")  # a WebM (EBML) file with frames

    page.get_by_role("tab", name="Text to image").click()  # the Live tab hidden: its stream pauses
    page.wait_for_function(f"{text}.includes('Paused')")
    assert page.evaluate("document.querySelector('#live-webcam').srcObject") is not None  # camera kept
    page.get_by_role("tab", name="Live").click()  # and resumes on return
    page.wait_for_function(f"{text}.includes('fps') || {text}.includes('Connected')")
    page.wait_for_function(f"{text}.includes('fps')")
    page.locator("#live-start").click()
