"""The SDXS results table's cost columns: parameters and FLOPs come from the loaded U-Net itself."""

from benchmarks.miniature_sdxs import rows_to_run, unet_cost
from sdxs_core import load_engine
from sdxs_core.architectures import count_params
from sdxs_core.testkit import write_tiny_pipeline


def test_unet_cost_counts_the_loaded_unet(tiny_dir, tmp_path):
    small = load_engine(tiny_dir, device="cpu")
    params, gflops = unet_cost(small)
    assert params == count_params(small.unet) and gflops > 0
    wide = load_engine(write_tiny_pipeline(tmp_path / "wide", cross_attention_dim=48), device="cpu")
    wide_params, wide_gflops = unet_cost(wide)
    assert wide_params > params and wide_gflops > gflops  # wider cross-attention costs more


def test_rows_follow_the_results_contract(tmp_path):
    teacher, decoder = tmp_path / "teacher", tmp_path / "decoder" / "final"
    rows = rows_to_run(teacher, tmp_path, 25, 5.0, decoder)
    assert [r[0] for r in rows] == ["teacher", "teacher", "KD student", "MSE one-step", "FM-only one-step",
                                    "FM+SSD one-step", "FM+SSD one-step + tiny decoder"]
    assert [(r[2], r[3]) for r in rows] == [(25, 5.0), (1, 0.0), (25, 5.0), (1, 0.0), (1, 0.0), (1, 0.0), (1, 0.0)]
    # the U-Net rows share one decoder, the teacher's VAE; only the shipped configuration uses the tiny one
    assert [r[4] for r in rows] == [teacher] * 6 + [decoder]
    assert rows[-1][1] == rows[-2][1]


def test_kd_fidelity_is_zero_for_the_teacher_itself_and_grows_with_noise_in_x0(tiny_dir):
    import copy

    import torch

    from benchmarks.kd_fidelity import fidelity
    from trainers.core.components import load_components

    torch.set_num_threads(1)
    teacher = load_components(tiny_dir, "cpu")
    same = fidelity(teacher, teacher["unet"], n=8, timesteps=(50, 999), batch=4)
    assert [r["t"] for r in same] == [50, 999]
    assert all(r["eps_mse"] == 0 and r["x0_mse"] == 0 and r["teacher_x0_err"] == r["student_x0_err"] > 0 for r in same)
    student = copy.deepcopy(teacher["unet"])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    low, high = fidelity(teacher, student, n=8, timesteps=(50, 999), batch=4)
    assert low["eps_mse"] > 0 and high["x0_mse"] > 10 * low["x0_mse"]  # an epsilon error weighs most at high noise
