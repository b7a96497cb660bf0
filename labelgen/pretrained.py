"""One save/load shape for everything with weights (generators, task heads, the student), as diffusers and smp do.

    model.save_pretrained(folder)           folder/<config_name>   the constructor's arguments (JSON)
                                            folder/<weights_name>  the weights (safetensors)
    Class.from_pretrained(folder)           the same model again (eval mode); a base class (Generator, TaskHead)
                                            builds the subclass its config names ("backend", "type")

A subclass of :class:`Pretrained` records ``self.config`` from the arguments its constructor was called with
(defaults filled in; arguments whose name starts with ``_``, such as a prebuilt submodule, left out; in the form
JSON gives back: tuples as lists) before the constructor runs, so no class lists its own arguments; a constructor
that normalises an argument (the string "false" to False) stores the normalised value over it. Loading never runs
code from the folder: configs are JSON, weights safetensors. :func:`fit_weights` is the one check that tensors fit
a model: :class:`WeightsDoNotFit`, one line naming the file, the first tensor that does not fit and both shapes.
"""
from __future__ import annotations

import functools
import inspect
import numbers
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from labelgen.errors import LabelgenError


class WeightsDoNotFit(LabelgenError):
    """A weights file whose tensors do not fit the model its config (or flags) build."""


def fit_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path | str, what: str) -> None:
    """Copy ``tensors`` into ``module`` by name (strict); when they do not fit, one :class:`WeightsDoNotFit` line
    naming ``path``, the first tensors of another shape (file and model shapes), missing or unexpected."""
    check_shapes(module.state_dict(), {k: tuple(v.shape) for k, v in tensors.items()}, path, what)
    module.load_state_dict(dict(tensors))


def check_shapes(own: Mapping[str, torch.Tensor], found: Mapping[str, tuple[int, ...]], path: Path | str, what: str,
                 names_too: bool = True) -> None:
    """Refuse ``found`` (name -> shape, e.g. a file's header) unless it has ``own``'s names and shapes
    (``names_too`` False: only the shapes of the names both have)."""
    shapes = [k for k in own if k in found and tuple(found[k]) != tuple(own[k].shape)]
    missing = [k for k in own if k not in found] if names_too else []
    unexpected = [k for k in found if k not in own] if names_too else []
    problems = []
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} of another shape (e.g. {k} is {list(found[k])} in the file, "
                        f"{list(own[k].shape)} in the model)")
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if problems:
        raise WeightsDoNotFit(f"{path}: these weights do not fit the {what}: {'; '.join(problems)}")


def file_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """name -> shape of a safetensors file, read from its header (no tensor is loaded); one line when unreadable."""
    from safetensors import SafetensorError, safe_open

    from labelgen.errors import DataError, one_line

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: unreadable safetensors file ({one_line(e, 120)})") from None


def _records_config(init):
    """``init`` that first stores its arguments as ``self.config`` when it is the constructor of the object's own
    class (not a base class's constructor called through super().__init__)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if type(self).__init__ is wrapper:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if name.startswith("_") or kind is inspect.Parameter.VAR_POSITIONAL:
                    continue
                if kind is inspect.Parameter.VAR_KEYWORD:
                    config.update({k: v for k, v in value.items() if not k.startswith("_")})
                else:
                    config[name] = value
            self.config = _plain(config)  # as save_pretrained writes it and from_pretrained reads it
        init(self, *args, **kwargs)

    wrapper.records_config = True
    return wrapper


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists, numpy numbers as Python numbers, mappings as dicts)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


class Pretrained(nn.Module):
    """Base of the modules saved as a config JSON + a safetensors file (module docstring)."""

    config_name: ClassVar[str] = "config.json"
    weights_name: ClassVar[str] = "model.safetensors"
    kind_key: ClassVar[str | None] = None  # the config key naming the subclass ("backend", "type"), if any
    kind_attribute: ClassVar[str | None] = None  # the class attribute holding that name ("backend", "head_type")
    noun: ClassVar[str] = "model"  # what it is, in messages ("generator")
    unsaved: ClassVar[tuple[str, ...]] = ()  # constructor arguments a saved folder does not carry
    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "records_config", False):
            cls.__init__ = _records_config(init)

    # ---- what a subclass may override ----
    @classmethod
    def kind(cls) -> str | None:
        """The value of ``kind_key`` this class writes (None on a base class)."""
        return getattr(cls, cls.kind_attribute, None) if cls.kind_attribute else None

    @classmethod
    def subclass_for(cls, kind: str) -> type["Pretrained"]:
        """The subclass a saved config's ``kind_key`` names (a base class looks it up in its registry)."""
        raise LabelgenError(f"{cls.__name__} has no registry of {cls.noun}s")

    def describe(self) -> str:
        """The model in a few words, for messages ("dcgan generator")."""
        return f"{self.kind()} {self.noun}" if self.kind() else self.noun

    def weights_owner(self) -> nn.Module:
        """The module whose state dict the weights file holds (a wrapper: the network it wraps)."""
        return self

    @classmethod
    def checked(cls, model: "Pretrained", source: Path) -> "Pretrained":
        """``model`` when the commands can use it (a base class refuses, in one line, what it cannot)."""
        return model

    # ---- config ----
    def config_to_save(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``config_name`` holds: the kind, the recorded arguments (less ``unsaved``), ``extra`` as "meta"."""
        saved = {self.kind_key: self.kind()} if self.kind_key else {}
        saved.update({k: v for k, v in self.config.items() if k not in self.unsaved})
        if extra is not None:
            saved["meta"] = extra
        return _plain(saved)

    @classmethod
    def read_pretrained_config(cls, folder: Path) -> dict[str, Any]:
        """The saved config of ``folder``; one line when there is none or it is not a JSON object."""
        from labelgen.data.io import read_json

        path = folder / cls.config_name
        if not path.is_file():
            raise LabelgenError(f"{folder}: no {cls.config_name} (not a saved labelgen {cls.noun})")
        config = read_json(path)
        if not isinstance(config, dict):
            raise LabelgenError(f"{path}: expected a JSON object")
        return config

    @classmethod
    def class_of(cls, config: Mapping[str, Any], source: Path | str) -> type["Pretrained"]:
        """The class that builds ``config``: the subclass its kind names (from a base class), else ``cls`` (one line
        when the kind is another's)."""
        kind = config.get(cls.kind_key) if cls.kind_key else None
        if kind is None and cls.kind_key and cls.kind() is None:
            raise LabelgenError(f"{source}: no {cls.kind_key!r} (which {cls.noun} it holds)")
        if kind is None:
            return cls
        if cls.kind() is None:
            return cls.subclass_for(str(kind))
        if kind != cls.kind():
            raise LabelgenError(f"{source}: holds a {kind!r} {cls.kind_key}, not {cls.kind()!r}")
        return cls

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: Path | str | None = None, /,
                    **options: Any) -> "Pretrained":
        """A new (randomly initialised) model from a saved config (its kind, "meta" and ``unsaved`` keys are not
        constructor arguments; ``source``: the file it came from, for messages); ``options`` override arguments."""
        source = source or cls.config_name
        target = cls.class_of(config, source)
        skip = {target.kind_key, "meta", *target.unsaved}
        arguments = {**{k: v for k, v in config.items() if k not in skip}, **options}
        try:
            inspect.signature(target).bind(**arguments)
        except TypeError as e:  # a key the constructor does not take, or one it needs missing
            raise LabelgenError(f"{source}: not the arguments of the {target.noun} ({e})") from None
        return target(**arguments)

    # ---- save / load ----
    def save_pretrained(self, folder: Path | str, extra: dict[str, Any] | None = None) -> None:
        """Write ``weights_name`` then ``config_name`` (each atomically; ``extra``: metadata kept under "meta")."""
        from labelgen.data.io import atomic_write_json, save_safetensors

        folder = Path(folder)
        save_safetensors(folder / self.weights_name, self.weights_owner())
        atomic_write_json(folder / self.config_name, self.config_to_save(extra))

    @classmethod
    def from_pretrained(cls, folder: Path | str, device: str | torch.device = "cpu", **options: Any) -> "Pretrained":
        """The model a ``save_pretrained`` folder holds, on ``device``, in eval mode (``options``: constructor
        arguments over the saved ones)."""
        folder = Path(folder)
        return cls.checked(cls.build_pretrained(folder, **options), folder).to(device).eval()

    @classmethod
    def build_pretrained(cls, folder: Path, **options: Any) -> "Pretrained":
        """The model of ``folder`` (eval mode, on the CPU); folders in another library's layout override this."""
        config = cls.read_pretrained_config(folder)
        target = cls.class_of(config, folder / cls.config_name)
        if target is not cls:
            return target.build_pretrained(folder, **options)
        model = cls.from_config(config, folder / cls.config_name, **options)
        model.load_weights(folder / cls.weights_name)
        return model.eval()

    def load_weights(self, path: Path) -> None:
        """The weights file ``path`` into this model (:func:`fit_weights`'s one error when they do not fit)."""
        from labelgen.data.io import load_safetensors

        fit_weights(self.weights_owner(), load_safetensors(path), path, f"{self.describe()} of {self.config_name}")
