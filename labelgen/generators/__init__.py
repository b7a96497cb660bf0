"""Generator backends behind one interface (:class:`~labelgen.generators.base.Generator`).

    create_generator("stylegan2", resolution=(64, 64), ...)   new model from constructor arguments
    from_checkpoint("stylegan2", "ffhq.pkl")                   a published checkpoint (NVlabs .pkl,
                                                               diffusers folder, DCGAN state dict,
                                                               guided-diffusion .pt, BigGAN-deep .bin)
    Generator.from_pretrained("path/to/saved")                 a folder written by save_pretrained (the
                                                               backend its generator_config.json names)

Backends are imported lazily: each registry entry names ``module:Class``. Besides the built-in
:data:`BACKENDS`, a backend may be a plug-in, but only one the user opted in to (a workspace.json is
data: naming a module in it must never run code that merely lies next to it):

    an installed entry point     [project.entry-points."labelgen.generators"] mygan = "mypkg.gan:MyGAN"
                                 -> backend "mygan" (or its target "mypkg.gan:MyGAN")
    $LABELGEN_PLUGINS            comma-separated modules or module:Class, e.g. LABELGEN_PLUGINS=mypkg.gan
                                 -> backend "mypkg.gan:MyGAN" (the module must be importable, e.g. on PYTHONPATH)

:func:`resolve_backend` is the one place that decides; :func:`generator_class` imports what it allows.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from labelgen.errors import LabelgenError
from labelgen.generators.base import Generator, GeneratorOutput

BACKENDS: dict[str, str] = {
    "stylegan2": "labelgen.generators.stylegan2:StyleGAN2Generator",
    "ddpm": "labelgen.generators.ddpm:DDPMGenerator",
    "stable-diffusion": "labelgen.generators.stable_diffusion:StableDiffusionGenerator",
    "dcgan": "labelgen.generators.dcgan:DCGANGenerator",
    "adm": "labelgen.generators.adm:ADMGenerator",
    "biggan": "labelgen.generators.biggan:BigGANGenerator",
}

PLUGINS_ENV = "LABELGEN_PLUGINS"  # opt-in list of plug-in modules / module:Class backends
ENTRY_POINT_GROUP = "labelgen.generators"  # installed plug-ins: name -> module:Class

__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "PLUGINS_ENV", "Generator", "GeneratorOutput", "resolve_backend",
           "generator_class", "create_generator", "from_checkpoint", "check_loaded"]


def installed_plugins() -> dict[str, str]:
    """Entry points of group ``labelgen.generators``: name -> "module:Class"."""
    from importlib.metadata import entry_points

    return {ep.name: f"{ep.module}:{ep.attr}" for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _opted_in(target: str) -> bool:
    allowed = {item.strip() for item in os.environ.get(PLUGINS_ENV, "").split(",") if item.strip()}
    return target in allowed or target.split(":", 1)[0] in allowed


def resolve_backend(backend: str) -> str:
    """Backend name or plug-in -> the "module:Class" to import; nothing is imported here. A
    "module:Class" that is neither installed nor listed in $LABELGEN_PLUGINS is refused."""
    if backend in BACKENDS:
        return BACKENDS[backend]
    plugins = installed_plugins()
    if backend in plugins:
        return plugins[backend]
    if ":" not in backend:
        names = ", ".join([*BACKENDS, *plugins])
        raise LabelgenError(f"unknown generator backend {backend!r} (one of {names}, or an opted-in module:Class)")
    module_name, class_name = backend.split(":", 1)
    if not (class_name.isidentifier() and all(part.isidentifier() for part in module_name.split("."))):
        raise LabelgenError(f"generator backend {backend!r}: expected module:Class (e.g. mypkg.gan:MyGAN)")
    if backend not in plugins.values() and not _opted_in(backend):
        raise LabelgenError(f"generator plug-in {backend!r} is not enabled: install it as a {ENTRY_POINT_GROUP!r} "
                            f"entry point or opt in with {PLUGINS_ENV}={module_name}")
    return backend


def generator_class(backend: str) -> type[Generator]:
    """The Generator subclass of a backend name or an allowed plug-in (:func:`resolve_backend`)."""
    module_name, class_name = resolve_backend(backend).split(":", 1)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise LabelgenError(f"generator {backend!r} not importable ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise LabelgenError(f"generator {backend!r} is not a labelgen Generator subclass")
    return cls


def create_generator(backend: str, **config: Any) -> Generator:
    """A new (randomly initialised) generator of ``backend`` built from constructor arguments."""
    return generator_class(backend)(**config)


def from_checkpoint(backend: str, checkpoint: Path | str | None, **options: Any) -> Generator:
    """Load a published/pretrained checkpoint of ``backend`` (refusing bad ones with a clear error)."""
    return check_loaded(generator_class(backend).from_checkpoint(checkpoint, **options), checkpoint or backend)


def check_loaded(generator: Generator, source: Path | str) -> Generator:
    """``generator`` when the commands can use it, else one line naming ``source`` (every backend's loading
    passes here): an image size labelgen.imaging.size_problem allows (a config's sample_size of 10^6 would ask
    terabytes at the first sample) and finite weights (NaN or infinite values make every image and label
    garbage). The sum of a tensor is non-finite when one of its values is, and is ~50x faster to take than
    isfinite of every value, which then only confirms (a finite tensor whose sum overflows)."""
    import itertools

    import torch

    from labelgen.imaging import size_problem

    h, w = (int(v) for v in generator.resolution)
    problem = size_problem((h, w))
    if problem:
        raise LabelgenError(f"{source}: the {generator.backend} generator makes {h}x{w} images: {problem}")
    with torch.no_grad():
        for name, tensor in itertools.chain(generator.named_parameters(), generator.named_buffers()):
            if tensor.is_floating_point() and not (torch.isfinite(tensor.sum()) or torch.isfinite(tensor).all()):
                raise LabelgenError(f"{source}: the {generator.backend} weights hold NaN or infinite values "
                                    f"(e.g. {name})")
    return generator
