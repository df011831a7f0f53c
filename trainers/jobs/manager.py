"""Background training jobs: submit, queue, start, watch, cancel, resume. The app, the CLI and the API
all use one ``JobManager`` over one store, so they see and steer the same jobs.

Scheduling is a ``tick``: jobs whose worker is gone are marked interrupted (a killed worker, a
restarted app), overdue cancels are enforced, and the oldest queued job of each free device starts.
Anyone may tick (the app's scheduler thread every few seconds, the CLI after each command, a worker
when it ends), and the store's transactions keep two ticks from starting one job twice.

A worker is ``accelerate launch`` in its own session (process group), at lower priority and with a
thread cap on a CPU, so the app serving beside it keeps its cores.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sdxs_core.files import atomic_write_json
from trainers.jobs.plan import PRESETS, JobError, JobRequest, Plan, plan_job, preset_names
from trainers.jobs.store import ENDED, RESUMABLE, Job, JobStore
from trainers.jobs.worker import CANCEL_FILE, OUTPUT, PLAN_FILE, PROGRESS_FILE

LOG_FILE = "worker.log"
DEFAULT_ROOT = Path("runs/jobs")
CANCEL_TIMEOUT_S = 120.0  # a graceful cancel that has not ended by then is killed
START_GRACE_S = 30.0  # a just-claimed job has no pid yet: not "gone" for this long


def default_threads() -> int:
    """Training threads on a CPU: half the cores (at least one), the rest left to serving."""
    return max(1, (os.cpu_count() or 2) // 2)


PF_EXITING = 0x4  # /proc/PID/stat flags (include/linux/sched.h): the process is in its exit
SIGKILL_PENDING = 1 << (signal.SIGKILL - 1)  # its bit in /proc/PID/status SigPnd / ShdPnd


def _proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone, a zombie or dying.

    A killed process is not gone at once: until the kernel has run it through its exit (which on a busy
    machine takes a while) it shows as running, with SIGKILL pending and then the exiting flag. It never
    trains again, so it counts as gone; else a tick right after a kill would keep its job running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X", "x") or int(fields[6]) & PF_EXITING:
        return None
    pending = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return None if pending & SIGKILL_PENDING else fields[19]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # ended while the caller looked
        return None


def group_alive(pid: int | None) -> bool:
    """Whether any process of the worker's process group still runs (not counting zombies or dying ones)."""
    if not pid:
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _proc_start(pid) is not None:
        return True
    # the leader is gone or dying: are any of its group left? (one process ending meanwhile ends no scan)
    return any(_pgid(int(p.name)) == pid and _proc_start(int(p.name)) is not None
               for p in Path("/proc").iterdir() if p.name.isdigit())


def reason_from_log(log: Path, limit: int = 400) -> str:
    """The last error line of a worker's log (a traceback's final line), or ''."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line.strip()[:limit]
    return ""


@dataclass
class JobView:
    """Everything a job page shows, read from the store and the job folder."""

    job: Job
    plan: dict
    progress: dict | None
    metrics: list[dict]  # every stage's log.jsonl rows, each with its "stage"
    sample: Path | None  # the newest validation grid
    samples: list[Path]
    log_tail: str
    artefact: Path | None  # output/ of a finished job
    artefact_file: Path | None  # what to download: the LoRA or ControlNet safetensors


class JobManager:
    def __init__(self, root: str | Path = DEFAULT_ROOT, threads: int | None = None, nice: int = 10,
                 cancel_timeout: float = CANCEL_TIMEOUT_S, presets: Path = PRESETS):
        self.root = Path(root).resolve()
        self.presets = Path(presets)
        self.store = JobStore(self.root)
        self.cache = self.root / "cache"
        self.threads = threads or default_threads()
        self.nice = nice
        self.cancel_timeout = cancel_timeout
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._scheduler: threading.Thread | None = None

    # ---- submitting ------------------------------------------------------------------------------
    def submit(self, request: JobRequest | dict, start: bool = True) -> Job:
        """Validate ``request`` into a plan, queue it, and start it if its device is free."""
        if isinstance(request, dict):
            request = JobRequest.from_dict(request)
        probe = self.root / ".plan-check"
        plan_job(request, probe, self.cache, self.presets)  # raises JobError before anything is written
        device = self.device_of(request.device)
        job = self.store.add(request.name or self._default_name(request), request.kind, device)
        folder = self.store.folder(job)
        try:
            folder.mkdir(parents=True)
            atomic_write_json(folder / PLAN_FILE, plan_job(request, folder, self.cache, self.presets).to_dict())
        except BaseException:
            self.store.move(job.id, "cancelled", ("queued",), reason="could not write the job folder")
            raise
        if start:
            self.tick()
        return self.store.get(job.id)

    @staticmethod
    def _default_name(r: JobRequest) -> str:
        if r.kind == "controlnet":
            return f"controlnet-{r.control_type}"
        return f"lora-{Path(r.images or r.style_lora).stem}"

    @staticmethod
    def device_of(device: str) -> str:
        if device != "auto":
            return device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # ---- steering --------------------------------------------------------------------------------
    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one is asked to save a checkpoint and stop
        (killed if it has not after ``cancel_timeout``)."""
        job = self.store.get(job_id)
        if job.state == "queued":
            self.store.move(job_id, "cancelled", ("queued",), reason="cancelled while queued")
        elif job.state == "running":
            (self.store.folder(job) / CANCEL_FILE).write_text(str(time.time()))
            if job.cancel_requested is None:
                self.store.update(job_id, cancel_requested=time.time())
        else:
            raise JobError(f"job {job_id} is {job.state}: only a queued or running job can be cancelled")
        return self.store.get(job_id)

    def resume(self, job_id: int, start: bool = True) -> Job:
        """Queue an ended job again: its worker continues every stage from its last checkpoint."""
        job = self.store.get(job_id)
        if job.state not in RESUMABLE:
            raise JobError(f"job {job_id} is {job.state}: only a {'/'.join(RESUMABLE)} job can be resumed")
        (self.store.folder(job) / CANCEL_FILE).unlink(missing_ok=True)
        if not self.store.move(job_id, "queued", RESUMABLE, reason="", cancel_requested=None, ended=None):
            raise JobError(f"job {job_id} changed state meanwhile; look again")
        if start:
            self.tick()
        return self.store.get(job_id)

    # ---- scheduling ------------------------------------------------------------------------------
    def tick(self) -> list[Job]:
        """Reconcile running jobs with their processes, then start what can start; returns jobs started."""
        with self._lock:
            for pid, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[pid]  # reaped: a zombie leader would look alive
            for job in self.store.list(("running",)):
                self._reconcile(job)
            started = []
            for device in sorted({j.device for j in self.store.list(("queued",))}):
                job = self.store.claim_next(device)
                if job is not None:
                    started.append(self._launch(job))
            return started

    def _reconcile(self, job: Job) -> None:
        folder = self.store.folder(job)
        if job.pid is None:
            if time.time() - (job.started or 0) > START_GRACE_S:
                self.store.move(job.id, "interrupted", ("running",), reason="the worker never started")
            return
        alive = group_alive(job.pid) and (_proc_start(job.pid) in (None, job.pid_start))
        if alive and job.cancel_requested and time.time() - job.cancel_requested > self.cancel_timeout:
            self._kill(job.pid)
            self.store.move(job.id, "cancelled", ("running",),
                            reason=f"cancelled: killed after {self.cancel_timeout:.0f} s without stopping")
        elif not alive:
            if job.cancel_requested:
                self.store.move(job.id, "cancelled", ("running",), reason="cancelled")
            else:
                why = reason_from_log(folder / LOG_FILE)
                self.store.move(job.id, "interrupted", ("running",),
                                reason="the worker process ended without finishing (killed, crashed or the machine "
                                       "restarted)" + (f": {why}" if why else "") + "; Resume continues it")

    def launch_command(self, job: Job, plan: Plan) -> list[str]:
        n = plan.request.num_processes
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(self.threads)]
        if n > 1:
            cmd.append("--multi_gpu")  # torchrun: gloo on CPUs, NCCL on GPUs
        return cmd + ["-m", "trainers.jobs.worker", str(self.store.folder(job))]

    def _launch(self, job: Job) -> Job:
        folder = self.store.folder(job)
        try:
            plan = Plan.from_dict(json.loads((folder / PLAN_FILE).read_text()))
            env = {**os.environ, "SDXS_TRAIN_THREADS": str(self.threads), "OMP_NUM_THREADS": str(self.threads),
                   "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30",  # the log keeps a bar every 30 s, not every step
                   "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                os.environ.get("PYTHONPATH")]))}
            nice = self.nice
            with open(folder / LOG_FILE, "a") as log:
                log.write(f"\n[job] attempt {job.attempts} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                log.flush()
                child = subprocess.Popen(self.launch_command(job, plan), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=(lambda: os.nice(nice)) if nice else None)
        except Exception as e:  # a job that cannot start fails with the reason, and the queue moves on
            self.store.move(job.id, "failed", ("running",), reason=f"could not start the worker: {e}")
            return self.store.get(job.id)
        self._children[child.pid] = child
        self.store.update(job.id, pid=child.pid, pid_start=_proc_start(child.pid))
        return self.store.get(job.id)

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def start_scheduler(self, interval: float = 2.0) -> None:
        """Tick every ``interval`` seconds in a daemon thread (the app's way of running the queue)."""
        if self._scheduler is not None:
            return

        def loop():
            while True:
                try:
                    self.tick()
                except Exception as e:  # a locked or broken store must not kill the scheduler thread
                    print(f"[jobs] scheduler: {e}", file=sys.stderr)
                time.sleep(interval)

        self._scheduler = threading.Thread(target=loop, name="sdxs-jobs", daemon=True)
        self._scheduler.start()

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 1.0) -> Job:
        """Tick until the job has ended (or ``timeout`` seconds have passed)."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            self.tick()
            job = self.store.get(job_id)
            if job.state in ENDED or (deadline is not None and time.time() > deadline):
                return job
            time.sleep(poll)

    # ---- reading -----------------------------------------------------------------------------------
    def preset_names(self) -> list[str]:
        return preset_names(self.presets)

    def jobs(self) -> list[Job]:
        return self.store.list()

    def progress(self, job: Job) -> dict | None:
        """The worker's latest ``progress.json`` (cheap: the job list asks it for every running job)."""
        return _read_json(self.store.folder(job) / PROGRESS_FILE)

    def artefacts(self) -> dict[str, Path]:
        """Finished jobs' outputs, by the key the app's model pickers show (``jobs/<folder>``)."""
        return {f"jobs/{j.folder}": self.store.folder(j) / OUTPUT for j in self.store.list(("finished",))
                if (self.store.folder(j) / OUTPUT).is_dir()}

    def view(self, job_id: int, log_lines: int = 40) -> JobView:
        job = self.store.get(job_id)
        folder = self.store.folder(job)
        plan = _read_json(folder / PLAN_FILE) or {}
        metrics, samples = [], []
        for stage in plan.get("stages", []):
            run = folder / stage["name"]
            for line in _read_lines(run / "log.jsonl"):
                try:
                    metrics.append({"stage": stage["name"], **json.loads(line)})
                except ValueError:
                    continue  # a line being written
            samples += sorted((run / "samples").glob("step-*.png"))
        try:
            tail = "\n".join((folder / LOG_FILE).read_text(errors="replace").split("\n")[-log_lines:])
        except OSError:
            tail = ""
        out = folder / OUTPUT
        artefact = out if job.state == "finished" and out.is_dir() else None
        files = sorted(out.glob("*.safetensors")) if artefact else []
        return JobView(job, plan, self.progress(job), metrics, samples[-1] if samples else None,
                       samples, _strip_bars(tail), artefact, files[0] if files else None)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def _strip_bars(text: str) -> str:
    """tqdm redraws its bar with carriage returns: keep each line's last state."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))
