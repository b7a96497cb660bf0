"""The one interface every generator backend implements.

A backend makes images *with* their multi-scale internal features, recomputes the features of an
image it made from a small JSON-able *recipe* (seed, truncation, ...), and — for diffusion backends —
computes features of any given image (real or generated) by noising it and running one UNet pass.

Shapes (N = batch):
    images    float32 [N, 3, H, W] in [-1, 1]
    features  list of float tensors [N, C_i, h_i, w_i], one per layer in ``feature_channels`` order

Saved like diffusers models (:mod:`labelgen.pretrained`): ``save_pretrained(dir)`` writes
``generator_config.json`` (backend name + the constructor's arguments, recorded when it was built) next to
``generator.safetensors`` (the diffusion backends: a diffusers folder); ``Generator.from_pretrained(dir)``
rebuilds whichever backend the folder names, ``Backend.from_pretrained(dir)`` that one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from labelgen.errors import LabelgenError
from labelgen.pretrained import Pretrained

CONFIG_NAME = "generator_config.json"
WEIGHTS_NAME = "generator.safetensors"
# Speed switches of the machine a generator runs on, not of the model: "auto" (on for CUDA), true or false.
# A saved generator folder does not carry them (folders written before they had an "auto" value always held
# "false", chosen or not, so it is dropped when read); a workspace's generator_options or a call sets them.
MACHINE_OPTIONS = ("bf16", "fp16", "channels_last", "compile")  # fp16: adm only


@dataclass
class GeneratorOutput:
    images: torch.Tensor  # [N, 3, H, W] in [-1, 1]
    features: list[torch.Tensor]  # [N, C_i, h_i, w_i]
    recipes: list[dict[str, Any]] = field(default_factory=list)  # per image: what recomputes it (JSON-able)


class Generator(Pretrained, ABC):
    """Base class of generator backends (see module docstring)."""

    backend: ClassVar[str]  # registry name, e.g. "stylegan2", "ddpm", "dcgan", "stable-diffusion"
    can_encode_images: ClassVar[bool] = False  # True: features_of_images works on real images
    config_name, weights_name, unsaved = CONFIG_NAME, WEIGHTS_NAME, MACHINE_OPTIONS
    kind_key, kind_attribute, noun = "backend", "backend", "generator"

    def __init__(self, config: dict[str, Any] | None = None):
        """``self.config`` holds the backend constructor's arguments already (labelgen.pretrained); ``config``: the
        normalised form of some of them, stored over them (plug-ins that pass all of them, as backends once had
        to, still work)."""
        super().__init__()
        self.config.update(config or {})

    @classmethod
    def subclass_for(cls, kind: str) -> type["Generator"]:
        from labelgen.generators import generator_class

        return generator_class(kind)

    @classmethod
    def checked(cls, model: "Generator", source: Path) -> "Generator":
        """Image size and finite weights (:func:`labelgen.generators.check_loaded`)."""
        from labelgen.generators import check_loaded

        return check_loaded(model, source)

    @property
    @abstractmethod
    def resolution(self) -> tuple[int, int]:
        """Output (H, W)."""

    @property
    @abstractmethod
    def feature_channels(self) -> list[int]:
        """Channels C_i of each feature level, in output order."""

    @property
    def feature_strides(self) -> list[int]:
        """Stride of each feature level in image pixels (the resolution over the level's size), in
        ``feature_channels`` order, from the architecture, not from a forward pass (``Teacher.feature_info``: what
        the student and stored features read). Every built-in backend declares it; a plug-in must to be used there."""
        raise LabelgenError(f"the {self.backend} generator does not declare feature_strides (the stride of each "
                            "feature level, a Generator property); its levels cannot be matched by size")

    @abstractmethod
    def sample(self, seeds: list[int], **options) -> GeneratorOutput:
        """Images for ``seeds`` (deterministic: the same seed gives the same image in any batch)."""

    @abstractmethod
    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        """Recompute images + features of images this generator made, from their recipes."""

    def features_of_images(self, images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
        """Features of given images [N, 3, H, W] in [-1, 1] (diffusion backends only)."""
        from labelgen.teacher import require_image_encoding

        require_image_encoding(self, "features_of_images")
        raise NotImplementedError(f"{type(self).__name__} says it encodes images but has no features_of_images")

    @classmethod
    @abstractmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, **options) -> "Generator":
        """Load a published checkpoint in the backend's native format (or its default weights when
        ``checkpoint`` is None and the backend has some); raise LabelgenError on a bad one."""

    @classmethod
    def side_files(cls, checkpoint: Path, options: dict[str, Any]) -> list[Path]:
        """The files beside a checkpoint file that ``from_checkpoint(checkpoint, **options)`` also reads to build
        the network (model flags, a config): the generator identity hashes them with the weights, so heads trained
        before one was edited are stale. Default: none."""
        return []

    @classmethod
    def from_saved_folder(cls, folder: Path, options: dict[str, Any], not_one: str) -> "Generator":
        """A ``save_pretrained`` folder with ``options`` applied; ``not_one``: the error when it is not one."""
        if not (Path(folder) / CONFIG_NAME).is_file():
            raise LabelgenError(f"{folder}: {not_one}")
        return cls.build_pretrained(Path(folder), **options)

    def with_options(self, **options) -> "Generator":
        """A new generator with the same weights and other constructor options (feature_layers, ...)."""
        model = type(self)(**{**self.config, **options})
        model.load_state_dict(self.state_dict())
        return model.eval()



def parse_bool(value: Any) -> bool | None:
    """A boolean written in a config file or on a command line: a JSON/YAML boolean, the numbers 0/1, or the strings
    true/false, yes/no, on/off, 1/0 in any case; None for anything else (``bool("False")`` is True: never use it)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return {"true": True, "yes": True, "on": True, "1": True,
                "false": False, "no": False, "off": False, "0": False}.get(value.strip().lower())
    return None


def machine_option(name: str, value: Any) -> bool | str:
    """One of MACHINE_OPTIONS normalised to "auto", True or False (also from the strings true/false/on/off)."""
    if value is None or value == "auto":
        return "auto"
    parsed = parse_bool(value)
    if parsed is None:
        raise LabelgenError(f"generator option {name}: auto, true or false, got {value!r}")
    return parsed


# ---- helpers shared by the backends ----
def seeded_randn(seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu",
                 salt: int = 0) -> torch.Tensor:
    """Standard normal noise [N, *shape], row k drawn from its own generator seeded by ``seeds[k]``
    (+ ``salt`` to decorrelate different uses of one seed), so a row never depends on the batch."""
    rows = []
    for seed in seeds:
        g = torch.Generator(device="cpu").manual_seed((int(seed) + int(salt) * 1_000_003) % (2**63))
        rows.append(torch.randn(shape, generator=g, dtype=torch.float32))
    if not rows:
        return torch.zeros((0, *shape), device=device)
    return torch.stack(rows).to(device)  # drawn on CPU: identical on every device


def check_feature_layers(feature_layers: list[int] | None, num_levels: int, backend: str) -> list[int]:
    """Validate ``feature_layers`` (indices into ``num_levels`` levels, negatives allowed); None = all. The one
    range check of feature levels: a generator's option, a teacher's levels (labelgen.teacher.Teacher)."""
    if feature_layers is None:
        return list(range(num_levels))
    try:
        layers = [int(i) for i in feature_layers]
    except (TypeError, ValueError):
        raise LabelgenError(f"{backend}: feature_layers must be a list of integers, got {feature_layers!r}") from None
    out = []
    for i in layers:
        if not -num_levels <= i < num_levels:
            raise LabelgenError(f"{backend}: feature layer {i} (--feature-layers) out of range (the generator has "
                                f"{num_levels} levels: 0..{num_levels - 1})")
        out.append(i % num_levels)
    if not out:
        raise LabelgenError(f"{backend}: feature_layers is empty")
    return out


def check_options(backend: str, options: dict[str, Any], allowed) -> None:
    """Refuse options a backend does not take (one line naming them and the ones it takes)."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise LabelgenError(f"{backend}: unknown options {sorted(unknown)} ({', '.join(allowed)})")


def require_checkpoint(backend: str, checkpoint: Path | str | None, what: str) -> Path:
    """The checkpoint path of a backend without default weights (``what``: the kind of file it loads)."""
    if checkpoint is None:
        raise LabelgenError(f"{backend} has no default weights: pass --checkpoint ({what})")
    return Path(checkpoint)


def check_seeds(seeds) -> list[int]:
    try:
        return [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise LabelgenError(f"seeds must be integers, got {seeds!r}") from None


def module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def inference(fn):
    """Run ``fn`` under ``torch.inference_mode`` and hand back ordinary tensors (clones made outside
    inference mode), so callers may feed images/features into modules they train."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        if isinstance(out, GeneratorOutput):
            return GeneratorOutput(out.images.clone(), [f.clone() for f in out.features], out.recipes)
        if isinstance(out, list):
            return [f.clone() for f in out]
        return out.clone()

    return wrapper
