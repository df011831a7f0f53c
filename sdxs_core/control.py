"""Control extractors: turn a frame into the control map a ControlNet expects.

One module for both the live loop and the ControlNet trainers, so training and inference see
identical control images. Maps are ``[H, W, 3] uint8``, white structure on black, at the input's size.
"""

import time
from dataclasses import dataclass

import cv2
import numpy as np

from .images import ImageLike, to_rgb_array


@dataclass
class ControlMap:
    image: np.ndarray  # [H, W, 3] uint8
    kind: str
    ms: float  # extraction time for this frame


def canny(rgb: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """OpenCV Canny edges, white on black (what canny ControlNets are trained on)."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
    return np.repeat(edges[..., None], 3, axis=-1)


def sketch(rgb: np.ndarray) -> np.ndarray:
    """An offline pencil-sketch map: dark strokes of the frame as white lines on black.

    Adaptive thresholding of a blurred grey image keeps line drawings (a sketch pad, a doodle on
    paper) intact and turns photos into contour sketches; no network weights needed.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (3, 3), 0)
    block = max(3, (min(grey.shape) // 16) | 1)
    lines = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, 8)
    return np.repeat(lines[..., None], 3, axis=-1)


def passthrough(rgb: np.ndarray) -> np.ndarray:
    """The image is already a control map."""
    return rgb


EXTRACTORS = {"canny": canny, "sketch": sketch, "none": passthrough}


def extract(kind: str, image: ImageLike) -> ControlMap:
    if kind not in EXTRACTORS:
        raise ValueError(f"unknown control type {kind!r}; choose one of {sorted(EXTRACTORS)}")
    rgb = to_rgb_array(image)
    t0 = time.perf_counter()
    out = EXTRACTORS[kind](rgb)
    return ControlMap(image=out, kind=kind, ms=(time.perf_counter() - t0) * 1e3)
