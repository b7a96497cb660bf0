"""Pixel-space DDPM teacher: a diffusers ``UNet2DModel`` + its scheduler (DDPMPipeline folder layout).

Folder layout (read by :meth:`DDPMGenerator.from_checkpoint` / ``from_pretrained``, written by
``save_pretrained``; it is what ``labelgen train-generator --backend ddpm`` writes too)::

    model_index.json                          {"_class_name": "DDPMPipeline", "unet": [...], "scheduler": [...]}
    unet/config.json                          UNet2DModel config
    unet/diffusion_pytorch_model.safetensors  UNet weights
    scheduler/scheduler_config.json           DDPMScheduler config
    generator_config.json                     labelgen: {"backend": "ddpm", timesteps, feature_layers, ...}
                                              (optional when loading; absent in plain diffusers folders)

Features and sampling: see :mod:`labelgen.generators.diffusion` (up-block features at ``timesteps``,
level-major flat order; DDIM sampling with ``ddim_steps``). Recipe: ``{"seed", "ddim_steps"}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from labelgen.errors import LabelgenError
from labelgen.generators.base import MACHINE_OPTIONS, CONFIG_NAME, check_options, require_checkpoint
from labelgen.generators.diffusion import DEFAULT_TIMESTEPS, PixelDiffusionGenerator, machine_options, plain_config

MODEL_INDEX = "model_index.json"
OPTION_KEYS = ("timesteps", "feature_layers", "ddim_steps", "noise_seed", "bf16", "channels_last", "compile",
               "max_batch")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise LabelgenError(f"{path.parent}: no {path.name} (not a {what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LabelgenError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise LabelgenError(f"{path}: expected a JSON object")
    return data


def write_labelgen_config(folder: Path, backend: str, config: dict[str, Any], skip: tuple[str, ...]) -> None:
    from labelgen.data.io import atomic_write_bytes

    options = {k: v for k, v in config.items() if k not in skip and k not in MACHINE_OPTIONS}
    atomic_write_bytes(folder / CONFIG_NAME, json.dumps({"backend": backend, **options}, indent=2).encode())


def read_labelgen_options(folder: Path, backend: str) -> dict[str, Any]:
    """Feature options saved next to a diffusers folder (empty when it is a plain diffusers folder)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        return {}
    saved = _read_json(path, "labelgen generator")
    if saved.pop("backend", backend) != backend:
        raise LabelgenError(f"{folder}: holds a different generator backend, not {backend!r}")
    return {k: v for k, v in saved.items() if k in OPTION_KEYS and k not in MACHINE_OPTIONS}  # see MACHINE_OPTIONS


class DDPMGenerator(PixelDiffusionGenerator):
    backend = "ddpm"

    def __init__(self, unet_config: dict[str, Any], scheduler_config: dict[str, Any] | None = None,
                 timesteps: list[int] | None = None, feature_layers: list[int] | None = None, ddim_steps: int = 50,
                 noise_seed: int = 0, bf16: bool | str = "auto", channels_last: bool | str = "auto",
                 compile: bool | str = "auto", max_batch: int = 16, _unet=None):
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

        scheduler_config = plain_config(scheduler_config or DDPMScheduler().config)
        unet = _unet if _unet is not None else UNet2DModel.from_config(dict(unet_config))
        super().__init__({"unet_config": plain_config(unet.config), "scheduler_config": scheduler_config,
                          "timesteps": list(DEFAULT_TIMESTEPS if timesteps is None else timesteps),
                          "feature_layers": feature_layers, "ddim_steps": int(ddim_steps), "noise_seed": int(noise_seed),
                          **machine_options(bf16, channels_last, compile), "max_batch": int(max_batch)})
        self.unet = unet
        if self.unet.config.in_channels != 3 or self.unet.config.out_channels != 3:
            raise LabelgenError("ddpm: the UNet must map 3 to 3 channels (RGB pixel space)")
        self.scheduler_config = scheduler_config
        self.noise_scheduler = DDIMScheduler.from_config(scheduler_config)  # add_noise + alphas
        self._setup_features(timesteps, feature_layers, self.noise_scheduler.config.num_train_timesteps)

    @property
    def resolution(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def unet_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample

    # ---- diffusers folder layout ----
    def save_pretrained(self, folder: Path | str) -> None:
        import diffusers
        from diffusers import DDPMScheduler

        from labelgen.data.io import atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
        atomic_write_bytes(folder / MODEL_INDEX, json.dumps(index, indent=2).encode())
        write_labelgen_config(folder, self.backend, self.config, skip=("unet_config", "scheduler_config"))

    @classmethod
    def from_pretrained(cls, folder: Path | str, **options) -> "DDPMGenerator":
        from diffusers import UNet2DModel

        folder = Path(folder)
        if not (folder / "unet").is_dir():
            raise LabelgenError(f"{folder}: not a DDPM folder (expected unet/ and scheduler/ as written by "
                                "DDPMPipeline.save_pretrained)")
        scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json", "DDPM scheduler folder")
        unet_config = _read_json(folder / "unet" / "config.json", "diffusers UNet folder")
        if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise LabelgenError(f"{folder}/unet: a {unet_config['_class_name']}, not a UNet2DModel "
                                "(Stable Diffusion folders: use --backend stable-diffusion)")
        try:
            unet = UNet2DModel.from_pretrained(str(folder / "unet"))
        except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError for missing/bad weights
            raise LabelgenError(f"{folder}/unet: cannot load the UNet ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [''])[0][:160]})") from None
        kwargs = {**read_labelgen_options(folder, cls.backend), **options}
        return cls(unet_config=plain_config(unet.config), scheduler_config=scheduler_config, _unet=unet,
                   **kwargs).eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, **options) -> "DDPMGenerator":
        """A local DDPMPipeline folder; options: timesteps, feature_layers, ddim_steps, noise_seed, bf16,
        channels_last, compile, max_batch."""
        check_options("ddpm", options, OPTION_KEYS)
        require_checkpoint("ddpm", checkpoint, "a local DDPMPipeline folder with unet/ and scheduler/, e.g. from "
                           "`labelgen train-generator --backend ddpm`")
        if not Path(checkpoint).is_dir():
            raise LabelgenError(f"{checkpoint}: not a folder (a DDPM checkpoint is a DDPMPipeline folder)")
        return cls.from_pretrained(checkpoint, **options)
