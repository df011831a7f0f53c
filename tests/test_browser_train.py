"""The Train tab in a real browser (Debian's Chromium, headless): start a job from the form, watch its
progress and validation grid arrive, find the result in the model pickers and apply it with Use now."""

import re
import socket
import time
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

SCREENSHOT = Path(__file__).resolve().parent.parent / "outputs" / "screenshots" / "train.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir, tiny_lora_file, presets):
    import app
    from sdxs_core.hub import ModelHub
    from trainers.jobs.manager import JobManager

    root = tmp_path_factory.mktemp("browser-train")
    outputs = root / "outputs"
    (outputs / "style").mkdir(parents=True)
    (outputs / "style" / "pytorch_lora_weights.safetensors").write_bytes(tiny_lora_file.read_bytes())
    manager = JobManager(root / "jobs", threads=1, nice=0, presets=presets)
    hub = ModelHub(search_dirs=[outputs], device="cpu", outputs=outputs, extra=manager.artefacts)
    hub.start(str(tiny_dir))
    demo = app.build_demo(hub, app.TrainJobs(manager, hub, None))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options(hub))
    yield f"http://127.0.0.1:{port}/", hub
    demo.close()


def test_a_job_started_in_the_train_tab_shows_progress_samples_and_is_used_at_once(server):
    from playwright.sync_api import sync_playwright

    url, hub = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#t2i-info p")
        page.get_by_role("tab", name="Train").click()
        assert "style" in page.locator("#train-lora-pick input").input_value()  # the teacher LoRA, preselected
        page.locator("#train-lora-name").get_by_role("textbox").fill("browser style")
        page.locator("#train-lora-start").click()  # preset "slow": 40 steps, samples every 10
        status = page.locator("#train-status")
        page.wait_for_function("() => /step \\d+ \\/ 40/.test(document.querySelector('#train-status').innerText)")
        mid = status.inner_text()
        assert "browser style" in mid and "running" in mid and "images/s" in mid
        assert 0 < float(page.locator("#train-progress progress").get_attribute("value")) <= 1
        page.wait_for_function("() => { const i = document.querySelector('#train-sample img');"
                               " return i && i.complete && i.naturalWidth > 0; }")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('finished')",
                               timeout=180_000)
        assert "Use now" in status.inner_text()
        page.wait_for_selector("#train-download", state="visible")  # the LoRA file, to download
        assert page.locator("#train-losses canvas, #train-losses svg").count() > 0  # a real plot, drawn
        page.get_by_role("tab", name="Models").click()
        page.wait_for_function("() => /jobs\\/0001-browser-style/.test(document.body.innerText)")  # catalogue, no restart
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-use-now").click()
        page.wait_for_function("() => /LoRA\\s+jobs\\/0001-browser-style/.test(document.querySelector('#banner').innerText)")
        assert re.match(r"jobs/0001-browser-style/", hub.lora_key or "")
        browser.close()
    hub.set_lora(None)
