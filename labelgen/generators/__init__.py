"""Generator backends behind one interface (:class:`~labelgen.generators.base.Generator`).

    create_generator("stylegan2", resolution=(64, 64), ...)   new model from constructor arguments
    from_checkpoint("stylegan2", "ffhq.pkl")                   a published checkpoint (NVlabs .pkl,
                                                               diffusers folder, DCGAN state dict)
    load_generator("path/to/saved")                            a folder written by save_pretrained

Backends are imported lazily: each registry entry names ``module:Class``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from labelgen.errors import LabelgenError
from labelgen.generators.base import CONFIG_NAME, Generator, GeneratorOutput

BACKENDS: dict[str, str] = {
    "stylegan2": "labelgen.generators.stylegan2:StyleGAN2Generator",
    "ddpm": "labelgen.generators.ddpm:DDPMGenerator",
    "stable-diffusion": "labelgen.generators.stable_diffusion:StableDiffusionGenerator",
    "dcgan": "labelgen.generators.dcgan:DCGANGenerator",
}

__all__ = ["BACKENDS", "Generator", "GeneratorOutput", "generator_class", "create_generator", "from_checkpoint",
           "load_generator"]


def generator_class(backend: str) -> type[Generator]:
    if backend not in BACKENDS:
        raise LabelgenError(f"unknown generator backend {backend!r} (one of {', '.join(BACKENDS)})")
    module_name, class_name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_generator(backend: str, **config: Any) -> Generator:
    """A new (randomly initialised) generator of ``backend`` built from constructor arguments."""
    return generator_class(backend)(**config)


def from_checkpoint(backend: str, checkpoint: Path | str | None, **options: Any) -> Generator:
    """Load a published/pretrained checkpoint of ``backend`` (refusing bad ones with a clear error)."""
    return generator_class(backend).from_checkpoint(checkpoint, **options)


def load_generator(folder: Path | str) -> Generator:
    """Rebuild a generator saved with ``save_pretrained`` (config JSON + safetensors)."""
    import json

    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise LabelgenError(f"{folder}: no {CONFIG_NAME} (not a saved labelgen generator)")
    config = json.loads(config_path.read_text())
    return generator_class(config.pop("backend")).from_pretrained(folder)
