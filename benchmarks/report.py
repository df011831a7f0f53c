"""Write ``docs/results.md`` from ``benchmarks/results/*.json``: one section per file, its provenance from the
``meta`` block, then its rows as tables. The page is generated, never edited by hand, so a figure in it is
always one a benchmark wrote, with the command, commit and hardware that produced it.

    python -m benchmarks.report            # regenerate docs/results.md
    python -m benchmarks.report --check    # exit 1 if docs/results.md is not what the results files give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from sdxs_core.files import atomic_write
from sdxs_core.paths import RESULTS, ROOT

OUT = ROOT / "docs" / "results.md"
# What each file measures, in a line; files not listed get their name only.
TITLES = {
    "latency_cpu": ("One-step latency, SDXS-512 architecture", "random weights, 512×512, batch 1, prompt cached: "
                    "diffusers' pipeline against the engine on each backend and precision, per stage; quality drop "
                    "from backend_quality."),
    "latency_cuda": ("One-step latency on a GPU, SDXS-512 architecture", "random weights, 512×512: eager against "
                     "torch.compile + CUDA graphs, per batch size."),
    "backend_quality": ("What a backend precision costs in quality", "the evaluator on the default model, torch "
                        "fp32 against OpenVINO fp32 / bf16 / int8 / mixed; drop = prompt-accuracy points."),
    "live_loop": ("Live loop in the browser", "the app in-process, headless Chromium with a fake webcam, the Live "
                  "tab streaming; FPS counted in the page, latency from camera frame to decoded output."),
    "backend_quality_edges": ("What a backend precision costs a ControlNet", "as above with the default's edges "
                              "ControlNet: edge F1 of the generated images against the control maps."),
    "live_loop_socket": ("Live loop without a browser", "the Live tab's WebSocket protocol driven from Python."),
    "live_loop_socket_sdxs512": ("Live sketch loop at SDXS-512 size", "the WebSocket client against SDXS-512's "
                                 "architecture and its sketch ControlNet (random weights), 512×512."),
    "sketch_latency": ("Sketch pad: stroke to image", "strokes sent over the sketch pad's WebSocket, time until "
                       "the image drawn from them arrives."),
    "soak": ("Many users, long session", "the app served to 8 text-to-image API clients, an operator switching "
                                         "LoRA scale and ControlNet, and two live sockets: memory, temp files, "
                                         "errors, latency; then an idle slot reclaimed."),
    "miniature_teacher": ("Miniature teacher", "held-out prompts: its own sampler (25 steps + CFG) against one "
                          "step. mFID is comparable only at equal n."),
    "miniature_sdxs": ("SDXS chain on the first miniature teacher", "teacher, KD student and one-step students "
                       "(MSE, FM-only, FM+SSD), each decoded by the teacher's VAE; the last row with the tiny "
                       "decoder."),
    "miniature_sdxs_sd4": ("SDXS chain on the SD1.5-layout teacher (the default's)", "as above, for the teacher "
                           "whose student is the bundled default."),
    "miniature_lora_controlnet": ("ControlNets and style LoRA of the first student", "teacher with its ControlNet / "
                                  "LoRA against the one-step student with the SSD-distilled ones."),
    "miniature_lora_controlnet_sd4": ("ControlNets and style LoRA of the default", "as above, for the bundled "
                                      "default, at two control scales and two LoRA scales."),
    "miniature_lora_sd4": ("Style LoRA of the default at n = 1,024", "the LoRA rows alone, on four times the "
                           "scenes."),
    "layout_consistency": ("Where layout consistency is lost", "the measure's ceiling (a perfect restyle), then the "
                           "LoRA's own pairs split by legibility."),
    "layout_consistency_teacher": ("Layout consistency of the teacher under its own LoRA", "the ceiling a "
                                   "distilled student inherits."),
    "kd_fidelity": ("Block-removal KD fidelity per timestep", "student against teacher on held-out scenes with "
                    "shared noise."),
    "train_jobs": ("Train tab: the quick presets", "each through the job machinery; serving FPS while training; "
                   "kills and resumes."),
}
SHARE = re.compile(r"accuracy|consistency|legibility|^style_(on|off)$|read_(right|wrong)")


def cell(key: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if SHARE.search(key) and 0 <= value <= 1:
            return f"{value:.1%}"
        if abs(value) >= 1e5:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))[:80].replace("|", "\\|")
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    """Scalar columns in first-seen order; nested values (per-attribute breakdowns) stay in the JSON."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list))]
    if not keys:
        return []
    numeric = [all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows) for k in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(k, row.get(k)) for k in keys) + " |" for row in rows]
    return lines


def is_rows(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def provenance(meta: dict | None) -> list[str]:
    if not meta:
        return ["*No `meta` block yet: this file predates `benchmarks.results_io`.*"]
    device = meta.get("device", {})
    hardware = device.get("gpu") or device.get("cpu", "?")
    if device.get("gpu") and device.get("cpu"):
        hardware += f" (host CPU {device['cpu']})"
    if device.get("cores") and not device.get("gpu"):
        hardware += f", {device['cores']} cores"
    if device.get("flags"):
        hardware += f" ({', '.join(device['flags'])})"
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines = [f"- command: `{meta.get('command', '?')}`",
             f"- commit `{meta.get('commit', '?')}`, {meta.get('date', '?')}; hardware: {hardware}",
             f"- versions: {versions or '?'}"]
    if meta.get("reconstructed"):
        lines.append(f"- *reconstructed*: {meta.get('note', 'from git history')}")
    return lines


def section(name: str, report: dict) -> list[str]:
    title, what = TITLES.get(name, (name, ""))
    lines = [f"## {title}", "", f"`benchmarks/results/{name}.json`" + (f": {what}" if what else ""), ""]
    lines += provenance(report.get("meta")) + [""]
    body = {k: v for k, v in report.items() if k != "meta"}
    scalars = {k: v for k, v in body.items() if not isinstance(v, (dict, list))}
    if scalars:
        lines += ["Settings: " + ", ".join(f"{k} = {cell(k, v)}" for k, v in scalars.items()), ""]
    for key, value in body.items():
        if is_rows(value):
            lines += [f"**{key}**", ""] + table(value) + [""]
        elif isinstance(value, dict) and value and all(is_rows(v) for v in value.values()):
            for sub, rows in value.items():
                lines += [f"**{key}: {sub}**", ""] + table(rows) + [""]
        elif isinstance(value, dict) and value:
            flat = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            lines += [f"**{key}**", ""] + table([flat]) + [""]
            for sub, rows in value.items():
                if is_rows(rows):
                    lines += [f"**{key}: {sub}**", ""] + table(rows) + [""]
        elif isinstance(value, list) and value:
            lines += [f"**{key}**: " + "; ".join(cell(key, v) for v in value), ""]
    return lines


def render(results: Path = RESULTS) -> str:
    lines = ["# Results", "",
             "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit by hand.",
             "Each section names the command, commit and hardware that produced its file. The runs, their",
             "context and the negative results are in the [notebook](notebook/index.md).", ""]
    for path in sorted(results.glob("*.json")):
        lines += section(path.stem, json.loads(path.read_text()))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the page is stale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    page = render(args.results)
    if args.check:
        if not args.out.is_file() or args.out.read_text() != page:
            print(f"{args.out} is not what {args.results} gives: run python -m benchmarks.report", file=sys.stderr)
            return 1
        print(f"{args.out} is current")
        return 0
    atomic_write(args.out, page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
