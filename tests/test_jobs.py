"""Background training jobs (trainers.jobs): the store's states, plans and their errors, and real
jobs on tiny models run as the app runs them: ``accelerate launch`` workers in their own process
groups, cancelled, killed, resumed, queued, and from the CLI."""

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from trainers.jobs.manager import JobManager, group_alive, reason_from_log
from trainers.jobs.plan import JobError, JobRequest, plan_job
from trainers.jobs.store import JobStore

def manager_for(tmp_path, presets, **kw) -> JobManager:
    return JobManager(tmp_path / "jobs", threads=1, nice=0, presets=presets, **kw)


def wait_for(predicate, timeout=120.0, poll=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


# ---- the store ------------------------------------------------------------------------------------
def test_store_moves_only_along_allowed_transitions_and_starts_one_job_per_device(tmp_path):
    store = JobStore(tmp_path)
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a, b, c = store.add("a", "lora", "cpu"), store.add("b b/..", "lora", "cpu"), store.add("c", "lora", "cuda")
    assert b.folder == f"{b.id:04d}-b-b" and a.state == "queued"
    assert not store.move(a.id, "finished")  # queued -> finished is not a transition
    assert store.get(a.id).state == "queued"
    first = store.claim_next("cpu")
    assert first.id == a.id and first.state == "running" and first.attempts == 1
    assert store.claim_next("cpu") is None  # one job per device: b waits behind a
    assert store.claim_next("cuda").id == c.id  # another device runs at once
    assert store.move(a.id, "interrupted", ("running",), reason="killed")
    assert not store.move(a.id, "interrupted", ("running",))  # not twice
    assert store.claim_next("cpu").id == b.id  # the queue moves on in order
    assert store.move(a.id, "queued") and store.get(a.id).reason == "killed"
    assert store.move(b.id, "finished") and not store.move(b.id, "queued")  # a finished job stays finished
    assert [j.id for j in store.list(("queued",))] == [a.id]


# ---- plans ----------------------------------------------------------------------------------------
def test_a_plan_names_every_bad_field_with_the_configs_own_messages(tmp_path, presets, style_lora):
    def errors(**kw) -> str:
        with pytest.raises(JobError) as e:
            plan_job(JobRequest(**kw), tmp_path / "job", tmp_path / "cache", presets)
        return str(e.value)

    assert "exactly one of style_lora" in errors(kind="lora", preset="tiny")
    assert "style_lora='nope' does not exist" in errors(kind="lora", preset="tiny", style_lora="nope")
    assert "preset='huge' is not one of" in errors(kind="lora", preset="huge", style_lora=str(style_lora))
    assert "control_type='thermal'" in errors(kind="controlnet", preset="tiny", control_type="thermal")
    (tmp_path / "few").mkdir()
    for i in range(3):
        (tmp_path / "few" / f"{i}.png").write_bytes(b"")
    assert "3 image(s)" in errors(kind="lora", preset="tiny", images=str(tmp_path / "few"))
    text = errors(kind="lora", preset="tiny", style_lora=str(style_lora),
                  overrides={"lora_ssd": {"lr": -1, "max_steps": 0}})
    assert "lora_ssd: lr=-1.0 must be > 0" in text and "lora_ssd: max_steps=0 must be >= 1" in text
    assert "unknown option 'bogus' for lora_ssd" in errors(kind="lora", preset="tiny", style_lora=str(style_lora),
                                                           overrides={"lora_ssd": {"bogus": 1}})
    assert "does not run" in errors(kind="lora", preset="tiny", style_lora=str(style_lora),
                                    overrides={"controlnet_ssd": {"lr": 1}})


def test_every_shipped_preset_resolves_to_valid_configs_except_for_missing_model_folders(tmp_path):
    """quick and full run here; the real-model presets fail only on the downloads they need."""
    from trainers.jobs.plan import preset_names

    lora = "assets/miniature/lora-pastel-teacher-sd4/pytorch_lora_weights.safetensors"
    assert {"quick", "full", "sdxs-512-dreamshaper"} <= set(preset_names())
    for preset in ("quick", "full"):
        plan = plan_job(JobRequest("lora", preset=preset, style_lora=lora), tmp_path / "j", tmp_path / "c")
        assert [s.name for s in plan.stages] == ["lora_ssd"]
        assert Path(plan.stages[0].config["run_dir"]) == tmp_path / "j" / "lora_ssd"
    quick = plan_job(JobRequest("controlnet", preset="quick"), tmp_path / "j", tmp_path / "c")
    (ssd,) = quick.stages  # the shipped teacher ControlNet: no first stage, and a new student ControlNet
    assert ssd.name == "controlnet_ssd" and ssd.config["controlnet"] == ""
    assert ssd.config["teacher_controlnet"].endswith("assets/miniature/controlnet-teacher-edges-sd4")
    full = plan_job(JobRequest("controlnet", preset="full", control_type="depth"), tmp_path / "j", tmp_path / "c")
    assert [s.name for s in full.stages] == ["controlnet_teacher", "controlnet_kd", "controlnet_ssd"]
    assert full.stages[2].config["controlnet"] == str(tmp_path / "j" / "controlnet_kd" / "final")
    with pytest.raises(JobError) as e:
        plan_job(JobRequest("controlnet", preset="sdxs-512-dreamshaper"), tmp_path / "j", tmp_path / "c")
    lines = str(e.value).splitlines()
    assert lines and all(("models/" in line or "data/captions.txt" in line) for line in lines), lines


def test_images_make_a_two_stage_lora_job_chained_through_the_teacher_lora(tmp_path, presets):
    from PIL import Image

    folder = tmp_path / "style"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (24, 24), (40 * i, 10, 200)).save(folder / f"{i}.png")
    plan = plan_job(JobRequest("lora", preset="tiny", images=str(folder), trigger="sks"), tmp_path / "j",
                    tmp_path / "c", presets)
    teacher, ssd = plan.stages
    assert (teacher.name, ssd.name) == ("lora_teacher", "lora_ssd")
    assert teacher.config["images"] == str(folder) and teacher.config["caption_template"] == "{trigger}"
    assert ssd.config["style_lora"] == str(tmp_path / "j" / "lora_teacher" / "final" / "pytorch_lora_weights.safetensors")


# ---- jobs in processes ------------------------------------------------------------------------------
def test_a_lora_job_runs_in_the_background_and_its_lora_loads_in_the_engine(tmp_path, presets, style_lora, tiny_dir):
    from sdxs_core import load_engine
    from sdxs_core.hub import ModelHub

    manager = manager_for(tmp_path, presets)
    job = manager.submit(JobRequest("lora", name="style one", preset="tiny", style_lora=str(style_lora)))
    assert job.state == "running" and job.pid and group_alive(job.pid)
    done = manager.wait(job.id, timeout=180)
    view = manager.view(job.id)
    assert done.state == "finished", view.log_tail
    assert view.progress["job_share"] == 1.0 and view.artefact_file.name == "pytorch_lora_weights.safetensors"
    assert [m["step"] for m in view.metrics] == [1, 2, 3, 4, 5, 6] and "lora_ssd" == view.metrics[0]["stage"]
    assert view.sample is not None and len(view.samples) >= 3  # validation grids during training and at the end
    assert json.loads((view.artefact / "train_info.json").read_text())["steps"] == 6
    engine = load_engine(tiny_dir, device="cpu")
    engine.load_lora(str(view.artefact_file))
    # the app's pickers offer it under its job's key, fitting the model it was made for
    hub = ModelHub(search_dirs=[], device="cpu", extra=manager.artefacts)
    hub.start(str(tiny_dir))
    assert f"jobs/{done.folder}/pytorch_lora_weights.safetensors" in [k for _, k in hub.choices("lora")]


def test_cancel_saves_a_checkpoint_and_resume_finishes_the_same_budget(tmp_path, presets, style_lora):
    manager = manager_for(tmp_path, presets)
    job = manager.submit(JobRequest("lora", preset="slow", style_lora=str(style_lora)))
    queued = manager.submit(JobRequest("lora", preset="tiny", style_lora=str(style_lora)))
    assert queued.state == "queued"  # one training job per device
    wait_for(lambda: (manager.view(job.id).progress or {}).get("step", 0) >= 3)
    assert manager.cancel(job.id).state == "running"  # graceful: it stops after its next step
    cancelled = manager.wait(job.id, timeout=120)
    assert cancelled.state == "cancelled", manager.view(job.id).log_tail
    checkpoints = sorted((manager.store.folder(job) / "lora_ssd").glob("checkpoint-*"))
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert 3 <= stopped_at < 40 and not (manager.store.folder(job) / "lora_ssd" / "final").exists()
    assert manager.wait(queued.id, timeout=180).state == "finished"  # the queue moved on
    resumed = manager.resume(job.id)
    assert resumed.state == "running" and resumed.attempts == 2
    assert manager.wait(job.id, timeout=240).state == "finished"
    view = manager.view(job.id)
    assert json.loads((view.artefact / "train_info.json").read_text())["steps"] == 40
    assert "resumed from" in (manager.store.folder(job) / "worker.log").read_text()
    steps = [m["step"] for m in view.metrics]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no step logged twice across the resume


def test_a_killed_worker_is_interrupted_on_restart_and_resumes_to_the_full_step_count(tmp_path, presets, style_lora):
    manager = manager_for(tmp_path, presets)
    job = manager.submit(JobRequest("lora", preset="slow", style_lora=str(style_lora)))
    wait_for(lambda: len(list((manager.store.folder(job) / "lora_ssd").glob("checkpoint-*"))) >= 1, timeout=180)
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(lambda: not group_alive(job.pid) or manager._children[job.pid].poll() is not None)
    restarted = manager_for(tmp_path, presets)  # the app started again: it finds the job's process gone
    restarted.tick()
    interrupted = restarted.store.get(job.id)
    assert interrupted.state == "interrupted" and "Resume" in interrupted.reason
    restarted.resume(job.id)
    assert restarted.wait(job.id, timeout=240).state == "finished"
    assert json.loads((restarted.view(job.id).artefact / "train_info.json").read_text())["steps"] == 40


def test_a_nan_loss_fails_the_job_with_the_guards_message(tmp_path, presets, style_lora):
    manager = manager_for(tmp_path, presets)
    job = manager.submit(JobRequest("lora", preset="tiny", style_lora=str(style_lora),
                                    overrides={"lora_ssd": {"lr": 1e30, "max_grad_norm": 0}}))
    failed = manager.wait(job.id, timeout=180)
    assert failed.state == "failed"
    assert "became" in failed.reason and "training stopped" in failed.reason
    assert manager.view(job.id).artefact is None
    assert reason_from_log(manager.store.folder(job) / "worker.log") or failed.reason


def test_a_controlnet_job_distils_from_the_presets_teacher_controlnet(tmp_path, presets, tiny_dir):
    from sdxs_core import load_engine

    manager = manager_for(tmp_path, presets)
    job = manager.submit(JobRequest("controlnet", preset="tiny", control_type="canny"))
    assert [s["name"] for s in json.loads((manager.store.folder(job) / "job.json").read_text())["stages"]] == \
        ["controlnet_ssd"]
    assert manager.wait(job.id, timeout=240).state == "finished", manager.view(job.id).log_tail
    out = manager.view(job.id).artefact
    assert json.loads((out / "train_info.json").read_text())["control_type"] == "canny"
    load_engine(tiny_dir, controlnet=out, device="cpu")


def test_the_cli_submits_lists_shows_cancels_and_resumes(tmp_path, presets, style_lora, capsys):
    from trainers.jobs import __main__ as cli

    root = str(tmp_path / "jobs")
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "--threads", "1", "submit", "lora", "--preset", "slow", "--name", "cli",
                     "--style-lora", str(style_lora)]) == 0
    assert "job 1 running" in capsys.readouterr().out
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "list"]) == 0
    assert "running" in capsys.readouterr().out
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "cancel", "1", "--wait"]) == 1
    assert "cancelled" in capsys.readouterr().out
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "show", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job"]["state"] == "cancelled" and shown["plan"]["stages"][0]["name"] == "lora_ssd"
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "cancel", "1"]) == 2  # nothing to cancel: a clear error, exit 2
    assert "only a queued or running job" in capsys.readouterr().err
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "submit", "lora", "--preset", "slow", "--set", "lora_ssd.lr=-1",
                     "--style-lora", str(style_lora)]) == 2
    assert "lora_ssd: lr=-1.0 must be > 0" in capsys.readouterr().err
    assert cli.main(["--jobs-dir", root, "--presets-dir", str(presets), "resume", "1", "--wait"]) == 0
    assert "finished" in capsys.readouterr().out


def test_two_processes_both_train_and_export_once(tmp_path, presets, style_lora):
    """``accelerate launch --num_processes 2`` on CPU (gloo): each rank steps, one LoRA is written."""
    manager = manager_for(tmp_path, presets)
    job = manager.submit(JobRequest("lora", preset="tiny", style_lora=str(style_lora), num_processes=2))
    done = manager.wait(job.id, timeout=240)
    folder = manager.store.folder(job)
    log = (folder / "worker.log").read_text()
    assert done.state == "finished", log[-3000:]
    ranks = [json.loads((folder / "lora_ssd" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["last_step"], r["steps_run"]) for r in ranks] == [(0, 2, 6, 6), (1, 2, 6, 6)]
    assert log.count("[job] artefact:") == 1 and len(list(folder.glob(".output*"))) == 0
    info = json.loads((folder / "output" / "train_info.json").read_text())
    assert info["images_seen"] == 6 * 2 * 2  # steps x batch x processes


def test_uploads_are_limited_and_data_folders_are_only_those_offered(tmp_path):
    from trainers.jobs.inputs import (UploadLimits, data_folders, resolve_data_folder, save_image_uploads,
                                      save_lora_upload)

    files = []
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"x" * 2048)
        files.append(tmp_path / f"{i}.png")
    (tmp_path / "run.sh").write_text("echo")
    (tmp_path / "w.bin").write_bytes(b"pickle")
    uploads = tmp_path / "uploads"
    with pytest.raises(JobError, match="3 files uploaded; at most 2"):
        save_image_uploads(files, uploads, UploadLimits(max_files=2))
    with pytest.raises(JobError, match="'0.png' is 0.0 MB; at most 0.001 MB"):
        save_image_uploads(files, uploads, UploadLimits(max_file_mb=0.001))
    with pytest.raises(JobError, match="'run.sh' is not one of"):
        save_image_uploads([*files, tmp_path / "run.sh"], uploads)
    with pytest.raises(JobError, match="'w.bin' is not one of .safetensors"):
        save_lora_upload(tmp_path / "w.bin", uploads)
    assert not uploads.exists()  # a refused upload writes nothing
    saved = save_image_uploads(files, uploads)
    assert saved.parent == uploads and sorted(p.name for p in saved.iterdir()) == ["0.png", "1.png", "2.png"]
    data = tmp_path / "data"
    (data / "style").mkdir(parents=True)
    (data / "style" / "a.png").write_bytes(b"")
    (data / "empty").mkdir()
    assert data_folders(data) == ["style"] and data_folders(None) == []
    assert resolve_data_folder(data, "style") == (data / "style").resolve()
    for name in ("empty", "../uploads", str(tmp_path), "style/../.."):
        with pytest.raises(JobError, match="not one of the folders"):
            resolve_data_folder(data, name)
