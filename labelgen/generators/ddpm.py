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
from labelgen.generators.base import MACHINE_OPTIONS, CONFIG_NAME, Generator, check_options, require_checkpoint
from labelgen.generators.diffusion import PixelDiffusionGenerator, plain_config

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


def write_labelgen_config(folder: Path, generator: Generator, skip: tuple[str, ...], extra: dict | None) -> None:
    """generator_config.json beside a diffusers folder: the saved config less what the diffusers files hold."""
    from labelgen.data.io import atomic_write_json

    saved = generator.config_to_save(extra)
    atomic_write_json(folder / CONFIG_NAME, {k: v for k, v in saved.items() if k not in skip})


def load_diffusers_model(model_class, folder: Path, what: str):
    """A diffusers model (UNet, VAE) from its folder. Safetensors weights holding a tensor of another shape than
    config.json builds are labelgen.pretrained's one error (the file's header against a model built on the meta
    device: nothing allocated); names (older layouts diffusers renames), sharded or .bin weights and anything else
    diffusers refuses: one line."""
    from labelgen.pretrained import check_shapes, file_shapes

    weights = folder / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        with torch.device("meta"):
            model = model_class.from_config(_read_json(folder / "config.json", f"diffusers {what} folder"))
        check_shapes(model.state_dict(), file_shapes(weights), weights,
                     f"{model_class.__name__} of {folder / 'config.json'}", names_too=False)
    try:
        return model_class.from_pretrained(str(folder))
    except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError for missing/bad weights
        raise LabelgenError(f"{folder}: cannot load the {what} ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]})") from None


def read_labelgen_options(folder: Path, generator_class: type[Generator]) -> dict[str, Any]:
    """Feature options saved next to a diffusers folder (empty when it is a plain diffusers folder)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        return {}
    saved = _read_json(path, "labelgen generator")
    generator_class.class_of(saved, path)  # another backend's folder: one line
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
        super().__init__({"unet_config": plain_config(unet.config), "scheduler_config": scheduler_config})
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
    def save_pretrained(self, folder: Path | str, extra: dict[str, Any] | None = None) -> None:
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
        write_labelgen_config(folder, self, ("unet_config", "scheduler_config"), extra)

    @classmethod
    def build_pretrained(cls, folder: Path, **options) -> "DDPMGenerator":
        """A DDPMPipeline folder (generator_config.json optional)."""
        from diffusers import UNet2DModel

        if not (folder / "unet").is_dir():
            raise LabelgenError(f"{folder}: not a DDPM folder (expected unet/ and scheduler/ as written by "
                                "DDPMPipeline.save_pretrained)")
        scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json", "DDPM scheduler folder")
        unet_config = _read_json(folder / "unet" / "config.json", "diffusers UNet folder")
        if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise LabelgenError(f"{folder}/unet: a {unet_config['_class_name']}, not a UNet2DModel "
                                "(Stable Diffusion folders: use --backend stable-diffusion)")
        unet = load_diffusers_model(UNet2DModel, folder / "unet", "UNet")
        kwargs = {**read_labelgen_options(folder, cls), **options}
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
        return cls.build_pretrained(Path(checkpoint), **options)
