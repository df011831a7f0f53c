"""Control extractors: turn a frame into the control map a ControlNet expects.

One module for both the live loop and the ControlNet trainers, so training and inference see
identical control images: both call ``extract(kind, image, size)``. Maps are ``[H, W, 3] uint8``,
white structure on black (depth: grey, near = bright).

The path every frame takes, in order:

1. ``to_rgb_array``: any PIL mode or numpy layout (grey, RGBA, 16-bit, float) -> ``[H, W, 3] uint8``;
2. the extractor, at the frame's own size;
3. ``resize_map`` to ``size`` when one is given (the model's resolution), so a map at any size is
   always "the full-size map, resized this one way":

   - line maps (canny, sketch): each output pixel is the *brightest* source pixel it covers when
     shrinking (an exact max-pool over the cells of the output grid, so 1-pixel lines never fade),
     and the nearest source pixel when growing;
   - continuous maps (depth, none): ``cv2.INTER_AREA`` when shrinking, ``cv2.INTER_LINEAR`` when
     growing. ``size`` sets the output exactly: crop first (``stream.square_frame``) to keep aspect.

Depth maps have two normalisations, chosen by the depth model, never by the caller:

- the miniature estimator predicts the world's *absolute* depth (1 = nearest, background 0), so its
  map is ``round(clip(depth, 0, 1) * 255)``: exactly the formula of the evaluator's
  ``control_maps(real, "depth")``, which the miniature depth ControlNet is trained on;
- Depth Anything / DPT predict relative inverse depth with no fixed scale, so their maps are
  normalised per frame, ``round((d - min) / (max - min) * 255)`` (0 where the span is under 1e-6),
  as controlnet-aux does for the depth ControlNets trained on MiDaS maps.

Per-frame min-max would not do for the miniature world: its ground-truth maps (and so the evaluator's
control maps) keep the background at 0 and objects at their depth, 128-255 for one object, so
stretching would turn every one-object map into a 0/255 mask the ControlNet never saw in training.

Extractors are small objects in ``EXTRACTORS`` (name -> extractor) with ``name``, ``available()``
(truthy, or falsy with a ``reason``) and ``__call__(rgb) -> [H, W, 3] uint8``; model weights load on
first use and are cached per device. Nothing here downloads: learned extractors read local folders
given as arguments or by environment variable:

- ``SDXS_ANNOTATORS``: a folder of controlnet-aux annotator weights (a local copy of
  lllyasviel/Annotators); the sketch extractor uses the first of ``table5_pidinet.pth`` (PiDiNet),
  ``ControlNetHED.pth`` (HED), ``sk_model.pth`` + ``sk_model2.pth`` (lineart) found there, or the one
  named by ``SDXS_SKETCH_DETECTOR`` (``pidinet``, ``hed``, ``lineart``, ``opencv``); otherwise the
  offline OpenCV sketch;
- ``SDXS_DEPTH_MODEL``: a Depth Anything / DPT folder (transformers layout) or a miniature
  estimator folder; without it, depth uses ``assets/miniature/depth`` when that holds weights.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import SDXSError
from .images import ImageLike, to_rgb_array

SKETCH_DETECTORS = {  # controlnet-aux detector -> weight files it needs in the annotator folder
    "pidinet": ("table5_pidinet.pth",),
    "hed": ("ControlNetHED.pth",),
    "lineart": ("sk_model.pth", "sk_model2.pth"),
}
DEPTH_NORMALISATIONS = ("absolute", "frame")


class ExtractorUnavailableError(SDXSError, ValueError):
    """An extractor whose model is not installed; the message says what to install or pass."""


@dataclass
class ControlMap:
    image: np.ndarray  # [H, W, 3] uint8
    kind: str
    ms: float  # extraction time for this frame (extractor + resize; a first call includes loading)


@dataclass(frozen=True)
class Availability:
    """Truthy when the extractor can run; otherwise `reason` says why and what to do."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


# ---- map helpers shared by every extractor -------------------------------------------------------
def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def _target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(h), int(w)


def _max_axis(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Resize one axis to n: max over each output cell's source range when shrinking, nearest when growing."""
    m = a.shape[axis]
    if n == m:
        return a
    starts = np.arange(n) * m // n  # the cells [starts[i], starts[i+1]) tile the source exactly
    return np.maximum.reduceat(a, starts, axis=axis) if n < m else np.take(a, starts, axis=axis)


def resize_map(control: np.ndarray, size: int | tuple[int, int], lines: bool) -> np.ndarray:
    """The one way a control map changes resolution (see the module docstring); [H, W, 3] uint8 in and out."""
    h, w = _target_size(size)
    if control.shape[:2] == (h, w):
        return control
    if lines:
        return np.ascontiguousarray(_max_axis(_max_axis(control, h, 0), w, 1))
    shrink = h * w < control.shape[0] * control.shape[1]
    return cv2.resize(control, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def depth_to_map(depth: np.ndarray, normalise: str) -> np.ndarray:
    """float [H, W] depth (larger = nearer) -> grey [H, W, 3] uint8, near = bright.

    "absolute": depth is already on a [0, 1] scale (the miniature world's); round(clip(d, 0, 1) * 255),
    the evaluator's `control_maps(real, "depth")` formula. "frame": min-max over this frame."""
    d = np.asarray(depth, np.float32)
    if normalise == "absolute":
        grey = np.clip(np.round(d * 255), 0, 255)
    elif normalise == "frame":
        lo, hi = float(d.min()), float(d.max())
        grey = np.round((d - lo) * (255.0 / (hi - lo))) if hi - lo > 1e-6 else np.zeros_like(d)
    else:
        raise ValueError(f"normalise must be one of {DEPTH_NORMALISATIONS}, got {normalise!r}")
    return _grey3(grey.astype(np.uint8))


# ---- the offline OpenCV extractors as plain functions ---------------------------------------------
def canny(rgb: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """OpenCV Canny edges of the RGB frame, white on black.

    Canny on the colour image (OpenCV takes the strongest channel gradient), as controlnet-aux's
    CannyDetector runs it for canny ControlNets: a grey-level Canny misses edges between colours of
    equal luminance (a red shape on brown)."""
    return _grey3(cv2.Canny(np.ascontiguousarray(rgb), low, high))


def sketch(rgb: np.ndarray) -> np.ndarray:
    """An offline pencil-sketch map: dark strokes of the frame as white lines on black.

    Adaptive thresholding of a blurred grey image keeps line drawings (a sketch pad, a doodle on
    paper) intact and turns photos into contour sketches; no network weights needed.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (3, 3), 0)
    block = max(3, (min(grey.shape) // 16) | 1)
    lines = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, 8)
    return _grey3(lines)


def passthrough(rgb: np.ndarray) -> np.ndarray:
    """The image is already a control map."""
    return rgb


# ---- extractors --------------------------------------------------------------------------------
class Extractor(ABC):
    """Base: a name, whether maps are line drawings (how `resize_map` treats them), availability,
    and a per-(source, device) cache of loaded models."""

    name: str = ""
    lines: bool = False

    def __init__(self):
        self._models: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def available(self) -> Availability:
        return Availability(True)

    def describe(self) -> str:
        """Which backend runs, for logs and the UI."""
        return self.name

    @abstractmethod
    def __call__(self, rgb: np.ndarray, device: str | None = None) -> np.ndarray:
        """``[H, W, 3] uint8`` RGB in, the control map of the same size out."""

    def _cached(self, key: tuple, load):
        """The model for `key` (source, device), loaded once even when sessions call concurrently."""
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]


class CannyExtractor(Extractor):
    name, lines = "canny", True

    def __init__(self, low: int = 100, high: int = 200):
        super().__init__()
        self.low, self.high = low, high

    def describe(self) -> str:
        return f"canny (OpenCV, thresholds {self.low}/{self.high})"

    def __call__(self, rgb, device=None):
        return canny(rgb, self.low, self.high)


class PassthroughExtractor(Extractor):
    name = "none"

    def describe(self) -> str:
        return "none (the image is the control map)"

    def __call__(self, rgb, device=None):
        return rgb


class SketchExtractor(Extractor):
    """controlnet-aux PiDiNet / HED / lineart when their weights are in a local folder, else OpenCV."""

    name, lines = "sketch", True

    def __init__(self, annotators: str | os.PathLike | None = None, detector: str | None = None, detect_resolution: int = 512):
        super().__init__()
        self.annotators, self.detector, self.detect_resolution = annotators, detector, detect_resolution

    def _folder(self) -> str | None:
        folder = self.annotators or os.environ.get("SDXS_ANNOTATORS")
        return os.fspath(folder) if folder else None

    def backend(self) -> str:
        """'pidinet', 'hed' or 'lineart' when chosen (or found first) with its weights present, else 'opencv'."""
        folder, wanted = self._folder(), self.detector or os.environ.get("SDXS_SKETCH_DETECTOR")
        if wanted is not None and wanted != "opencv" and wanted not in SKETCH_DETECTORS:
            raise ValueError(f"unknown sketch detector {wanted!r}; choose one of {[*SKETCH_DETECTORS, 'opencv']}")
        if wanted == "opencv" or folder is None:
            return "opencv"
        for name in [wanted] if wanted else SKETCH_DETECTORS:
            if all(os.path.isfile(os.path.join(folder, f)) for f in SKETCH_DETECTORS[name]):
                return name
        return "opencv"

    def describe(self) -> str:
        backend = self.backend()
        return "sketch (OpenCV adaptive threshold)" if backend == "opencv" else f"sketch ({backend} from {self._folder()})"

    def _load(self, backend: str, folder: str, device: str):
        from controlnet_aux import HEDdetector, LineartDetector, PidiNetDetector

        cls = {"pidinet": PidiNetDetector, "hed": HEDdetector, "lineart": LineartDetector}[backend]
        return cls.from_pretrained(folder).to(device)

    def __call__(self, rgb, device=None):
        backend = self.backend()
        if backend == "opencv":
            return sketch(rgb)
        device = device or "cpu"
        detector = self._cached((backend, self._folder(), device), lambda: self._load(backend, self._folder(), device))
        h, w = rgb.shape[:2]
        res = max(64, min(self.detect_resolution, min(h, w)))  # controlnet-aux rounds sides to multiples of 64
        out = detector(rgb, detect_resolution=res, image_resolution=res, output_type="np")  # white lines on black
        out = to_rgb_array(np.asarray(out))
        if out.shape[:2] != (h, w):
            shrink = h * w < out.shape[0] * out.shape[1]
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return out


class DepthExtractor(Extractor):
    """Depth as grey, near = bright. The model comes from `model` (a folder), else $SDXS_DEPTH_MODEL,
    else the shipped miniature estimator (assets/miniature/depth) when its weights exist."""

    name = "depth"

    def __init__(self, model: str | os.PathLike | None = None, default_dir: str | os.PathLike | None = None):
        super().__init__()
        self.model, self.default_dir = model, default_dir

    def source(self) -> tuple[str, str] | None:
        """(kind, folder) with kind "miniature" or "transformers", or None when no depth model is found."""
        from .depth import DEFAULT_MINIATURE_DIR, is_miniature_dir, is_transformers_dir

        chosen = self.model or os.environ.get("SDXS_DEPTH_MODEL")
        folders = [os.fspath(chosen)] if chosen else [os.fspath(self.default_dir or DEFAULT_MINIATURE_DIR)]
        for folder in folders:
            if is_transformers_dir(folder):
                return "transformers", folder
            if is_miniature_dir(folder):
                return "miniature", folder
        return None

    def available(self) -> Availability:
        if self.source() is not None:
            return Availability(True)
        chosen = self.model or os.environ.get("SDXS_DEPTH_MODEL")
        where = f"'{chosen}' is not a depth model folder" if chosen else "no depth model found"
        return Availability(False, f"{where}: train the miniature estimator (python -m trainers.miniature.depth "
                                   f"--out assets/miniature/depth), or set SDXS_DEPTH_MODEL to a local Depth Anything / "
                                   f"DPT folder (config.json, preprocessor_config.json and weights, e.g. a copy of "
                                   f"depth-anything/Depth-Anything-V2-Small-hf)")

    def describe(self) -> str:
        source = self.source()
        return f"depth ({source[0]} from {source[1]})" if source else "depth (unavailable)"

    def normalisation(self) -> str:
        source = self.source()
        return "absolute" if source and source[0] == "miniature" else "frame"

    def _load(self, kind: str, folder: str, device: str | None):
        from .depth import MiniatureDepth, TransformersDepth
        from .devices import resolve_device, resolve_dtype

        if kind == "miniature":  # a 64x64 CNN: the CPU is as fast as a round trip to a GPU
            return MiniatureDepth.load(folder, device or "cpu")
        device = resolve_device(device)
        return TransformersDepth.load(folder, device, resolve_dtype(device))

    def __call__(self, rgb, device=None):
        source = self.source()
        if source is None:
            raise ExtractorUnavailableError(f"depth control is unavailable: {self.available().reason}")
        estimator = self._cached((*source, device), lambda: self._load(*source, device))
        normalise = "absolute" if source[0] == "miniature" else "frame"
        return depth_to_map(estimator(rgb), normalise)


# ---- the control types ---------------------------------------------------------------------------
# What a ControlNet is trained on and fed, the one table of names: apps, loaders and trainers read
# their types and aliases here. Aliases are the names people and older configs use ("edges" was the
# miniature world's name for canny maps; lineart / scribble / HED maps are what the sketch extractor makes).
CONTROL_TYPES = ("canny", "sketch", "depth")
CONTROL_ALIASES = {"edges": "canny", "edge": "canny", "lineart": "sketch", "scribble": "sketch", "hed": "sketch"}
CONTROL_NAMES = {**{t: t for t in CONTROL_TYPES}, **CONTROL_ALIASES}  # every accepted name -> its type


def control_kind(name, field: str = "control_type", choices=CONTROL_TYPES) -> str:
    """The control type ``name`` stands for (an alias resolves to its type), if it is one of
    ``choices``; else a ValueError naming ``field`` and what it may be."""
    kind = CONTROL_NAMES.get(name, name) if isinstance(name, str) else name
    if not isinstance(kind, str) or kind not in choices:
        aliases = ", ".join(f"{a} = {t}" for a, t in CONTROL_ALIASES.items() if t in choices)
        raise ValueError(f"{field}={name!r}: unknown control type; choose one of {', '.join(choices)}"
                         + (f" (also {aliases})" if aliases else ""))
    return kind


# ---- the registry ------------------------------------------------------------------------------
EXTRACTORS: dict[str, Extractor] = {}


def register(extractor: Extractor) -> Extractor:
    """Add or replace the extractor under its name (e.g. ``register(DepthExtractor(model=PATH))``)."""
    EXTRACTORS[extractor.name] = extractor
    return extractor


for _extractor in (CannyExtractor(), SketchExtractor(), DepthExtractor(), PassthroughExtractor()):
    register(_extractor)


def availability() -> dict[str, Availability]:
    """Every registered extractor's availability, for the UI and for logs."""
    return {name: extractor.available() for name, extractor in EXTRACTORS.items()}


def extract(kind: str, image: ImageLike, size: int | tuple[int, int] | None = None, device: str | None = None) -> ControlMap:
    """The control map of `image` for `kind`, at the image's size or at `size` (int: square side, or
    (height, width)), resized by `resize_map`; `kind` may be an alias (edges = canny). Raises ValueError
    for an unknown kind, and
    ExtractorUnavailableError (a ValueError) when the kind's model is not installed."""
    kind = control_kind(kind, "control_type", tuple(EXTRACTORS))
    extractor = EXTRACTORS[kind]
    target = None if size is None else _target_size(size)
    rgb = to_rgb_array(image)
    t0 = time.perf_counter()
    out = extractor(rgb, device=device)
    if target is not None:
        out = resize_map(out, target, extractor.lines)
    return ControlMap(image=out, kind=kind, ms=(time.perf_counter() - t0) * 1e3)


def sketch_to_control(canvas: ImageLike | dict | None) -> np.ndarray | None:
    """A sketch-pad canvas (dark strokes on white or transparent) as the control map sketch
    ControlNets expect: white strokes on black. None for an empty canvas."""
    if isinstance(canvas, dict):  # Gradio's EditorValue
        canvas = canvas.get("composite")
    if canvas is None:
        return None
    arr = np.asarray(canvas)
    if arr.ndim == 3 and arr.shape[-1] == 4:  # flatten onto white: transparent means paper
        alpha = arr[..., 3:].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    rgb = to_rgb_array(arr)
    inverted = 255 - rgb.min(axis=-1)  # a stroke of any colour counts, not just black
    if not inverted.any():
        return None
    return np.repeat(inverted[..., None], 3, axis=-1)
