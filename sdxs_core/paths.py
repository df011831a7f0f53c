"""Where the repository keeps things, named once for the app, trainers and benchmarks."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
MINIATURE = ASSETS / "miniature"
CONFIGS = ROOT / "trainers" / "configs"
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"
