"""The persistent job store: one SQLite file (WAL) under the jobs root, shared by the app, the CLI,
the API and the workers, so every one of them sees the same queue.

A job is one row. Its folder (``<root>/<id>-<name>/``) holds everything else: the resolved plan, the
worker's log, its progress, each stage's run folder (config, metrics, checkpoints, samples) and the
final artefact. States move only along ``TRANSITIONS``; every move is one transaction that names the
states it may come from, so two processes can never both start, finish or resume the same job.
"""

import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

STATES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ENDED = ("finished", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
TRANSITIONS = {
    "queued": ("running", "cancelled"),
    "running": ("finished", "failed", "cancelled", "interrupted"),
    "failed": ("queued",),
    "cancelled": ("queued",),
    "interrupted": ("queued",),
    "finished": (),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    device TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    pid INTEGER,
    pid_start TEXT,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested REAL
)
"""


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    kind: str  # lora | controlnet
    state: str
    device: str  # cpu | cuda: one running job per device
    folder: str  # relative to the jobs root
    created: float
    started: float | None
    ended: float | None
    pid: int | None  # the worker's process group (its launcher's pid)
    pid_start: str | None  # the launcher's start time in /proc, so a reused pid is never taken for it
    reason: str  # why it failed / was interrupted / was cancelled
    attempts: int  # starts so far (1 + resumes)
    cancel_requested: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def safe_name(name: str) -> str:
    """A job name as a folder-name part: letters, digits, '-', '_' (others become '-')."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "job"


class JobStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "jobs.sqlite"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE: writers queue up instead of failing mid-way)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- reading -------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id} in {self.root}")
        return Job(**dict(row))

    def list(self, states: tuple[str, ...] = STATES) -> list[Job]:
        marks = ",".join("?" * len(states))
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [Job(**dict(r)) for r in rows]

    def folder(self, job: Job) -> Path:
        return self.root / job.folder

    # ---- writing -------------------------------------------------------------------------------
    def add(self, name: str, kind: str, device: str) -> Job:
        """A new queued job with its folder name reserved (``<id>-<name>``); the folder is the caller's."""
        with self.transaction() as db:
            cur = db.execute("INSERT INTO jobs (name, kind, state, device, created) VALUES (?, ?, 'queued', ?, ?)",
                             (name, kind, device, time.time()))
            job_id = cur.lastrowid
            db.execute("UPDATE jobs SET folder = ? WHERE id = ?", (f"{job_id:04d}-{safe_name(name)}", job_id))
        return self.get(job_id)

    def move(self, job_id: int, to: str, from_states: tuple[str, ...] | None = None, **fields) -> bool:
        """Move a job to state ``to`` if it is in one of ``from_states`` (default: any state that may
        move there); sets ``fields`` in the same transaction. False when the job was not in such a state."""
        if to not in STATES:
            raise ValueError(f"unknown state {to!r}")
        allowed = tuple(s for s in (from_states or STATES) if to in TRANSITIONS[s])
        if not allowed:
            return False
        now = time.time()
        if to == "running":
            fields.setdefault("started", now)
        if to in ENDED:
            fields.setdefault("ended", now)
        sets = ", ".join(["state = ?", *(f"{k} = ?" for k in fields)])
        marks = ",".join("?" * len(allowed))
        with self.transaction() as db:
            cur = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks})",
                             (to, *fields.values(), int(job_id), *allowed))
            return cur.rowcount == 1

    def update(self, job_id: int, **fields) -> None:
        """Set fields that are not the state (pid, cancel request)."""
        if "state" in fields:
            raise ValueError("change the state with move()")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), int(job_id)))

    def claim_next(self, device: str) -> Job | None:
        """The oldest queued job of ``device``, moved to running, if no job runs there now (one
        transaction: two schedulers never start two jobs on one device)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE state = 'running' AND device = ?", (device,)).fetchone():
                return None
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' AND device = ? ORDER BY id LIMIT 1",
                             (device,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, pid = NULL, pid_start = NULL, reason = '', "
                       "attempts = attempts + 1, cancel_requested = NULL WHERE id = ?", (time.time(), row["id"]))
        return self.get(row["id"])

