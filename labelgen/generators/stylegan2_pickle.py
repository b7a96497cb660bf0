"""Load NVIDIA stylegan2-ada-pytorch ``.pkl`` files without running any code they carry.

Such a file is a pickle of ``{'G', 'D', 'G_ema', 'training_set_kwargs', 'augment_pipe', ...}``. Each network
object is a ``torch_utils.persistence`` persistent class: it pickles as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type: 'class', version, module_src: <the defining module's source code>, class_name, state}``,
where ``state`` is the module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_args``,
``_init_kwargs``, ...). NVIDIA's loader ``exec``s ``module_src``; we never do. :class:`SafeUnpickler` only
resolves a short whitelist of globals (tensor/storage rebuilders, OrderedDict, numpy scalars/arrays,
``dnnlib.util.EasyDict``) and maps the persistence entry point to :func:`_persistent_stub`, which returns a
:class:`PersistentStub` (class name + state) — no class from the file is ever imported or instantiated.
Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with a LabelgenError.

:func:`load_nvidia_pickle` then rebuilds ``G_ema`` as our own
:class:`~labelgen.generators.stylegan2.StyleGAN2Generator` from its init kwargs and copies parameters
and buffers by name from the stub tree.
"""
from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelgen.errors import LabelgenError
from labelgen.pretrained import fit_weights

PERSISTENCE_MODULE = "torch_utils.persistence"
PERSISTENCE_ENTRY = "_reconstruct_persistent_obj"
NETWORK_KEYS = ("G_ema", "G")  # which network of the pickle to use, in order of preference


class PersistentStub:
    """What a persistent object of the pickle becomes: its class name and raw state, nothing executed."""

    def __init__(self, class_name: str, state: dict[str, Any], version: Any = None):
        self.class_name, self.state, self.version = class_name, state, version

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name})"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    def children(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def named_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``name -> tensor`` of every parameter and buffer below this module (like state_dict())."""
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, torch.Tensor):
                    out[prefix + name] = value.detach()
        for name, child in self.children().items():
            if isinstance(child, PersistentStub):
                out.update(child.named_tensors(f"{prefix}{name}."))
        return out


class _EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access; pure data)."""


def _persistent_stub(meta: Any) -> PersistentStub:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise LabelgenError("refused: the pickle's persistent object has an unexpected form (not a persistent class)")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise LabelgenError(f"refused: persistent object {meta['class_name']!r} has no state dict")
    return PersistentStub(meta["class_name"], state, meta.get("version"))  # module_src is dropped, never run


def _load_storage_bytes(data: bytes):
    """``torch.storage._load_from_bytes``, but with torch's weights-only unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise LabelgenError("refused: storage payload is not bytes")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar`` for plain numeric dtypes only (object scalars would unpickle code)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise LabelgenError("refused: pickle asks for a numpy scalar of a non-numeric dtype")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _numpy_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise LabelgenError("refused: pickle asks for a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise LabelgenError("refused: pickle asks for an object numpy dtype")
    return dtype


def _torch_attr(name: str):
    """Storage classes and dtypes named at torch's top level (``torch.FloatStorage``, ``torch.float32``)."""
    value = getattr(torch, name, None)
    if isinstance(value, torch.dtype) or (name.endswith("Storage") and isinstance(value, type)):
        return value
    return None


_ALLOWED: dict[tuple[str, str], Any] = {
    (PERSISTENCE_MODULE, PERSISTENCE_ENTRY): _persistent_stub,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
for _name in ("_rebuild_parameter_with_state", "_rebuild_tensor_v3"):
    if hasattr(torch._utils, _name):
        _ALLOWED[("torch._utils", _name)] = getattr(torch._utils, _name)


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals (see module docstring)."""

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED.get((module, name))
        if allowed is None and module == "torch":
            allowed = _torch_attr(name)
        if allowed is None:
            raise LabelgenError(f"refused: pickle asks for {module}.{name}, which is not a tensor or plain data "
                                "(a NVIDIA StyleGAN pickle never needs it; the file may be malicious)")
        return allowed

    def persistent_load(self, pid):
        raise LabelgenError("refused: pickle uses persistent ids (not a plain NVIDIA network pickle)")


def read_nvidia_pickle(path: Path | str) -> dict[str, Any]:
    """The pickle's top-level dict, with persistent networks as :class:`PersistentStub` trees."""
    path = Path(path)
    if not path.is_file():
        raise LabelgenError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            data = SafeUnpickler(f).load()
    except LabelgenError as e:
        raise LabelgenError(f"{path}: {e}") from None
    except Exception as e:  # truncated/corrupt file: UnpicklingError, EOFError, ValueError, ...
        raise LabelgenError(f"{path}: not a readable StyleGAN pickle ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]})") from None
    if not isinstance(data, dict):
        raise LabelgenError(f"{path}: not a StyleGAN pickle (top level is {type(data).__name__}, not a dict)")
    return data


def _plain(value: Any) -> Any:
    """Init kwargs as plain JSON-able Python (EasyDict -> dict, numpy scalars -> numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


MAPPING_KEYS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
SYNTHESIS_KEYS = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
                  "use_noise", "activation", "kernel_size"}


def generator_kwargs(stub: PersistentStub, path: Path | str = "") -> dict[str, Any]:
    """Our StyleGAN2Generator constructor kwargs from the init kwargs of an NVIDIA ``Generator`` stub."""
    kwargs = _plain(stub.init_kwargs)
    names = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
    for name, value in zip(names, stub.init_args):  # positional constructor arguments, if any
        kwargs.setdefault(name, _plain(value))
    missing = [n for n in names if n not in kwargs]
    if missing:
        raise LabelgenError(f"{path}: network {stub.class_name!r} lacks init arguments {missing} "
                            "(not a StyleGAN2 generator)")
    mapping = {k: v for k, v in (kwargs.get("mapping_kwargs") or {}).items() if k in MAPPING_KEYS}
    synthesis = {k: v for k, v in (kwargs.get("synthesis_kwargs") or {}).items() if k in SYNTHESIS_KEYS}
    return {"img_resolution": int(kwargs["img_resolution"]), "z_dim": int(kwargs["z_dim"]),
            "w_dim": int(kwargs["w_dim"]), "c_dim": int(kwargs["c_dim"]), "img_channels": int(kwargs["img_channels"]),
            "mapping_kwargs": mapping, "synthesis_kwargs": synthesis}


def load_nvidia_pickle(path: Path | str, **options: Any):
    """A :class:`StyleGAN2Generator` holding the pickle's ``G_ema`` (``G`` if there is no G_ema).
    ``options`` are extra constructor arguments (feature_layers, truncation_psi, ...)."""
    from labelgen.generators.stylegan2 import StyleGAN2Generator

    data = read_nvidia_pickle(path)
    stub = next((data[k] for k in NETWORK_KEYS if isinstance(data.get(k), PersistentStub)), None)
    if stub is None:
        raise LabelgenError(f"{path}: no generator network in the pickle (keys: {sorted(map(str, data))[:8]}; "
                            "expected G_ema)")
    if stub.class_name != "Generator":
        raise LabelgenError(f"{path}: G_ema is a {stub.class_name!r}, not a StyleGAN2 'Generator'")
    kwargs = generator_kwargs(stub, path)
    tensors = stub.named_tensors()
    try:
        model = StyleGAN2Generator(**kwargs, **options)
    except LabelgenError as e:
        raise LabelgenError(f"{path}: {e}") from None
    fit_weights(model, {k: v.float() for k, v in tensors.items()}, path,
                "StyleGAN2 generator its init arguments describe (StyleGAN3 and other pickles are not supported)")
    return model.eval()
