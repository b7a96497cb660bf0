"""Session state shared by the pages: the open workspace, URL sync, and the mask autosave.

The annotator registers what its canvas holds (``st.session_state["canvas"]``: annotation id, doc
token, widget key, shape). :func:`save_pending` writes the canvas's latest mask when it differs from
the file — called by the Save button and by every navigation callback (page switch, next/previous
image, review "fix"), so leaving an image never loses strokes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from labelgen.app.core import mask_from_component
from labelgen.errors import LabelgenError
from labelgen.workspace import Workspace


@st.cache_resource(show_spinner=False)
def _open(root: str) -> Workspace:
    return Workspace(root)


def workspace(path: str | None = None) -> Workspace:
    """The workspace (one object per folder and server, so the generator loads once)."""
    if path is None:
        path = st.session_state.get("_workspace_root")
    if not path:
        raise LabelgenError("no workspace given: start the app with `labelgen app --workspace W`")
    ws = _open(str(Path(path).resolve()))
    st.session_state["_workspace_root"] = str(ws.root)
    return ws


def init_session(pages: list[str]) -> None:
    """First run of a session: page and annotation id from the URL."""
    ss = st.session_state
    if "page" not in ss:
        page = st.query_params.get("page", pages[0])
        ss["page"] = page if page in pages else pages[0]
    if "ann_id" not in ss and st.query_params.get("id"):
        ss["ann_id"] = st.query_params.get("id")
    ss.setdefault("doc_nonce", {})
    ss.setdefault("flash", [])


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, on the next run (callbacks cannot draw)."""
    st.session_state.setdefault("flash", []).append((kind, message))


def show_flash() -> None:
    """Messages from callbacks, inside one container that is always there: elements after it keep their
    place in the page, so the canvas iframe is not remounted (which would drop its undo history)."""
    slot = st.container()
    for kind, message in st.session_state.get("flash", []):
        getattr(slot, kind)(message)
    st.session_state["flash"] = []


def pending_mask(ws: Workspace) -> tuple[str, np.ndarray] | None:
    """(annotation id, mask) of canvas edits not yet on disk, else None."""
    canvas = st.session_state.get("canvas")
    if not canvas:
        return None
    value = st.session_state.get(canvas["key"])
    mask = mask_from_component(value, canvas["doc"], tuple(canvas["shape"]), len(ws.classes))
    if mask is None:
        return None
    try:
        saved = ws.read_mask(canvas["ann_id"])
    except LabelgenError:
        saved = None
    if saved is not None and np.array_equal(saved, mask):
        return None
    return canvas["ann_id"], mask


def save_pending(ws: Workspace | None = None) -> str | None:
    """Write the canvas's unsaved mask (atomic, validated). Returns the id saved, or None."""
    ws = ws or workspace()
    item = pending_mask(ws)
    if item is None:
        return None
    annotation_id, mask = item
    ws.save_mask(annotation_id, mask)
    return annotation_id


def on_navigate() -> None:
    """Callback of every navigation widget: autosave first."""
    try:
        saved = save_pending()
    except LabelgenError as e:
        flash(f"could not save the mask: {e}", "error")
        return
    if saved:
        flash(f"saved {saved} (autosave)")


def go_annotate(annotation_id: str) -> None:
    """Switch to the annotator showing ``annotation_id`` (used by callbacks; autosaves first)."""
    on_navigate()
    st.session_state["ann_id"] = annotation_id
    st.session_state["page"] = "annotate"
