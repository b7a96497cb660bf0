"""The one interface every generator backend implements.

A backend makes images *with* their multi-scale internal features, recomputes the features of an
image it made from a small JSON-able *recipe* (seed, truncation, ...), and — for diffusion backends —
computes features of any given image (real or generated) by noising it and running one UNet pass.

Shapes (N = batch):
    images    float32 [N, 3, H, W] in [-1, 1]
    features  list of float tensors [N, C_i, h_i, w_i], one per layer in ``feature_channels`` order

Saved like diffusers models: ``save_pretrained(dir)`` writes ``generator_config.json`` (backend name
+ constructor arguments) next to ``generator.safetensors``; :func:`labelgen.generators.load_generator`
rebuilds any backend from such a folder.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from labelgen.errors import LabelgenError

CONFIG_NAME = "generator_config.json"
WEIGHTS_NAME = "generator.safetensors"


@dataclass
class GeneratorOutput:
    images: torch.Tensor  # [N, 3, H, W] in [-1, 1]
    features: list[torch.Tensor]  # [N, C_i, h_i, w_i]
    recipes: list[dict[str, Any]] = field(default_factory=list)  # per image: what recomputes it (JSON-able)


class Generator(nn.Module, ABC):
    """Base class of generator backends (see module docstring)."""

    backend: ClassVar[str]  # registry name, e.g. "stylegan2", "ddpm", "dcgan", "stable-diffusion"
    can_encode_images: ClassVar[bool] = False  # True: features_of_images works on real images

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)  # constructor arguments, saved in generator_config.json

    @property
    @abstractmethod
    def resolution(self) -> tuple[int, int]:
        """Output (H, W)."""

    @property
    @abstractmethod
    def feature_channels(self) -> list[int]:
        """Channels C_i of each feature level, in output order."""

    @abstractmethod
    def sample(self, seeds: list[int], **options) -> GeneratorOutput:
        """Images for ``seeds`` (deterministic: the same seed gives the same image in any batch)."""

    @abstractmethod
    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        """Recompute images + features of images this generator made, from their recipes."""

    def features_of_images(self, images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
        """Features of given images [N, 3, H, W] in [-1, 1] (diffusion backends only)."""
        raise LabelgenError(f"the {self.backend} generator cannot compute features of given images "
                            "(it has no encoder/inversion); use a diffusion teacher for real images")

    @classmethod
    @abstractmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, **options) -> "Generator":
        """Load a published checkpoint in the backend's native format (or its default weights when
        ``checkpoint`` is None and the backend has some); raise LabelgenError on a bad one."""

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> "Generator":
        """Rebuild from a ``save_pretrained`` folder (config JSON + safetensors)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text())
        backend = config.pop("backend", cls.backend)
        if backend != cls.backend:
            raise LabelgenError(f"{folder}: holds a {backend!r} generator, not {cls.backend!r}")
        model = cls(**config)
        try:
            model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        except (RuntimeError, OSError) as e:
            raise LabelgenError(f"{folder / WEIGHTS_NAME}: weights do not fit the saved config ({str(e)[:200]})") from None
        return model.eval()

    # ---- persistence (diffusers-style) ----
    def save_pretrained(self, folder: Path | str) -> None:
        from safetensors.torch import save_file

        from labelgen.data.io import atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(folder / WEIGHTS_NAME)
        atomic_write_bytes(folder / CONFIG_NAME, json.dumps({"backend": self.backend, **self.config}, indent=2).encode())
