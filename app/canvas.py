"""The mask painting component (``frontend/mask_canvas/index.html``, Streamlit components.v1).

Why not streamlit-drawable-canvas: 0.13 does render and return strokes on Streamlit 1.67, but it
draws anti-aliased Fabric.js vector paths (mixed colours at stroke edges), and has no flood fill,
eraser or zoom. This component edits the index mask itself, pixel by pixel, at the image's
resolution and sends it back run-length encoded, so the saved mask holds only class ids / 255.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit.components.v1 as components

from labelgen.app.core import data_url, rle_encode

FRONTEND = Path(__file__).parent / "frontend" / "mask_canvas"
_component = components.declare_component("labelgen_mask_canvas", path=str(FRONTEND))


def mask_canvas(image: np.ndarray, mask: np.ndarray | None, palette: list[tuple[int, int, int]], names: list[str],
                doc: str, key: str, class_id: int = 0, zoom: int | None = None, emit_on_load: bool = False,
                segments: np.ndarray | None = None, segments_id: str = "", prediction: np.ndarray | None = None,
                prediction_id: str = "") -> Any:
    """Show the painter; returns its latest value ``{doc, seq, width, height, rle}`` or None.

    ``doc`` identifies what the component holds: it reloads image + mask only when ``doc`` changes,
    so reruns (tool changes, saves) never wipe strokes in progress. Assistance (app/assist.py), taken in
    whenever its id changes, without touching the mask or its undo history: ``segments`` int [H, W]
    superpixel labels (the superpixel tool fills the clicked one), ``prediction`` uint8 [H, W] the teacher's
    classes (the teacher tool copies them into the clicked superpixel or a dragged rectangle)."""
    h, w = image.shape[:2]
    if zoom is None:
        zoom = max(1, min(16, 512 // max(h, w)))
    for name, layer in (("segments", segments), ("prediction", prediction)):
        if layer is not None and tuple(layer.shape) != (h, w):
            raise ValueError(f"{name} {tuple(layer.shape)} does not match the image {(h, w)}")
    return _component(doc=doc, image=data_url(image), width=int(w), height=int(h),
                      mask=None if mask is None else rle_encode(mask),
                      palette=[list(map(int, c)) for c in palette], names=list(names),
                      class_id=int(class_id), zoom=int(zoom), emit_on_load=bool(emit_on_load),
                      segments=None if segments is None else rle_encode(segments, np.int32),
                      segments_id=f"{doc}:{segments_id}" if segments is not None else "",
                      prediction=None if prediction is None else rle_encode(prediction),
                      prediction_id=f"{doc}:{prediction_id}" if prediction is not None else "",
                      key=key, default=None)
