"""The block-removed student U-Net (paper section 3.1, BK-SDM style) and its initialisation.

From a teacher config: remove the mid stage, the last down stage and the first up stage, and the
transformer blocks of the highest-resolution stage; optionally fewer resnets per stage (SDXS-512
has ``layers_per_block=1``). SD2.1-base's U-Net becomes SDXS-512's layout this way.
"""

import re

import torch
from diffusers import UNet2DConditionModel

_NO_ATTN = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}


def block_removed_config(teacher_config: dict, layers_per_block: int | None = 1) -> dict:
    cfg = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    n = len(cfg["block_out_channels"])
    if n < 2:
        raise ValueError(f"the teacher has {n} stage(s); removing one needs at least 2")
    down = list(cfg["down_block_types"])[:-1]  # the last (lowest-resolution) down stage
    up = list(cfg["up_block_types"])[1:]  # its mirror: the first up stage
    down[0] = _NO_ATTN.get(down[0], down[0])  # highest resolution: no transformer blocks
    up[-1] = _NO_ATTN.get(up[-1], up[-1])
    cfg.update(down_block_types=tuple(down), up_block_types=tuple(up),
               block_out_channels=tuple(cfg["block_out_channels"])[:-1], mid_block_type=None)
    for key in ("attention_head_dim", "num_attention_heads", "transformer_layers_per_block"):
        if isinstance(cfg.get(key), (list, tuple)):
            cfg[key] = tuple(cfg[key])[:-1]
    if layers_per_block is not None:
        cfg["layers_per_block"] = layers_per_block
    return cfg


def _pick(n_student: int, n_teacher: int, keep_last: bool) -> list[int]:
    """Which teacher layer each student layer copies: the first ones (a down stage's first resnet
    changes the width), and in up stages always the last (only it takes the narrower skip)."""
    if n_student > n_teacher:
        raise ValueError(f"student stage has {n_student} layers, the teacher's only {n_teacher}")
    return list(range(n_student - 1)) + [n_teacher - 1] if keep_last else list(range(n_student))


def student_name_map(teacher: UNet2DConditionModel, student: UNet2DConditionModel) -> dict[str, str]:
    """Explicit ``student parameter name -> teacher parameter name`` for a block-removed student
    (down stage i <- i, up stage i <- i + removed stages; layers by ``_pick``)."""
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    up_shift = len(teacher.up_blocks) - len(student.up_blocks)
    s_lpb, t_lpb = student.config.layers_per_block, teacher.config.layers_per_block
    down_pick, up_pick = _pick(s_lpb, t_lpb, False), _pick(s_lpb + 1, t_lpb + 1, True)
    pattern = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")
    stage_pattern = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(.*)$")
    name_map = {}
    for name, tensor in s_sd.items():
        m = pattern.match(name)
        if m:
            kind, i, sub, j, rest = m.groups()
            i, j = int(i), int(j)
            ti = i if kind == "down_blocks" else i + up_shift
            tj = (down_pick if kind == "down_blocks" else up_pick)[j]
            source = f"{kind}.{ti}.{sub}.{tj}.{rest}"
        elif (m := stage_pattern.match(name)):  # downsamplers / upsamplers
            kind, i, rest = m.groups()
            source = f"{kind}.{int(i) if kind == 'down_blocks' else int(i) + up_shift}.{rest}"
        else:  # conv_in, time_embedding, conv_norm_out, conv_out, ...
            source = name
        if source in t_sd and t_sd[source].shape == tensor.shape:
            name_map[name] = source
    return name_map


@torch.no_grad()
def init_from_teacher(student: UNet2DConditionModel, teacher: UNet2DConditionModel) -> tuple[dict[str, str], list[str]]:
    """Copy teacher weights into ``student`` through the explicit name map.
    Returns ``(name_map, not_copied)``: student tensors left at their random init."""
    name_map = student_name_map(teacher, student)
    t_sd = teacher.state_dict()
    student.load_state_dict({**student.state_dict(), **{s: t_sd[t] for s, t in name_map.items()}})
    not_copied = [k for k in student.state_dict() if k not in name_map]
    return name_map, not_copied


def default_block_map(teacher: UNet2DConditionModel, student: UNet2DConditionModel) -> dict[str, str]:
    """Feature-KD pairs ``teacher block -> student block`` whose outputs have equal shapes: every up
    stage, and the down stages that keep their downsampler (the student's last one loses it)."""
    up_shift = len(teacher.up_blocks) - len(student.up_blocks)
    pairs = {f"down_blocks.{i}": f"down_blocks.{i}" for i in range(len(student.down_blocks) - 1)}
    pairs.update({f"up_blocks.{i + up_shift}": f"up_blocks.{i}" for i in range(len(student.up_blocks))})
    return pairs


def build_student(spec: str, teacher_unet: UNet2DConditionModel, layers_per_block: int = 1) -> tuple[UNet2DConditionModel, dict]:
    """The student U-Net from ``spec``: ``copy`` (the teacher's own architecture and weights),
    ``block_removed`` (smaller, initialised from the teacher), or a folder (a pipeline with ``unet/``
    or a U-Net folder, e.g. the output of an earlier method). Returns ``(unet, info)``."""
    from pathlib import Path

    if spec == "copy":
        unet = UNet2DConditionModel.from_config(teacher_unet.config)
        unet.load_state_dict(teacher_unet.state_dict())
        return unet, {"student": "copy"}
    if spec == "block_removed":
        unet = UNet2DConditionModel.from_config(block_removed_config(teacher_unet.config, layers_per_block))
        name_map, not_copied = init_from_teacher(unet, teacher_unet)
        return unet, {"student": "block_removed", "copied": len(name_map), "not_copied": not_copied}
    path = Path(spec)
    path = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (path / "config.json").is_file():
        raise ValueError(f"student={spec!r}: use copy, block_removed, or a pipeline / U-Net folder")
    return UNet2DConditionModel.from_pretrained(path, dtype=torch.float32), {"student": str(path)}
