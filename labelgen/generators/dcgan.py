"""DCGAN generator (Radford et al. 2016; the layout of the PyTorch DCGAN tutorial), 64x64 output.

    z [N, nz, 1, 1] -> ConvT(nz, 8g, 4, 1, 0)+BN+ReLU -> [N, 8g, 4, 4]      feature level 0
                    -> ConvT(8g, 4g, 4, 2, 1)+BN+ReLU -> [N, 4g, 8, 8]      feature level 1
                    -> ConvT(4g, 2g, 4, 2, 1)+BN+ReLU -> [N, 2g, 16, 16]    feature level 2
                    -> ConvT(2g,  g, 4, 2, 1)+BN+ReLU -> [N,  g, 32, 32]    feature level 3
                    -> ConvT( g, nc, 4, 2, 1)+Tanh    -> [N, nc, 64, 64]    the image

(g = ngf.) Module names are the tutorial's (``main.0.weight`` ...), so its state dicts load as they are.
Default weights (``checkpoint=None``): the face generator shipped in the PyPI package
``gan-face-generate`` (file ``gan_face_generate/weights.tar``; only that file is read, none of the
package's code is imported). Batch norm always runs in eval mode (running statistics), so an image
never depends on the rest of its batch.

Recipe: ``{"seed": int, "truncation": float}`` — z ~ N(0, I) from the seed, scaled by truncation — or
``{"z": [nz floats]}``: the latent itself (e.g. from inversion, labelgen/inversion.py; no seed needed).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelgen.errors import LabelgenError
from labelgen.generators.base import (
    CONFIG_NAME, Generator, GeneratorOutput, check_feature_layers, check_seeds, inference, module_device,
    seeded_randn,
)
from labelgen.pretrained import fit_weights

DEFAULT_PACKAGE = "gan_face_generate"
DEFAULT_FILE = "weights.tar"
NUM_BLOCKS = 4  # feature levels (the ReLU outputs at 4, 8, 16, 32)


def default_weights_path() -> Path:
    """``gan_face_generate/weights.tar`` inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LabelgenError(f"no default DCGAN weights: the package {DEFAULT_PACKAGE.replace('_', '-')!r} is not "
                            "installed (pip install --no-deps gan-face-generate) — or pass --checkpoint")
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_FILE
        if path.is_file():
            return path
    raise LabelgenError(f"no {DEFAULT_FILE} in the installed {DEFAULT_PACKAGE} package")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A DCGAN generator state dict from a .pt/.pth/.tar file (plain, or under ``netG_state_dict`` /
    ``state_dict``; a ``module.`` prefix from DataParallel is dropped). Never unpickles code."""
    if not path.is_file():
        raise LabelgenError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        raise LabelgenError(f"{path}: not a loadable DCGAN state dict ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    if isinstance(obj, dict):
        for key in ("netG_state_dict", "state_dict", "generator", "netG"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LabelgenError(f"{path}: not a DCGAN generator state dict (expected tensors named main.0.weight, ...)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _refuse_class(class_idx) -> None:
    if class_idx is not None:
        raise LabelgenError(f"dcgan: class {class_idx} given, but this generator is not conditional")


class DCGANGenerator(Generator):
    backend = "dcgan"

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, feature_layers: list[int] | None = None,
                 truncation: float = 1.0):
        super().__init__({"truncation": float(truncation)})
        if nc != 3:
            raise LabelgenError(f"dcgan: only RGB generators are supported (nc=3), got nc={nc}")
        self.nz, self.ngf, self.nc = int(nz), int(ngf), int(nc)
        self.layers = check_feature_layers(feature_layers, NUM_BLOCKS, self.backend)
        widths = [self.nz, ngf * 8, ngf * 4, ngf * 2, ngf]  # in/out channels of the 4 feature blocks
        modules: list[nn.Module] = []
        for i in range(NUM_BLOCKS):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            modules += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride, pad, bias=False),
                        nn.BatchNorm2d(widths[i + 1]), nn.ReLU(True)]
        modules += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*modules)
        self._block_channels = widths[1:]

    @property
    def resolution(self) -> tuple[int, int]:
        return (64, 64)

    @property
    def feature_channels(self) -> list[int]:
        return [self._block_channels[i] for i in self.layers]

    @property
    def feature_strides(self) -> list[int]:
        return [16 // 2**i for i in self.layers]  # the blocks make 4, 8, 16, 32 pixels of the 64

    def synthesize(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z [N, nz] -> (images [N, 3, 64, 64], selected block features)."""
        assert z.ndim == 2 and z.shape[1] == self.nz, z.shape
        x = z[:, :, None, None]  # [N, nz, 1, 1]
        blocks = []
        for i, module in enumerate(self.main):
            x = module(x)
            if isinstance(module, nn.ReLU):
                blocks.append(x)  # [N, 8g/4g/2g/g, 4/8/16/32, 4/8/16/32]
        assert x.shape[1:] == (self.nc, 64, 64), x.shape
        return x, [blocks[i] for i in self.layers]

    def latents(self, recipes: list[dict[str, Any]]) -> torch.Tensor:
        """z [N, nz] of recipes: their "z", else drawn from the seed and scaled by the truncation."""
        device = module_device(self)
        z = torch.empty(len(recipes), self.nz, device=device)
        drawn = [i for i, r in enumerate(recipes) if r.get("z") is None]
        if drawn:
            seeds = check_seeds([recipes[i]["seed"] for i in drawn])
            scale = torch.tensor([float(recipes[i].get("truncation", 1.0)) for i in drawn], device=device)
            z[drawn] = seeded_randn(seeds, (self.nz,), device) * scale[:, None]
        for i, r in enumerate(recipes):
            if r.get("z") is not None:
                given = torch.as_tensor(np.asarray(r["z"], dtype=np.float32), device=device)
                if given.shape != (self.nz,):
                    raise LabelgenError(f"dcgan: recipe z has shape {tuple(given.shape)}, expected [{self.nz}]")
                z[i] = given
        return z

    @inference
    def _run(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        z = self.latents(recipes)  # [N, nz]
        was_training = self.training
        self.eval()  # batch-norm running stats: an image never depends on its batch
        try:
            images, features = self.synthesize(z)
        finally:
            self.train(was_training)
        return GeneratorOutput(images.float().clamp(-1, 1), [f.float() for f in features], [dict(r) for r in recipes])

    def sample(self, seeds: list[int], truncation: float | None = None, **options) -> GeneratorOutput:
        _refuse_class(options.pop("class_idx", None))
        if options:
            raise LabelgenError(f"dcgan: unknown sampling options {sorted(options)} (it takes truncation)")
        truncation = self.config["truncation"] if truncation is None else float(truncation)
        return self._run([{"seed": int(s), "truncation": truncation} for s in check_seeds(seeds)])

    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        for r in recipes:
            if "seed" not in r and r.get("z") is None:
                raise LabelgenError(f"dcgan: recipe {str(r)[:80]} has neither a seed nor a latent z")
        return self._run(list(recipes))

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, feature_layers: list[int] | None = None,
                        **options) -> "DCGANGenerator":
        """Default weights (None), a .pt/.pth state dict or a save_pretrained folder; options:
        feature_layers, truncation (default z scale for sample())."""
        _refuse_class(options.pop("class_idx", None))
        if set(options) - {"truncation"}:
            raise LabelgenError(f"dcgan: unknown options {sorted(set(options) - {'truncation'})} "
                                "(it takes feature_layers, truncation)")
        if feature_layers is not None:
            options["feature_layers"] = feature_layers
        if checkpoint is not None and (Path(checkpoint) / CONFIG_NAME).is_file():  # a save_pretrained folder
            return cls.build_pretrained(Path(checkpoint), **options)
        path = default_weights_path() if checkpoint is None else Path(checkpoint)
        state = _read_state_dict(path)
        first = state.get("main.0.weight")
        if first is None or first.ndim != 4 or first.shape[2:] != (4, 4) or first.shape[1] % 8:
            raise LabelgenError(f"{path}: not a DCGAN generator state dict (no 4x4 main.0.weight [nz, 8*ngf, 4, 4])")
        model = cls(nz=int(first.shape[0]), ngf=int(first.shape[1]) // 8, **options)
        fit_weights(model, state, path, "DCGAN generator its main.0.weight describes")
        return model.eval()
