"""Reading published checkpoints as plain tensors, and loading them into our modules by parameter name.

:func:`read_state_dict` accepts a ``.safetensors`` file or a torch ``.pt/.pth/.bin`` file loaded with
``torch.load(weights_only=True)``: a file whose unpickling needs anything beyond tensors and plain
containers (a class, a function such as ``os.system``) is refused before any of it runs.
:func:`load_by_name` copies such a dict into a module and turns every mismatch into one line naming
the first missing, unexpected or mis-shaped parameters.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from labelgen.errors import LabelgenError


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:200]


def read_state_dict(path: Path | str, what: str, nested: tuple[str, ...] = ("state_dict", "model")
                    ) -> dict[str, torch.Tensor]:
    """name -> tensor from ``path`` (safetensors, or torch with weights_only); a dict nested under one of
    ``nested`` is unwrapped and a DataParallel ``module.`` prefix dropped."""
    path = Path(path)
    if not path.is_file():
        raise LabelgenError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as e:  # safetensors raises SafetensorError / OSError on a bad header
            raise LabelgenError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    else:
        import pickle

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused a global: nothing of it ran
            raise LabelgenError(f"{path}: refused: the checkpoint needs more than tensors to load "
                                f"(torch.load weights_only: {_first_line(e)[:160]})") from None
        except Exception as e:  # RuntimeError, EOFError, ... on a truncated or foreign file
            raise LabelgenError(f"{path}: not a loadable {what} state dict ({type(e).__name__}: "
                                f"{_first_line(e)[:160]})") from None
    if isinstance(obj, dict):
        for key in nested:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LabelgenError(f"{path}: not a {what} state dict (expected a dict of named tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_by_name(module: nn.Module, state: dict[str, torch.Tensor], path: Path | str, what: str) -> None:
    """Copy ``state`` into ``module`` (strict, by name); a mismatch is one line naming the first offenders."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} != {list(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
    if problems:
        raise LabelgenError(f"{path}: weights do not fit the {what} built from its flags: {'; '.join(problems)}")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name].to(tensor.dtype))
