"""Pinned numbers of the SSD family and the pair caches on tiny random models with fixed seeds.

Each case trains a few steps and compares every logged loss and a checksum of every trained network
(and the pair caches' tensors) with the values this code produced before the trainers were restructured:
a refactor that changes what is computed fails here, one that only moves code passes. The tolerance
(relative 1e-5) absorbs another CPU's float rounding, not a change of behaviour.

To re-pin after an intended change of behaviour: ``python -m tests.test_trainers_reference``.
"""

import dataclasses
import json
import math

import pytest
import torch

SMALL = dict(batch_size=2, num_pairs=4, teacher_steps=2, num_prompts=8, max_steps=3, checkpoint_every=100,
             validate_every=0, log_every=1, val_prompts=["a b"], lr=1e-3)


def _classes():
    """The method classes by the name a config's ``method`` key gives them."""
    from trainers.methods.controlnet_kd import ControlNetKD
    from trainers.methods.controlnet_ssd import ControlNetSSD
    from trainers.methods.controlnet_teacher import ControlNetTeacher
    from trainers.methods.lora_ssd import LoRASSD
    from trainers.methods.ssd import SSD

    return {"ssd": SSD, "lora_ssd": LoRASSD, "controlnet_kd": ControlNetKD, "controlnet_ssd": ControlNetSSD,
            "controlnet_teacher": ControlNetTeacher}


def _run(method_name, teacher, run_dir, **kw):
    from trainers.core.config import load_config
    from trainers.core.loop import train

    cls = _classes()[method_name]
    torch.set_num_threads(1)
    known = {f.name for f in dataclasses.fields(cls.config_cls)}
    small = {k: v for k, v in SMALL.items() if k in known}
    cfg = load_config(cls.config_cls, None, {**small, "teacher": str(teacher), "run_dir": str(run_dir), **kw})
    method = cls(cfg.validate())
    train(cfg, method)
    return method


def _digest(method, run_dir) -> dict:
    """Every numeric log value per step, and per trained network the sum and absolute sum of its weights."""
    from trainers.core.losses import unwrap

    logs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    out = {"logs": [{k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("time", "seconds",
                                                                                                  "step_seconds")}
                    for row in logs]}
    for name, net in sorted(method.nets.items()):
        params = [p.detach().double() for p in unwrap(net).parameters()]
        out[f"net/{name}"] = [sum(p.sum().item() for p in params), sum(p.abs().sum().item() for p in params)]
    return out


def _pairs_digest(path) -> dict:
    from trainers.core.pairs import read_pairs

    pairs, _ = read_pairs(path)
    return {k: [pairs[k].double().sum().item(), pairs[k].double().abs().sum().item()] for k in ("noise", "latents")} | \
        {"prompts": pairs["prompts"]}


def _cn_models(root):
    from sdxs_core.testkit import write_tiny_controlnet
    from trainers.core.components import load_components
    from trainers.core.pipeline_folder import save_pipeline_folder
    from trainers.core.student import build_student
    from trainers.miniature.testing import write_tiny_teacher

    teacher = write_tiny_teacher(root / "teacher")
    teacher_cn = write_tiny_controlnet(teacher, root / "teacher-cn")
    components = load_components(teacher, "cpu")
    unet, _ = build_student("block_removed", components["unet"])
    student = save_pipeline_folder(root / "student", components, unet=unet)
    return {"teacher": teacher, "teacher_cn": teacher_cn, "student": student}


def compute(root) -> dict:
    """The pinned quantities, computed in the folder ``root``."""
    from sdxs_core.testkit import write_tiny_lora, write_tiny_pipeline

    tiny = write_tiny_pipeline(root / "tiny")
    style = write_tiny_lora(tiny, root / "style", fmt="peft")
    got = {}
    m = _run("ssd", tiny, root / "ssd", batch_size=4, fresh_ratio=0.5)
    got["ssd"] = _digest(m, root / "ssd")
    got["pairs"] = _pairs_digest(root / "ssd" / "pairs.safetensors")
    m = _run("lora_ssd", tiny, root / "lora", style_lora=str(style), lora_rank=2, lora_alpha=4.0,
             restyle_strength=0.5, lambda_layout=0.5)
    got["lora_ssd_restyled"] = _digest(m, root / "lora")
    got["pairs_restyled"] = _pairs_digest(root / "lora" / "pairs-restyled.safetensors")
    m = _run("lora_ssd", tiny, root / "lora2", style_lora=str(style), lora_rank=2, lora_alpha=4.0,
             fresh_ratio=0.5, teacher_takes_lora=False, student_every=2)
    got["lora_ssd_plain_teacher"] = _digest(m, root / "lora2")
    m = _run("lora_ssd", tiny, root / "lora3", style_lora=str(style), lora_rank=2, lora_alpha=4.0)
    got["pairs_styled"] = _pairs_digest(root / "lora3" / "pairs-style.safetensors")
    got["lora_ssd"] = _digest(m, root / "lora3")
    cn = _cn_models(root / "cn")
    common = dict(student=str(cn["student"]), teacher_controlnet=str(cn["teacher_cn"]),
                  pair_cache=str(root / "cn" / "pairs.safetensors"))
    m = _run("controlnet_kd", cn["teacher"], root / "kd", **common)
    got["controlnet_kd"] = _digest(m, root / "kd")
    m = _run("controlnet_kd", cn["teacher"], root / "kdw", control_source="world", control_type="edges",
             **common)
    got["controlnet_kd_world"] = _digest(m, root / "kdw")
    m = _run("controlnet_ssd", cn["teacher"], root / "cnssd", controlnet=str(root / "kd" / "final"),
             fresh_noise_ratio=0.5, control_type="none", **common)
    got["controlnet_ssd"] = _digest(m, root / "cnssd")
    m = _run("controlnet_teacher", cn["teacher"], root / "cnt", control_type="depth", num_images=2, max_steps=2,
             val_steps=1)
    got["controlnet_teacher"] = _digest(m, root / "cnt")
    return got


def _close(got, want, where=""):
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _close(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=2e-6), f"{where}: {got!r} != pinned {want!r}"
    else:
        assert got == want, where


PINNED = {'controlnet_kd': {'logs': [{'controlnet/fkd': 1.449253,
                             'controlnet/grad_norm': 1.669593,
                             'controlnet/loss': 1.498976,
                             'controlnet/lr': 0.001,
                             'controlnet/okd': 0.049723,
                             'images_seen': 2,
                             'step': 1},
                            {'controlnet/fkd': 2.567672,
                             'controlnet/grad_norm': 2.993363,
                             'controlnet/loss': 2.617677,
                             'controlnet/lr': 0.001,
                             'controlnet/okd': 0.050004,
                             'images_seen': 4,
                             'step': 2},
                            {'controlnet/fkd': 2.865942,
                             'controlnet/grad_norm': 3.750969,
                             'controlnet/loss': 2.938148,
                             'controlnet/lr': 0.001,
                             'controlnet/okd': 0.072207,
                             'images_seen': 6,
                             'step': 3}],
                   'net/controlnet': [280.9710211926931, 6368.130047561007]},
 'controlnet_kd_world': {'logs': [{'controlnet/fkd': 0.328332,
                                   'controlnet/grad_norm': 0.219144,
                                   'controlnet/loss': 0.436695,
                                   'controlnet/lr': 0.001,
                                   'controlnet/okd': 0.108363,
                                   'images_seen': 2,
                                   'step': 1},
                                  {'controlnet/fkd': 0.322581,
                                   'controlnet/grad_norm': 0.218028,
                                   'controlnet/loss': 0.434093,
                                   'controlnet/lr': 0.001,
                                   'controlnet/okd': 0.111513,
                                   'images_seen': 4,
                                   'step': 2},
                                  {'controlnet/fkd': 0.31218,
                                   'controlnet/grad_norm': 0.226105,
                                   'controlnet/loss': 0.422551,
                                   'controlnet/lr': 0.001,
                                   'controlnet/okd': 0.110371,
                                   'images_seen': 6,
                                   'step': 3}],
                         'net/controlnet': [282.8917565042975, 6367.165907171122]},
 'controlnet_ssd': {'logs': [{'alpha': 0.76667,
                              'controlnet/fm': 0.667847,
                              'controlnet/grad_norm': 5.955468,
                              'controlnet/loss': 6.680727,
                              'controlnet/lr': 0.001,
                              'controlnet/sd': 0.00226,
                              'controlnet/sd_grad_abs': 0.047429,
                              'controlnet/t_mean': 345.0,
                              'images_seen': 2,
                              'lambda_fm': 7.0,
                              'online_dm/denoise': 1.265789,
                              'online_dm/grad_norm': 1.293644,
                              'online_dm/loss': 1.265789,
                              'online_dm/lr': 0.001,
                              'step': 1},
                             {'alpha': 0.63333,
                              'controlnet/fm': 0.702794,
                              'controlnet/grad_norm': 12.479076,
                              'controlnet/loss': 4.924795,
                              'controlnet/lr': 0.001,
                              'controlnet/sd': 0.005237,
                              'controlnet/sd_grad_abs': 0.08067,
                              'controlnet/t_mean': 643.0,
                              'images_seen': 4,
                              'lambda_fm': 4.0,
                              'online_dm/denoise': 1.058415,
                              'online_dm/grad_norm': 0.902367,
                              'online_dm/loss': 1.058415,
                              'online_dm/lr': 0.001,
                              'step': 2},
                             {'alpha': 0.5,
                              'controlnet/fm': 0.660411,
                              'controlnet/grad_norm': 1.813414,
                              'controlnet/loss': 2.648767,
                              'controlnet/lr': 0.001,
                              'controlnet/sd': 0.007122,
                              'controlnet/sd_grad_abs': 0.089217,
                              'controlnet/t_mean': 177.0,
                              'images_seen': 6,
                              'lambda_fm': 1.0,
                              'online_dm/denoise': 0.999565,
                              'online_dm/grad_norm': 1.078858,
                              'online_dm/loss': 0.999565,
                              'online_dm/lr': 0.001,
                              'step': 3}],
                    'net/controlnet': [279.66713763513553, 6385.297136693831],
                    'net/online_dm': [2590.132785515947, 35351.25053739367]},
 'controlnet_teacher': {'logs': [{'controlnet/denoise': 1.034374,
                                  'controlnet/grad_norm': 0.199527,
                                  'controlnet/loss': 1.034374,
                                  'controlnet/lr': 0.001,
                                  'images_seen': 2,
                                  'step': 1},
                                 {'controlnet/denoise': 0.944253,
                                  'controlnet/grad_norm': 0.210938,
                                  'controlnet/loss': 0.944253,
                                  'controlnet/lr': 0.001,
                                  'images_seen': 4,
                                  'step': 2}],
                        'net/controlnet': [1072.5150717026504, 17792.559566465883]},
 'lora_ssd': {'logs': [{'alpha': 0.76667,
                        'images_seen': 2,
                        'lambda_fm': 7.0,
                        'online_dm/denoise': 1.074271,
                        'online_dm/grad_norm': 1.336201,
                        'online_dm/loss': 1.074271,
                        'online_dm/lr': 0.001,
                        'step': 1,
                        'student/fm': 0.371054,
                        'student/grad_norm': 1.027027,
                        'student/loss': 3.716815,
                        'student/lr': 0.001,
                        'student/sd': 0.006276,
                        'student/sd_grad_abs': 0.084478,
                        'student/t_mean': 197.5},
                       {'alpha': 0.63333,
                        'images_seen': 4,
                        'lambda_fm': 4.0,
                        'online_dm/denoise': 0.997307,
                        'online_dm/grad_norm': 1.443536,
                        'online_dm/loss': 0.997307,
                        'online_dm/lr': 0.001,
                        'step': 2,
                        'student/fm': 0.152365,
                        'student/grad_norm': 0.575288,
                        'student/loss': 1.074255,
                        'student/lr': 0.001,
                        'student/sd': 0.0077,
                        'student/sd_grad_abs': 0.093059,
                        'student/t_mean': 458.0},
                       {'alpha': 0.5,
                        'images_seen': 6,
                        'lambda_fm': 1.0,
                        'online_dm/denoise': 0.967378,
                        'online_dm/grad_norm': 1.367218,
                        'online_dm/loss': 0.967378,
                        'online_dm/lr': 0.001,
                        'step': 3,
                        'student/fm': 0.222249,
                        'student/grad_norm': 0.426743,
                        'student/loss': 0.911347,
                        'student/lr': 0.001,
                        'student/sd': 0.022351,
                        'student/sd_grad_abs': 0.164256,
                        'student/t_mean': 452.5}],
              'net/online_dm': [1607.176728971036, 28506.52469240345],
              'net/student': [1615.064296460887, 28664.138526765884]},
 'lora_ssd_plain_teacher': {'logs': [{'alpha': 0.76667,
                                      'images_seen': 2,
                                      'lambda_fm': 0.7,
                                      'online_dm/denoise': 1.260528,
                                      'online_dm/grad_norm': 1.706774,
                                      'online_dm/loss': 1.260528,
                                      'online_dm/lr': 0.001,
                                      'step': 1,
                                      'student/fm': 0.094122,
                                      'student/grad_norm': 0.138578,
                                      'student/loss': 0.101627,
                                      'student/lr': 0.001,
                                      'student/sd': 0.007505,
                                      'student/sd_grad_abs': 0.087375,
                                      'student/t_mean': 345.0},
                                     {'alpha': 0.63333,
                                      'images_seen': 4,
                                      'lambda_fm': 0.4,
                                      'online_dm/denoise': 1.059716,
                                      'online_dm/grad_norm': 1.206862,
                                      'online_dm/loss': 1.059716,
                                      'online_dm/lr': 0.001,
                                      'step': 2},
                                     {'alpha': 0.5,
                                      'images_seen': 6,
                                      'lambda_fm': 0.1,
                                      'online_dm/denoise': 0.974768,
                                      'online_dm/grad_norm': 1.336565,
                                      'online_dm/loss': 0.974768,
                                      'online_dm/lr': 0.001,
                                      'step': 3,
                                      'student/fm': 0.091889,
                                      'student/grad_norm': 0.092049,
                                      'student/loss': 0.05108,
                                      'student/lr': 0.001,
                                      'student/sd': 0.014325,
                                      'student/sd_grad_abs': 0.127358,
                                      'student/t_mean': 177.0}],
                            'net/online_dm': [1615.4088298617517, 28514.759595847874],
                            'net/student': [1615.2517779819773, 28663.313622851136]},
 'lora_ssd_restyled': {'logs': [{'alpha': 0.76667,
                                 'images_seen': 2,
                                 'lambda_fm': 7.0,
                                 'online_dm/denoise': 1.074271,
                                 'online_dm/grad_norm': 1.336201,
                                 'online_dm/loss': 1.074271,
                                 'online_dm/lr': 0.001,
                                 'step': 1,
                                 'student/fm': 0.248592,
                                 'student/grad_norm': 1.345436,
                                 'student/layout': 0.0,
                                 'student/loss': 2.492193,
                                 'student/lr': 0.001,
                                 'student/sd': 0.006276,
                                 'student/sd_grad_abs': 0.084478,
                                 'student/t_mean': 197.5},
                                {'alpha': 0.63333,
                                 'images_seen': 4,
                                 'lambda_fm': 4.0,
                                 'online_dm/denoise': 0.997344,
                                 'online_dm/grad_norm': 1.443705,
                                 'online_dm/loss': 0.997344,
                                 'online_dm/lr': 0.001,
                                 'step': 2,
                                 'student/fm': 0.102321,
                                 'student/grad_norm': 1.092969,
                                 'student/layout': 1e-06,
                                 'student/loss': 0.723952,
                                 'student/lr': 0.001,
                                 'student/sd': 0.007702,
                                 'student/sd_grad_abs': 0.093056,
                                 'student/t_mean': 458.0},
                                {'alpha': 0.5,
                                 'images_seen': 6,
                                 'lambda_fm': 1.0,
                                 'online_dm/denoise': 0.967412,
                                 'online_dm/grad_norm': 1.36699,
                                 'online_dm/loss': 0.967412,
                                 'online_dm/lr': 0.001,
                                 'step': 3,
                                 'student/fm': 0.118339,
                                 'student/grad_norm': 0.766872,
                                 'student/layout': 1e-06,
                                 'student/loss': 0.495705,
                                 'student/lr': 0.001,
                                 'student/sd': 0.02235,
                                 'student/sd_grad_abs': 0.164259,
                                 'student/t_mean': 452.5}],
                       'net/online_dm': [1607.1593558340855, 28506.524983019473],
                       'net/student': [1614.9614532409196, 28664.127938815996]},
 'pairs': {'latents': [1811.5480406386778, 12837.808973615058],
           'noise': [25.20901934271751, 806.7479771099061],
           'prompts': ['a white square below an orange circle on a black background',
                       'a cyan diamond to the left of a cyan circle on a pink background',
                       'a cyan cross on the left on a gray background',
                       'a red cross in the center on a pink background']},
 'pairs_restyled': {'latents': [1914.5266095846891, 14098.418843943626],
                    'noise': [25.20901934271751, 806.7479771099061],
                    'prompts': ['a white square below an orange circle on a black background',
                                'a cyan diamond to the left of a cyan circle on a pink background',
                                'a cyan cross on the left on a gray background',
                                'a red cross in the center on a pink background']},
 'pairs_styled': {'latents': [2081.4279477577657, 12786.387020142749],
                  'noise': [25.20901934271751, 806.7479771099061],
                  'prompts': ['a white square below an orange circle on a black background',
                              'a cyan diamond to the left of a cyan circle on a pink background',
                              'a cyan cross on the left on a gray background',
                              'a red cross in the center on a pink background']},
 'ssd': {'logs': [{'alpha': 0.76667,
                   'images_seen': 4,
                   'lambda_fm': 7.0,
                   'online_dm/denoise': 1.130846,
                   'online_dm/grad_norm': 0.939089,
                   'online_dm/loss': 1.130846,
                   'online_dm/lr': 0.001,
                   'step': 1,
                   'student/fm': 0.219817,
                   'student/grad_norm': 93.26606,
                   'student/loss': 2.20345,
                   'student/lr': 0.001,
                   'student/sd': 0.005285,
                   'student/sd_grad_abs': 0.074829,
                   'student/t_mean': 307.25},
                  {'alpha': 0.63333,
                   'images_seen': 8,
                   'lambda_fm': 4.0,
                   'online_dm/denoise': 1.157256,
                   'online_dm/grad_norm': 1.107048,
                   'online_dm/loss': 1.157256,
                   'online_dm/lr': 0.001,
                   'step': 2,
                   'student/fm': 0.671267,
                   'student/grad_norm': 46.993393,
                   'student/loss': 4.71426,
                   'student/lr': 0.001,
                   'student/sd': 0.015389,
                   'student/sd_grad_abs': 0.128875,
                   'student/t_mean': 566.75},
                  {'alpha': 0.5,
                   'images_seen': 12,
                   'lambda_fm': 1.0,
                   'online_dm/denoise': 1.062414,
                   'online_dm/grad_norm': 1.021183,
                   'online_dm/loss': 1.062414,
                   'online_dm/lr': 0.001,
                   'step': 3,
                   'student/fm': 0.608453,
                   'student/grad_norm': 12.755936,
                   'student/loss': 2.447134,
                   'student/lr': 0.001,
                   'student/sd': 0.013324,
                   'student/sd_grad_abs': 0.122965,
                   'student/t_mean': 272.0}],
         'net/online_dm': [1606.1538541763657, 28510.81266983924],
         'net/student': [1611.9918451738877, 28516.844809922848]}}


@pytest.mark.skipif(PINNED is None, reason="no pinned values yet")
def test_ssd_family_and_pair_caches_match_the_pinned_numbers(tmp_path):
    _close(compute(tmp_path), PINNED)


if __name__ == "__main__":
    import os
    import pprint
    import sys
    import tempfile
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as d:
        values = compute(Path(d))
    text = Path(__file__).read_text()
    start = text.index("PINNED = ")
    end = text.index("\n\n\n", start)
    Path(__file__).write_text(text[:start] + "PINNED = " + pprint.pformat(values, width=116, sort_dicts=True) + text[end:])
    print("pinned", len(values), "cases", file=sys.stderr)
