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
    rows = rows_to_run(tmp_path / "teacher", tmp_path, 25, 5.0)
    assert [r[0] for r in rows] == ["teacher", "teacher", "KD student", "MSE one-step", "FM-only one-step",
                                    "FM+SSD one-step"]
    assert [(r[2], r[3]) for r in rows] == [(25, 5.0), (1, 0.0), (25, 5.0), (1, 0.0), (1, 0.0), (1, 0.0)]
