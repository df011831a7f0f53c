"""Turn whatever image a user or a webcam hands us into 8-bit RGB, without surprises.

Control images arrive as PIL images in any mode (L, RGBA, I;16, F), or as numpy arrays (HW or HWC,
uint8, uint16 or float). Everything downstream (extractors, the engine) sees one format.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInputError
from .limits import MAX_IMAGE_SIDE

ImageLike = Image.Image | np.ndarray


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Return an ``[H, W, 3] uint8`` array. Transparent pixels become black: control maps draw
    white on black, so transparency means "no control here"."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = np.asarray(image)
        elif image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
            image = np.asarray(image.convert("RGBA"))
        else:
            return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ValueError(f"image has shape {image.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    arr = _to_uint8(arr)
    alpha = None
    if arr.shape[-1] in (2, 4):
        arr, alpha = arr[..., :-1], arr[..., -1:]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if alpha is not None:
        arr = (arr.astype(np.uint16) * alpha // 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32))
        peak = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if peak <= 1.0 else (255.0 / 65535.0 if peak > 255.0 else 1.0)
        return np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        peak = int(arr.max()) if arr.size else 0
        shift = 8 if peak > 255 else 0  # 16-bit data stored in a wider int (PIL mode "I")
        return np.clip(arr >> shift, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def to_rgb_image(image: ImageLike) -> Image.Image:
    return Image.fromarray(to_rgb_array(image))


def read_image_file(path: str | Path, field: str = "Image", max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """An image file as upright RGB: the size in its header is checked before any pixel is decoded
    (a 60000x60000 PNG of a few KB would otherwise take gigabytes), and EXIF orientation is applied,
    as browsers and phones show it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(field, f"'{path}' does not exist or is not a file")
    try:
        with Image.open(path) as image:  # reads the header only
            w, h = image.size
            if max(w, h) > max_side:
                raise InvalidInputError(field, f"'{path.name}' is {w}x{h}; the largest side accepted is {max_side} px")
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError:
        raise InvalidInputError(field, f"'{path.name}' claims more pixels than PIL will decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InvalidInputError):
            raise
        raise InvalidInputError(field, f"'{path.name}' is not an image this program can read (PNG, JPEG, WebP, ...): "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
