"""The miniature world's evaluator: score a generator on held-out prompts with the world's own instruments.

Every generated image is paired with a prompt from `world.eval_prompts` (attribute combinations never
trained on) and judged against the truth the world knows:

- prompt accuracy: the attribute classifier reads back every attribute the caption states;
- mFID: Fréchet distance between classifier features of the generated images and of real renders of the
  same captions (fresh geometry), next to the real-vs-real floor, i.e. what a perfect generator scores;
- diversity: mean pairwise feature distance between the images of one prompt (and the same for real images);
- with a ControlNet: edge F1 (edges of the generation vs the control edge map) or depth correlation;
- latency per image, batched and at batch 1.

    python -m trainers.miniature.evaluate --model runs/miniature/teacher --steps 25 --cfg 5 --n 256
    python -m trainers.miniature.evaluate --model PATH --controlnet PATH --control-type edges --json out.json

The functions are the API later benchmarks reuse: `evaluate_model`, `frechet_distance`, `edge_f1`,
`depth_correlation`, `image_edges`, `reference_set`, `control_maps`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np
import torch

from sdxs_core.files import atomic_write_json

from . import world
from .classifier import DEFAULT_DIR, WorldClassifier, caption_correct, load_classifier, predict_attributes, to_input

CONTROL_TYPES = ("edges", "depth")
CANNY_THRESHOLDS = (100, 200)  # on each RGB channel; real renders then score F1 0.97 (1 px) / 1.00 (2 px)
DepthEstimator = Callable[[np.ndarray], np.ndarray]  # uint8 [N, 64, 64, 3] -> [N, 64, 64], larger = nearer


# ---- metrics ------------------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D]:
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrtm(S_a S_b)).

    tr(sqrtm(S_a S_b)) is taken as the sum of the square roots of the eigenvalues of S_a S_b (real and
    non-negative in exact arithmetic, as S_a S_b is similar to a PSD matrix; round-off leaves tiny
    imaginary or negative parts, which the real part of the complex root discards). That equals the
    trace of scipy.linalg.sqrtm (a test checks it) but runs in torch, under torch's thread count:
    scipy's own OpenBLAS threads spin against a busy 2-core CPU and took ~2 s per 256-d call here."""
    a64, b64 = torch.as_tensor(np.asarray(a), dtype=torch.float64), torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[1] or min(len(a64), len(b64)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of one width, got {tuple(a64.shape)} and {tuple(b64.shape)}")
    cov_a, cov_b = torch.cov(a64.T), torch.cov(b64.T)  # [D, D]
    if a64.shape[1] == 1:
        cov_a, cov_b = cov_a.reshape(1, 1), cov_b.reshape(1, 1)
    eigenvalues = torch.linalg.eigvals(cov_a @ cov_b)  # complex [D]
    trace_sqrt = eigenvalues.sqrt().real.sum()
    diff = a64.mean(0) - b64.mean(0)
    distance = diff @ diff + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)  # round-off can push identical sets a hair below 0


def mean_pairwise_distance(features: np.ndarray, group_size: int) -> float | None:
    """Mean L2 distance between the members of consecutive groups of `group_size`, averaged over groups."""
    if group_size < 2:
        return None
    groups = np.asarray(features, np.float64).reshape(-1, group_size, features.shape[-1])  # [G, k, D]
    dist = np.linalg.norm(groups[:, :, None] - groups[:, None, :], axis=-1)  # [G, k, k]
    upper = np.triu_indices(group_size, 1)
    return float(dist[:, upper[0], upper[1]].mean())


def image_edges(images: np.ndarray, thresholds: tuple[int, int] = CANNY_THRESHOLDS) -> np.ndarray:
    """uint8 [N, H, W, 3] -> edges uint8 [N, H, W] (0/255): Canny on each RGB channel, OR-ed.

    A grey-level Canny misses object/background pairs of equal luminance (a red shape on brown), which
    the world's ground-truth edges, drawn from labels, always have."""
    out = np.zeros(images.shape[:3], np.uint8)
    for k, image in enumerate(images):
        for c in range(3):
            out[k] |= cv2.Canny(np.ascontiguousarray(image[..., c]), *thresholds)
    return out


def edge_f1(pred_edges: np.ndarray, target_edges: np.ndarray, tolerance: int = 1) -> float:
    """Mean over images of the F1 between two edge maps ([H, W] or [N, H, W], nonzero = edge), where a
    pixel counts as matched within `tolerance` pixels in any direction (a square neighbourhood).
    An image where both maps are empty scores 1; where only one is, 0."""
    pred, target = np.asarray(pred_edges) > 0, np.asarray(target_edges) > 0
    if pred.shape != target.shape:
        raise ValueError(f"edge maps differ in shape: {pred.shape} vs {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    scores = []
    for p, t in zip(pred, target):
        n_p, n_t = p.sum(), t.sum()
        if n_p == 0 or n_t == 0:
            scores.append(float(n_p == n_t))
            continue
        near_t = cv2.dilate(t.astype(np.uint8), kernel) > 0
        near_p = cv2.dilate(p.astype(np.uint8), kernel) > 0
        precision, recall = (p & near_t).sum() / n_p, (t & near_p).sum() / n_t
        scores.append(0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall)))
    return float(np.mean(scores))


def depth_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Pearson correlation between two depth maps ([H, W] or [N, H, W]).
    Images where either map is constant (correlation undefined) are skipped; nan if all are."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"depth maps differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)  # [N, H*W]
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))  # [N]
    defined = norm > 1e-12
    if not defined.any():
        return float("nan")
    return float(((a * b).sum(1)[defined] / norm[defined]).mean())


# ---- real images and control maps --------------------------------------------------------------
def spec_for_caption(text: str, rng: np.random.Generator, style: str = "plain") -> world.SceneSpec:
    """A scene matching a caption, in `style`, with geometry drawn as `world.sample_specs` draws it."""
    # world keeps its geometry samplers private; these are the same draws as world._sample_spec.
    spec = world.parse_caption(text)
    u = rng.random(9).tolist()
    angles = [world._interval(u[0], -world.MAX_ANGLE, world.MAX_ANGLE), world._interval(u[1], -world.MAX_ANGLE, world.MAX_ANGLE)]
    if len(spec.objects) == 1:
        r = world._interval(u[2], *world.ONE_SIZE)
        centres, sizes, depths = [world._one_centre(spec.position, r, u[3], u[4])], [r], [world._interval(u[5], 0.5, 1.0)]
    else:
        sizes = [world._interval(u[2], *world.TWO_SIZE), world._interval(u[3], *world.TWO_SIZE)]
        centres = world._two_centres(spec.relation, sizes, rng.random(4).tolist())
        far, near = world._interval(u[4], 0.25, 0.55), world._interval(u[5], 0.75, 1.0)
        depths = [near, far] if u[6] < 0.5 else [far, near]
    objects = tuple(
        replace(o, centre=(round(x, 2), round(y, 2)), size=round(r, 2), depth=round(d, 3), angle=round(a, 1))
        for o, (x, y), r, d, a in zip(spec.objects, centres, sizes, depths, angles)
    )
    return replace(spec, objects=objects, style=style)


def reference_set(captions: list[str], seed: int) -> dict:
    """Real renders of exactly these captions (fresh geometry and appearance per image), as `world.render_specs`."""
    rng = np.random.default_rng(seed)
    specs = [spec_for_caption(c, rng) for c in captions]
    return world.render_specs(specs, seed=seed + 1)


def control_maps(real: dict, control_type: str) -> list[np.ndarray]:
    """Control images from real renders: edges white on black, depth as grey (near = bright), [64, 64, 3] uint8."""
    if control_type == "edges":
        maps = real["edges"]
    elif control_type == "depth":
        maps = np.clip(np.round(real["depth"] * 255), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"control_type must be one of {CONTROL_TYPES}, got {control_type!r}")
    return list(np.repeat(maps[..., None], 3, axis=-1))


# ---- reading images ----------------------------------------------------------------------------
def to_uint8(images: np.ndarray) -> np.ndarray:
    """Engine output (float [N, H, W, 3] in [0, 1]) -> uint8, rounded as the engine's PIL output is."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(np.asarray(images, np.float32) * 255), 0, 255).astype(np.uint8)


@torch.no_grad()
def classifier_features(classifier: WorldClassifier, images: np.ndarray, batch: int = 256) -> np.ndarray:
    classifier.eval()
    device = next(classifier.parameters()).device
    parts = [classifier.features(to_input(images[s : s + batch]).to(device)).cpu() for s in range(0, len(images), batch)]
    return torch.cat(parts).double().numpy()  # [N, hidden]


def read_images(classifier: WorldClassifier, images: np.ndarray, captions: list[str]) -> dict:
    """Prompt accuracy, per-attribute accuracy and features of images (uint8 or float in [0, 1])."""
    images = to_uint8(images)
    preds = predict_attributes(classifier, images)
    attributes = {k: [] for k in ("count", "shapes", "colours", "layout", "background")}
    for pred, text in zip(preds, captions):
        p, t = pred.canonical(), world.parse_caption(text).canonical()
        same_count = len(p.objects) == len(t.objects)
        attributes["count"].append(same_count)
        attributes["shapes"].append(same_count and [o.shape for o in p.objects] == [o.shape for o in t.objects])
        attributes["colours"].append(same_count and [o.colour for o in p.objects] == [o.colour for o in t.objects])
        attributes["layout"].append(same_count and (p.position, p.relation) == (t.position, t.relation))
        attributes["background"].append(p.background == t.background)
    return {
        "prompt_accuracy": float(np.mean([caption_correct(p, c) for p, c in zip(preds, captions)])),
        "attribute_accuracy": {k: float(np.mean(v)) for k, v in attributes.items()},
        "features": classifier_features(classifier, images),
    }


# ---- the evaluation ------------------------------------------------------------------------------
def _generate(engine, prompts, seeds, steps, cfg, controls, batch, control_scale=1.0):
    """All images in batches; returns uint8 images and per-image stage times (ms)."""
    images, totals = [], dict.fromkeys(("text_ms", "control_ms", "unet_ms", "decode_ms", "total_ms"), 0.0)
    for s in range(0, len(prompts), batch):
        out = engine.generate(prompts[s : s + batch], seed=seeds[s : s + batch], num_inference_steps=steps,
                              guidance_scale=cfg, control_image=None if controls is None else controls[s : s + batch],
                              control_scale=control_scale, output_type="np")
        images.append(to_uint8(out.images))
        for key in totals:
            totals[key] += getattr(out.timings, key)
    return np.concatenate(images), {k: v / len(prompts) for k, v in totals.items()}


def _batch1_latency(engine, prompt, steps, cfg, control, calls, control_scale=1.0):
    """Median total_ms of `calls` single-image calls, after one warm-up."""
    times = []
    for i in range(calls + 1):
        out = engine.generate(prompt, seed=i, num_inference_steps=steps, guidance_scale=cfg,
                              control_image=control, control_scale=control_scale, output_type="np")
        if i:
            times.append(out.timings.total_ms)
    return statistics.median(times) if times else None


def evaluate_model(
    engine,
    n: int = 256,
    steps: int = 1,
    cfg: float = 0.0,
    *,
    seeds_per_prompt: int = 4,
    batch: int = 64,
    control_type: str | None = None,
    control_scale: float = 1.0,
    depth_estimator: DepthEstimator | None = None,
    classifier: WorldClassifier | str | None = None,
    edge_tolerance: int = 1,
    prompt_seed: int = 0,
    seed: int = 0,
    latency_calls: int = 5,
    name: str | None = None,
) -> dict:
    """Generate `n` images (n / seeds_per_prompt held-out prompts x seeds_per_prompt seeds) and score them.

    Returns a flat JSON-ready dict; metrics that do not apply (or are undefined) are None. Real set A
    supplies the control maps, set B is the mFID reference, so mFID(B, A) is the floor a perfect
    generator would score, with or without control."""
    # 1. check inputs
    if n < 2 or seeds_per_prompt < 1 or n % seeds_per_prompt:
        raise ValueError(f"n={n} must be >= 2 and a multiple of seeds_per_prompt={seeds_per_prompt}")
    if control_type is not None and control_type not in CONTROL_TYPES:
        raise ValueError(f"control_type must be one of {CONTROL_TYPES} or None, got {control_type!r}")
    if (control_type is None) != (engine.controlnet is None):
        raise ValueError("pass control_type exactly when the engine has a ControlNet loaded")
    if batch < 1 or steps < 1:
        raise ValueError(f"batch and steps must be >= 1, got {batch} and {steps}")
    if not isinstance(classifier, WorldClassifier):
        classifier = load_classifier(classifier or DEFAULT_DIR)
    start = time.perf_counter()

    # 2. prompts, real sets, controls
    prompts = [p for p in world.eval_prompts(n // seeds_per_prompt, prompt_seed) for _ in range(seeds_per_prompt)]
    seeds = [seed + i for i in range(n)]
    real_a, real_b = reference_set(prompts, 1_000_000 + seed), reference_set(prompts, 2_000_000 + seed)
    controls = control_maps(real_a, control_type) if control_type else None

    # 3. generate
    images, per_image_ms = _generate(engine, prompts, seeds, steps, cfg, controls, batch, control_scale)
    batch1_ms = _batch1_latency(engine, prompts[0], steps, cfg, controls[0] if controls else None, latency_calls,
                                control_scale)

    # 4. score
    generated, ref_a, ref_b = (read_images(classifier, x, prompts) for x in (images, real_a["images"], real_b["images"]))
    result = {
        "model": name or engine.name,
        "control_type": control_type,
        "control_scale": control_scale if control_type else None,
        "steps": steps,
        "cfg": cfg,
        "nfe": steps * (2 if cfg > 1.0 else 1),  # the engine runs CFG (two U-Net passes) only above 1
        "n_images": n,
        "n_prompts": n // seeds_per_prompt,
        "seeds_per_prompt": seeds_per_prompt,
        "prompt_accuracy": generated["prompt_accuracy"],
        "attribute_accuracy": generated["attribute_accuracy"],
        "real_prompt_accuracy": ref_b["prompt_accuracy"],
        "mfid": frechet_distance(generated["features"], ref_b["features"]),
        "real_vs_real_mfid": frechet_distance(ref_a["features"], ref_b["features"]),
        "diversity": mean_pairwise_distance(generated["features"], seeds_per_prompt),
        "real_diversity": mean_pairwise_distance(ref_b["features"], seeds_per_prompt),
        "edge_f1": None,
        "real_edge_f1": None,
        "depth_correlation": None,
        "latency_ms": per_image_ms["total_ms"],
        "latency_ms_batch1": batch1_ms,
        "stage_ms_per_image": {k: v for k, v in per_image_ms.items() if k != "total_ms"},
        "batch": batch,
    }
    if control_type == "edges":
        result["edge_f1"] = edge_f1(image_edges(images), real_a["edges"], edge_tolerance)
        result["real_edge_f1"] = edge_f1(image_edges(real_a["images"]), real_a["edges"], edge_tolerance)
        result["edge_tolerance"] = edge_tolerance
    if control_type == "depth" and depth_estimator is not None:
        result["depth_correlation"] = depth_correlation(np.asarray(depth_estimator(images)), real_a["depth"])
    result["eval_seconds"] = time.perf_counter() - start
    return _json_ready(result)


def _json_ready(value):
    """Plain Python types, floats rounded to 4 significant decimals, nan/inf -> None."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(obj, path: str | os.PathLike) -> None:
    """The evaluator's report, through the one atomic writer: readers never see half a file."""
    atomic_write_json(path, obj)


def format_table(result: dict) -> str:
    def fmt(value, pct=False):
        if value is None:
            return "-"
        return f"{value:.1%}" if pct else f"{value:.2f}"

    rows = [
        ("prompt accuracy", fmt(result["prompt_accuracy"], True), fmt(result["real_prompt_accuracy"], True)),
        *((f"  {k}", fmt(v, True), "") for k, v in result["attribute_accuracy"].items()),
        ("mFID (real-vs-real floor)", fmt(result["mfid"]), fmt(result["real_vs_real_mfid"])),
        ("diversity", fmt(result["diversity"]), fmt(result["real_diversity"])),
        ("edge F1", fmt(result["edge_f1"]), fmt(result["real_edge_f1"])),
        ("depth correlation", fmt(result["depth_correlation"]), ""),
        ("latency ms/image (batch)", fmt(result["latency_ms"]), ""),
        ("latency ms (batch 1, median)", fmt(result["latency_ms_batch1"]), ""),
    ]
    head = (f"{result['model']}: {result['steps']} steps, CFG {result['cfg']:g} (NFE {result['nfe']}), "
            f"{result['n_images']} images = {result['n_prompts']} held-out prompts x {result['seeds_per_prompt']} seeds"
            + (f", control {result['control_type']} at scale {result['control_scale']:g}"
               if result["control_type"] else ""))
    lines = [head, f"{'metric':<30} {'generated':>10} {'real':>10}"]
    lines += [f"{a:<30} {b:>10} {c:>10}" for a, b, c in rows]
    return "\n".join(lines)


def calibration_prompts(n: int = 32, seed: int = 7) -> list[str]:
    """The model's own prompts for int8 calibration: captions of the training split (never the held-out
    combinations scored here), one per calibration input."""
    return [world.caption(s) for s in world.sample_specs(seed, n, "plain", "train")[0]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusers pipeline folder (or preset)")
    parser.add_argument("--controlnet", help="ControlNet folder; needs --control-type")
    parser.add_argument("--control-type", choices=CONTROL_TYPES)
    parser.add_argument("--control-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=0.0, help="guidance scale; CFG runs only above 1")
    parser.add_argument("--n", type=int, default=256, help="generated images")
    parser.add_argument("--seeds-per-prompt", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--edge-tolerance", type=int, default=1, help="pixels (edge F1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="model name in the report (default: the engine's)")
    parser.add_argument("--json", help="write the result here (atomically)")
    parser.add_argument("--classifier", default=DEFAULT_DIR)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--backend", default="torch", choices=("auto", "torch", "openvino"),
                        help="what runs the one-step U-Net and decoder (docs/backends.md)")
    parser.add_argument("--precision", default="auto", help="openvino: fp32, bf16, int8, mixed (auto: mixed where "
                                                            "the CPU has bf16); int8 calibrates on train captions")
    parser.add_argument("--cache-dir", default=None, help="openvino's converted models")
    args = parser.parse_args(argv)
    if (args.controlnet is None) != (args.control_type is None):
        parser.error("--controlnet and --control-type go together")

    from sdxs_core.loading import load_engine

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    engine = load_engine(args.model, controlnet=args.controlnet, device=args.device, backend=args.backend,
                         precision=args.precision, cache_dir=args.cache_dir,
                         calibration_prompts=calibration_prompts())
    depth = None
    if args.control_type == "depth":  # the world's own depth estimator reads the generations' depth
        from sdxs_core.depth import MiniatureDepth

        depth = MiniatureDepth.load().estimate_batch
    result = evaluate_model(engine, args.n, args.steps, args.cfg, seeds_per_prompt=args.seeds_per_prompt,
                            batch=args.batch, control_type=args.control_type, control_scale=args.control_scale,
                            classifier=args.classifier, depth_estimator=depth, edge_tolerance=args.edge_tolerance,
                            seed=args.seed,
                            name=args.name or args.model)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
