"""A folder of user images as training data for the teacher-side trainers (``lora_teacher``,
``controlnet_teacher``), in the shape ``world_data`` gives for miniature-world renders.

A folder holds .png/.jpg/.jpeg/.webp/.bmp files (not recursive, hidden files skipped), each optionally
with a caption in ``<stem>.txt`` beside it. Each image is turned upright (EXIF), made RGB (transparency
over white, as a viewer shows it), centre-cropped to a square and resized to the model's side, so a
photo of any shape becomes one training image without distorting what is in it.

Captions: a ``.txt`` file wins; otherwise ``caption_template`` with ``{trigger}`` (the word the LoRA is
to learn) and, with ``caption_with="classifier"``, ``{caption}`` (the miniature world's classifier
reading the image back into a scene caption; only meaningful for world-like images).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sdxs_core.control import CONTROL_NAMES, control_kind, extract

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_WITH = ("template", "classifier")
CONTROL_KINDS = CONTROL_NAMES  # accepted control_type -> extractor: sdxs_core.control's one table


def caption_errors(caption_template: str, caption_with: str) -> list[str]:
    """What is wrong with a caption set-up, naming the field: checked up front by the configs and again
    by ``read_image_folder``, so a typo fails before any image is read."""
    if caption_with not in CAPTION_WITH:
        return [f"caption_with={caption_with!r} must be one of {CAPTION_WITH}"]
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(caption_template) if name is not None]
    except ValueError as e:
        return [f"caption_template={caption_template!r} is not a valid template ({e}); use {{trigger}} and {{caption}}"]
    allowed = ("trigger", "caption") if caption_with == "classifier" else ("trigger",)
    unknown = [f for f in fields if f not in allowed]
    if not unknown:
        return []
    if unknown == ["caption"]:
        return [f"caption_template={caption_template!r} uses {{caption}}, which only caption_with='classifier' fills"]
    return [f"caption_template={caption_template!r} has unknown placeholder(s) "
            f"{', '.join('{' + f + '}' for f in unknown)}; allowed: {', '.join('{' + a + '}' for a in allowed)}"]


def folder_errors(folder: str, field: str = "images") -> list[str]:
    """An up-front check of a folder option: it exists and is a folder."""
    path = Path(folder)
    if not path.exists():
        return [f"{field}={folder!r} does not exist: give a folder of images"]
    if not path.is_dir():
        return [f"{field}={folder!r} is not a folder: give a folder of images"]
    return []


def option_errors(config) -> list[str]:
    """The up-front check of a trainer config's folder options (``images``, ``trigger``,
    ``caption_template``, ``caption_with``). Without ``images`` the caption options would be silently
    ignored (world renders carry their own captions), so setting them is an error, not a no-op."""
    if config.images:
        return folder_errors(config.images, "images") + caption_errors(config.caption_template, config.caption_with)
    if config.trigger or config.caption_template != "{trigger}" or config.caption_with != "template":
        return ["trigger, caption_template and caption_with caption a folder of images: set images, or leave them "
                "at their defaults (world renders carry their own captions)"]
    return []


def caption_options_of(config) -> dict:
    """A trainer config's caption options, as ``read_image_folder`` / ``folder_data`` take them."""
    return {"trigger": config.trigger, "caption_template": config.caption_template, "caption_with": config.caption_with}


def folder_info(config) -> dict:
    """What an exported ``train_info.json`` records of a folder run: the folder and how it was captioned."""
    return {"images": config.images, **caption_options_of(config)}


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The folder's image files, sorted by name; hidden files and sub-folders are not read."""
    return sorted((p for p in Path(folder).iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                  key=lambda p: p.name)


def _load_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3] uint8``, upright, alpha flattened onto white; a ValueError naming the file otherwise."""
    from sdxs_core.images import to_rgb_array

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
            return to_rgb_array(im)  # also 16-bit and float modes, which convert("RGB") would clip
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: refused as a possible decompression bomb (more than {2 * Image.MAX_IMAGE_PIXELS} "
                         f"pixels); shrink the image") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})") from None


def _caption_file(image: Path) -> str:
    """The caption in ``<stem>.txt`` beside the image, stripped; "" when there is none."""
    txt = image.with_suffix(".txt")
    return txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else ""


def _scene_captions(small: list[np.ndarray]) -> list[str]:
    """The miniature classifier's reading of each ``[64, 64, 3]`` image as a world caption."""
    from trainers.miniature import world
    from trainers.miniature.classifier import DEFAULT_DIR, load_classifier, predict_attributes

    if not (Path(DEFAULT_DIR) / "config.json").is_file():
        raise ValueError(f"caption_with='classifier' needs the miniature classifier in {DEFAULT_DIR} "
                         f"(train it with python -m trainers.miniature.classifier)")
    return [world.caption(spec) for spec in predict_attributes(load_classifier(), np.stack(small))]


def read_image_folder(folder: str | os.PathLike, resolution: int, *, caption_template: str = "{trigger}",
                      trigger: str = "", caption_with: str = "template", max_images: int = 0) -> dict:
    """``{"images": [N, R, R, 3] uint8, "captions": [str], "names": [file name]}`` of the folder's images
    (the first ``max_images`` by name when > 0). Raises a ValueError naming the field or the file."""
    if not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a positive int")
    problems = folder_errors(os.fspath(folder), "folder") + caption_errors(caption_template, caption_with)
    if max_images < 0:
        problems.append(f"max_images={max_images} must be >= 0 (0 = all)")
    if problems:
        raise ValueError("; ".join(problems))
    files = image_files(folder)
    if not files:
        raise ValueError(f"folder={os.fspath(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if max_images > 0:
        files = files[:max_images]
    own = [_caption_file(p) for p in files]
    classify = caption_with == "classifier" and not all(own)
    if classify:
        from trainers.miniature.world import SIZE
    from sdxs_core.stream import square_frame

    images, small = [], []
    for p in files:
        rgb = _load_rgb(p)
        images.append(square_frame(rgb, resolution))  # as the live loop crops a frame
        if classify:  # the classifier reads the world's 64 x 64, made from the full crop, not from `images`
            small.append(square_frame(rgb, SIZE))
    scenes = _scene_captions(small) if classify else [""] * len(files)
    captions = [text or caption_template.format(trigger=trigger, caption=scene) for text, scene in zip(own, scenes)]
    return {"images": np.stack(images), "captions": captions, "names": [p.name for p in files]}


@torch.no_grad()
def encode_latents(vae, images_uint8: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """The VAE's scaled latents of ``[N, H, W, 3] uint8`` images, ``chunk`` at a time, fp32 on the CPU:
    the posterior mean of an AutoencoderKL (deterministic: the same data every run), an AutoencoderTiny's
    ``latents``."""
    device = next(vae.parameters()).device
    latents = []
    for s in range(0, len(images_uint8), chunk):
        images = torch.as_tensor(images_uint8[s:s + chunk]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        enc = vae.encode(images)
        latents.append(((enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents)  # KL | tiny
                        * vae.config.scaling_factor).float().cpu())
    return torch.cat(latents)


def folder_data(vae, folder: str | os.PathLike, resolution: int, control_type: str | None = None,
                **caption_options) -> dict:
    """A folder's images as training pairs, shaped as ``world_data``'s: zero ``noise`` (these methods draw
    their own), ``latents``, ``prompts`` and, for a ControlNet, ``maps`` ``[N, R, R, 3] uint8`` made by
    the live loop's own extractor (``sdxs_core.control.extract``), so training sees what inference will.
    ``caption_options``: those of ``read_image_folder``."""
    kind = None if control_type is None else control_kind(control_type, "control_type")
    data = read_image_folder(folder, resolution, **caption_options)
    latents = encode_latents(vae, data["images"])
    out = {"noise": torch.zeros_like(latents), "latents": latents, "prompts": data["captions"]}
    if kind is not None:
        out["maps"] = np.stack([extract(kind, im, size=resolution).image for im in data["images"]])
    return out
