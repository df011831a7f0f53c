"""The command line, run in-process through ``main(argv)``."""

from PIL import Image

from sdxs_core.cli import main


def test_generate_writes_images(tiny_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "a red circle", "--out", str(out),
                 "--seed", "5", "--num-images", "2"]) == 0
    first, second = Image.open(tmp_path / "img-0.png"), Image.open(tmp_path / "img-1.png")
    assert first.size == (64, 64) and first.tobytes() != second.tobytes()
    assert "seed=6" in capsys.readouterr().out


def test_generate_with_controlnet_and_lora(tiny_dir, tiny_controlnet_dir, tiny_lora_file, tmp_path):
    control = tmp_path / "control.png"
    Image.new("RGB", (120, 90), "white").save(control)
    out = tmp_path / "c.png"
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "a", "--out", str(out), "--seed", "1",
                 "--controlnet", str(tiny_controlnet_dir), "--control-image", str(control), "--control-type", "canny",
                 "--lora", str(tiny_lora_file), "--lora-scale", "0.5"]) == 0
    assert Image.open(out).size == (64, 64)


def test_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "a", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no pipeline at") and "Traceback" not in err
    assert main(["generate", "--model", "sdxs-512-0.9", "--prompt", "a", "--out", str(tmp_path / "x.png")]) == 2
    assert "hf download IDKiro/sdxs-512-0.9" in capsys.readouterr().err


def test_control_image_without_controlnet(tiny_dir, tmp_path, capsys):
    control = tmp_path / "control.png"
    Image.new("RGB", (64, 64)).save(control)
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "a", "--out", str(tmp_path / "x.png"),
                 "--control-image", str(control)]) == 2
    assert "needs a ControlNet" in capsys.readouterr().err


def test_info_lists_presets_and_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "sdxs-512-dreamshaper-sketch" in out and "controlnet" in out
