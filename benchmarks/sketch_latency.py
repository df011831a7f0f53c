"""Stroke-to-image latency of the Sketch tab, measured where the user sees it: headless Chromium
draws strokes on the pad of the app as served, and the page reports, for the image shown after
each stroke, the time from the oldest pen move that image includes to the image being decoded.

    python -m benchmarks.sketch_latency                # default model, 15 strokes
"""

import argparse
import json
import socket
import statistics
import time
from pathlib import Path

from benchmarks.browser import CHROMIUM
from benchmarks.results_io import RESULTS, write_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="preset or folder (default: what the app opens with)")
    parser.add_argument("--strokes", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as app.py)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sketch_latency.json")
    args = parser.parse_args(argv)
    if CHROMIUM is None:
        parser.error("needs Debian's chromium (apt-get install -y chromium)")
    import torch
    from playwright.sync_api import sync_playwright

    import app
    from sdxs_core.devices import serving_threads
    from sdxs_core.hub import ModelHub

    torch.set_num_threads(args.threads or serving_threads())
    hub = ModelHub(device="cpu")
    print(hub.start(args.model or hub.default_model()).replace("**", ""))
    demo = app.build_demo(hub)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options(hub))
    latencies, server_ms = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#t2i-info p")
            page.get_by_role("tab", name="Sketch").click()
            box = page.locator("#sketch-canvas").bounding_box()
            for k in range(args.strokes + 2):  # two warm-up strokes: the socket opens, the graphs trace
                x0, y0 = box["x"] + 40 + (k * 23) % 300, box["y"] + 40 + (k * 37) % 300
                page.mouse.move(x0, y0)
                page.mouse.down()
                for i in range(12):
                    page.mouse.move(x0 + 6 * i, y0 + 3 * i * (1 if k % 2 else -1))
                    time.sleep(0.016)  # a 60 Hz pen
                page.mouse.up()
                time.sleep(1.0)  # every answer is in
                ms = page.evaluate("document.querySelector('[data-stroke-ms]')?.dataset.strokeMs")
                text = page.locator("#sketch-readout").inner_text()
                if k >= 2 and ms:
                    latencies.append(float(ms))
                    server_ms.append(float(text.split("server ")[1].split(" ms")[0]))
            browser.close()
    finally:
        demo.close()
    report = {"model": hub.model_key, "strokes": len(latencies),
              "stroke_to_image_ms_median": round(statistics.median(latencies), 1) if latencies else None,
              "stroke_to_image_ms_max": round(max(latencies), 1) if latencies else None,
              "server_ms_median": round(statistics.median(server_ms), 1) if server_ms else None,
              "stroke_to_image_ms": [round(v, 1) for v in latencies],
              "what": "time from the oldest pen move an image includes to that image decoded in the page, "
                      "for the image shown after each stroke"}
    path = write_results(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "stroke_to_image_ms"}))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
