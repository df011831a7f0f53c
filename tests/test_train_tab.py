"""The Train tab as a remote client drives it (gradio_client, named API endpoints): jobs from a LoRA,
from uploaded images and from a data-root folder, progress, cancel / resume, and Use now, with a
remote client kept to what it uploaded and the folders the server offers."""

import socket
import time
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dir, tiny_lora_file, presets):
    import app
    from sdxs_core.hub import ModelHub
    from trainers.jobs.manager import JobManager

    root = tmp_path_factory.mktemp("train-tab")
    outputs = root / "outputs"
    outputs.mkdir()
    (outputs / "style").mkdir()
    (outputs / "style" / "pytorch_lora_weights.safetensors").write_bytes(tiny_lora_file.read_bytes())
    data = root / "data"
    for name in ("flowers", "nested/cats"):
        (data / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (20, 20), (30 * i, 90, 40)).save(data / name / f"{i}.png")
    (root / "secret").mkdir()
    manager = JobManager(root / "jobs", threads=1, nice=0, presets=presets)
    hub = ModelHub(search_dirs=[outputs], device="cpu", outputs=outputs, extra=manager.artefacts)
    hub.start(str(tiny_dir))
    jobs = app.TrainJobs(manager, hub, data)
    demo = app.build_demo(hub, jobs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options(hub))
    from gradio_client import Client

    yield Client(f"http://127.0.0.1:{port}/", verbose=False), manager, hub, root
    demo.close()


LORA_FORM = dict(source="a LoRA of the multi-step base", pick="outputs/style/pytorch_lora_weights.safetensors",
                 upload=None, files=[], folder=None, trig="", captions="preset", template="", name="api job",
                 preset="tiny", overrides="", procs=1)


def train_lora(client, **changes):
    form = {**LORA_FORM, **changes}
    return client.predict(*form.values(), api_name="/train_lora")


def job_state(client, job_id) -> dict:
    return client.predict(job_id, api_name="/train_job")


def wait_state(client, job_id, states, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = job_state(client, job_id)
        if view["job"]["state"] in states:
            return view
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {states}: {view}")


def test_a_job_from_a_lora_trains_in_the_background_and_use_now_applies_it(served):
    client, manager, hub, _ = served
    info, job_id = train_lora(client)
    assert f"Job **#{job_id} api job** running" in info
    listed = client.predict(api_name="/train_jobs")
    assert [j["id"] for j in listed] == [job_id] and listed[0]["name"] == "api job"
    view = wait_state(client, job_id, ("finished", "failed"))
    assert view["job"]["state"] == "finished" and view["stages"] == ["lora_ssd"] and view["samples"] >= 1
    assert view["progress"]["job_share"] == 1.0 and view["metrics"][-1]["step"] == 6
    banner = client.predict(job_id, api_name="/train_use")[0]
    assert f"LoRA **{view['result']}/pytorch_lora_weights.safetensors**" in banner
    assert hub.lora_key == f"{view['result']}/pytorch_lora_weights.safetensors"
    hub.set_lora(None)


def test_bad_forms_are_refused_with_the_field_named_and_nothing_queued(served):
    client, manager, _, root = served
    before = len(manager.jobs())
    info, job_id = train_lora(client, overrides="lora_ssd: {lr: -1}")
    assert "Not started" in info and "lora_ssd: lr=-1.0 must be > 0" in info and job_id is None
    info, _ = train_lora(client, overrides="lora_ssd: [not a mapping")
    assert "Advanced options" in info
    info, _ = train_lora(client, source="style images", files=[], folder=None)
    assert "upload at least 8 style images or pick a folder" in info
    with pytest.raises(Exception):  # a path instead of an offered folder: Gradio refuses a value not in the list
        train_lora(client, source="style images", folder=str(root / "secret"))
    assert len(manager.jobs()) == before


def test_images_come_from_uploads_or_offered_data_folders_only(served, tmp_path):
    from gradio_client import handle_file

    from trainers.jobs.inputs import data_folders

    client, manager, _, root = served
    assert data_folders(root / "data") == ["flowers", "nested/cats"]
    info, job_id = train_lora(client, source="style images", folder="nested/cats", trig="sks", procs=1,
                              overrides="lora_teacher: {max_steps: 2}\nlora_ssd: {max_steps: 2}")
    assert "running" in info or "queued" in info
    plan = manager.view(job_id).plan
    assert [s["name"] for s in plan["stages"]] == ["lora_teacher", "lora_ssd"]
    assert plan["stages"][0]["config"]["images"] == str((root / "data" / "nested" / "cats").resolve())
    files = []
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(tmp_path / f"up{i}.png")
        files.append(handle_file(str(tmp_path / f"up{i}.png")))
    (tmp_path / "up0.txt").write_text("a red thing")
    files.append(handle_file(str(tmp_path / "up0.txt")))
    info, upload_job = train_lora(client, source="style images", files=files, overrides="lora_teacher: {max_steps: 2}\n"
                                  "lora_ssd: {max_steps: 2}")
    folder = manager.view(upload_job).plan["stages"][0]["config"]["images"]
    assert folder.startswith(str(manager.root / "uploads")) and (Path(folder) / "up0.txt").read_text() == "a red thing"
    for j in (job_id, upload_job):
        assert wait_state(client, j, ("finished", "failed"), timeout=240)["job"]["state"] == "finished"


def test_cancel_and_resume_from_the_api(served):
    client, manager, _, _ = served
    _, job_id = train_lora(client, preset="slow", name="to cancel")
    wait_state(client, job_id, ("running",))
    deadline = time.time() + 120
    while (job_state(client, job_id)["progress"] or {}).get("step", 0) < 2 and time.time() < deadline:
        time.sleep(0.3)
    assert "stopping after its next step" in client.predict(job_id, api_name="/train_cancel")
    assert wait_state(client, job_id, ("cancelled", "finished"))["job"]["state"] == "cancelled"
    assert "queued" in client.predict(job_id, api_name="/train_resume") or \
        job_state(client, job_id)["job"]["state"] == "running"
    assert wait_state(client, job_id, ("finished", "failed"), timeout=240)["job"]["state"] == "finished"
    assert "only a queued or running job" in client.predict(job_id, api_name="/train_cancel")


def test_a_remote_client_cannot_start_stop_or_apply_jobs(served):
    """Training holds the machine for everyone: only the operator (localhost or --auth) runs jobs."""
    from gradio_client import Client

    client, manager, hub, _ = served
    remote = Client(client.src, verbose=False, headers={"X-Forwarded-For": "203.0.113.9"})
    before = [j.id for j in manager.jobs()]
    info, job_id = train_lora(remote)
    assert "Only the person running the app may start a training job" in info and job_id is None
    import app

    form = ("canny", app.CN_DATA[0], [], None, app.TEACHER_CN_DEFAULT, "x", "tiny", "", 1)
    info, job_id = remote.predict(*form, api_name="/train_controlnet")
    assert "Only the person running the app" in info and job_id is None
    assert [j.id for j in manager.jobs()] == before
    if before:
        assert "Only the person running the app" in remote.predict(before[0], api_name="/train_cancel")
        assert "Only the person running the app" in remote.predict(before[0], api_name="/train_resume")
        assert "Only the person running the app" in remote.predict(before[0], api_name="/train_use")[0]
    assert "Only the person running the app" in remote.predict(api_name="/rescan")[0]


def test_no_train_leaves_the_app_without_the_tab_and_its_endpoints(tiny_dir, tmp_path):
    import app
    from sdxs_core.hub import ModelHub

    assert app.parse_args(["--no-train"]).no_train
    hub = ModelHub(search_dirs=[], device="cpu", outputs=tmp_path)
    hub.start(str(tiny_dir))
    without = app.build_demo(hub)
    names = {d.get("api_name") for d in without.config["dependencies"]}
    assert "train_lora" not in names and "generate" in names
    assert not any(c.get("props", {}).get("label") == "Train" for c in without.config["components"])
