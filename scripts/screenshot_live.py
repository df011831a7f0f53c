"""Screenshot of the Live tab for the README: the app on the bundled default, headless Debian Chromium,
a fake webcam playing miniature-world scenes (so the canny map and the generated frame show shapes).

    .venv/bin/python scripts/screenshot_live.py [--out docs/images/live-tab.png] [--seconds 8]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def world_clip(path: Path, side: int = 512, scenes: int = 3, hold_s: int = 3, fps: int = 30) -> Path:
    """A 4:2:0 y4m clip of world scenes in grey levels, denoised and contrast stretched so that canny finds
    their outlines; each is held ``hold_s`` seconds, swaying a few pixels so that no frame is skipped as static."""
    import cv2

    from trainers.miniature.world import render_batch

    images = render_batch(seed=3, n=scenes, split="eval")["images"]
    frames = scenes * hold_s * fps
    chroma = np.full(2 * (side // 2) ** 2, 128, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{side} H{side} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            grey = cv2.medianBlur(cv2.cvtColor(np.asarray(images[i // (hold_s * fps)]), cv2.COLOR_RGB2GRAY), 5)
            big = cv2.resize(cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX), (side, side),
                             interpolation=cv2.INTER_LINEAR)
            f.write(b"FRAME\n" + np.roll(big, round(12 * np.sin(i / fps * np.pi)), axis=1).tobytes() + chroma)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/live-tab.png"))
    parser.add_argument("--seconds", type=float, default=8.0, help="stream this long before the screenshot")
    args = parser.parse_args(argv)

    from benchmarks.browser import launch_app, live_page
    from sdxs_core.presets import ASSETS
    from sdxs_core.hub import ModelHub

    with tempfile.TemporaryDirectory() as tmp:
        hub = ModelHub(search_dirs=[Path(tmp) / "outputs", ASSETS], device="cpu", outputs=Path(tmp) / "outputs")
        hub.start(hub.default_model())
        clip = world_clip(Path(tmp) / "camera.y4m")
        with launch_app(hub) as url, live_page(url, clip) as page:
            page.wait_for_function("document.querySelector('#live-out img').naturalWidth > 0")
            time.sleep(args.seconds)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.locator("#live-view").screenshot(path=str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
