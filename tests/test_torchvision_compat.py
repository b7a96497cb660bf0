import subprocess
import sys

import torch

from labelgen import torchvision_compat


def test_torchvision_dependent_libraries_import():
    # smp, timm and diffusers' UNet all import torchvision; with the shim they import on this torch.
    import segmentation_models_pytorch as smp
    import timm  # noqa: F401
    from diffusers import UNet2DModel  # noqa: F401

    model = smp.Unet("resnet18", encoder_weights=None, classes=3)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_install_is_idempotent_and_reports_what_it_patched():
    first = torchvision_compat.install()
    assert torchvision_compat.install() == first
    for name in first:  # every patched op has a schema; calling it gives a clear error
        assert torch._C._get_schema(f"torchvision::{name}", "") is not None


def test_patched_op_raises_clear_error_when_called():
    if "nms" not in torchvision_compat.patched_ops:
        return  # torchvision's real ops loaded here: nothing was patched, nms really works
    import torchvision  # noqa: F401

    try:
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except (RuntimeError, NotImplementedError) as e:
        assert "unavailable" in str(e)
    else:
        raise AssertionError("patched nms did not raise")


def test_plain_import_without_shim_fails_on_this_torch_only_when_extension_is_broken():
    """Documents why the shim exists: where the extension cannot load, torchvision alone fails."""
    code = "import torchvision"
    env_off = {"LABELGEN_NO_TORCHVISION_COMPAT": "1"}
    import os

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env_off})
    if torchvision_compat.patched_ops:
        assert result.returncode != 0 and "torchvision::nms does not exist" in result.stderr
    else:
        assert result.returncode == 0
