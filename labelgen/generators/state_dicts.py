"""Reading published checkpoints as plain tensors (loaded into our modules by :func:`labelgen.pretrained.fit_weights`).

:func:`read_state_dict` accepts a ``.safetensors`` file or a torch ``.pt/.pth/.bin`` file loaded with
``torch.load(weights_only=True)``: a file whose unpickling needs anything beyond tensors and plain
containers (a class, a function such as ``os.system``) is refused before any of it runs.
"""
from __future__ import annotations

from pathlib import Path

import torch

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
