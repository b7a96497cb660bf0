"""Annotate: generate / import images, an image list with per-image state, paint index masks, save (explicit + on
navigation), mark done."""
from __future__ import annotations

from collections import Counter

import streamlit as st

from labelgen.app import state
from labelgen.app.assist import DEFAULT_SUPERPIXEL_SIZE, SUPERPIXEL_SIZES, SUPERPIXELS, superpixels
from labelgen.app.canvas import mask_canvas
from labelgen.app.core import (
    DONE, MAX_UPLOAD_BYTES, PARTLY, UNLABELLED, AppError, allowed_roots, annotation_progress, check_import_real,
    decode_image_bytes, file_stamp, folder_images, folder_masks, generate_into_workspace, image_progress,
    import_real_images, mark_done, reopen,
)
from labelgen.errors import LabelgenError
from labelgen.workspace import Workspace

LIST_FILTERS = {"all": "All images", UNLABELLED: "Unlabelled", PARTLY: "Partly labelled", DONE: "Done"}
LIST_PAGE = 40  # rows of the image list at a time
LIST_HEIGHT = 520  # px; the list scrolls inside
THUMB = 48  # px, the longer side of a thumbnail
STATUS_MARK = {UNLABELLED: "○", PARTLY: "◐", DONE: "✓"}  # the image list's state of each row


def _generate(n: int) -> None:
    state.on_navigate()
    ws = state.workspace()
    try:
        ids = generate_into_workspace(ws, n)
    except LabelgenError as e:
        state.flash(f"could not generate: {e}", "error")
        return
    st.session_state["ann_id"] = ids[0]
    state.flash(f"generated {len(ids)} image(s): {', '.join(ids)}")


def _step(ids: list[str], delta: int) -> None:
    state.on_navigate()
    current = st.session_state.get("ann_id")
    k = ids.index(current) if current in ids else (-1 if delta > 0 else 0)  # outside the filter: its first / last
    _show(ids, ids[(k + delta) % len(ids)])


def _show(shown: list[str], annotation_id: str) -> None:
    """Make ``annotation_id`` the current image, its page of the image list the one shown."""
    st.session_state["ann_id"] = annotation_id
    if annotation_id in shown:
        st.session_state["list_page"] = shown.index(annotation_id) // LIST_PAGE + 1


def _pick(annotation_id: str) -> None:
    state.on_navigate()
    st.session_state["ann_id"] = annotation_id


@st.cache_data(max_entries=4096, show_spinner=False)
def _thumbnail(_ws: Workspace, root: str, annotation_id: str, stamps: tuple):
    """The image with its saved mask over it, at most THUMB pixels a side (cached per file versions ``stamps``)."""
    from labelgen.imaging import resize_image
    from labelgen.visualize import overlay

    image, _recipe, mask = _ws.read_annotation(annotation_id)
    if mask is not None:
        image = overlay(image, mask, _ws.classes.palette)
    h, w = image.shape[:2]
    scale = THUMB / max(h, w)
    return resize_image(image, (max(1, round(h * scale)), max(1, round(w * scale)))) if scale < 1 else image


def _image_list(ws: Workspace, ids: list[str], progress: dict) -> list[str]:
    """The image list (as CVAT's and Label Studio's): a status filter, then per image its thumbnail with the
    mask, id, state and labelled %; a click opens it (autosaving first). Returns the ids the filter shows."""
    show = st.selectbox("Show", LIST_FILTERS, key="list_filter", format_func=LIST_FILTERS.get)
    n = Counter(p.status for p in progress.values())
    st.caption(" · ".join(f"{STATUS_MARK[s]} {n[s]} {s}" for s in (UNLABELLED, PARTLY, DONE)))
    shown = [i for i in ids if show == "all" or progress[i].status == show]
    if not shown:
        st.caption(f"no {LIST_FILTERS[show].lower()} images")
        return shown
    pages = -(-len(shown) // LIST_PAGE)
    if st.session_state.get("list_page", 1) > pages:
        st.session_state["list_page"] = pages
    page = st.number_input("List page", 1, pages, key="list_page") if pages > 1 else 1
    current = st.session_state["ann_id"]
    with st.container(height=LIST_HEIGHT, border=False):
        for annotation_id in shown[(page - 1) * LIST_PAGE: page * LIST_PAGE]:
            p = progress[annotation_id]
            stamps = tuple(file_stamp(f) for f in (ws.image_path(annotation_id), ws.mask_path(annotation_id)))
            row = st.columns([1, 2.6], gap="small", vertical_alignment="center")
            row[0].image(_thumbnail(ws, str(ws.root), annotation_id, stamps))
            row[1].button(f"{STATUS_MARK[p.status]} {annotation_id} · {100 * p.fraction:.0f}%", key=f"pick-{annotation_id}",
                          on_click=_pick, args=(annotation_id,), use_container_width=True,
                          help=f"{p.status}, {100 * p.fraction:.1f}% labelled",
                          type="primary" if annotation_id == current else "secondary")
    return shown


def _save() -> None:
    try:
        saved = state.save_pending()
    except LabelgenError as e:
        state.flash(f"not saved: {e}", "error")
        return
    state.flash(f"saved {saved}" if saved else "nothing to save (no changes)", "success" if saved else "info")


def _mark_done(annotation_id: str) -> None:
    """Save the canvas's edits, then record that the annotator confirmed this mask (what "Images done" counts)."""
    ws = state.workspace()
    try:
        state.save_pending(ws)
        progress = mark_done(ws, annotation_id)
    except LabelgenError as e:
        state.flash(f"not marked done: {e}", "error")
        return
    state.flash(f"marked {annotation_id} done ({100 * progress.fraction:.1f}% labelled)")


def _reopen(annotation_id: str) -> None:
    reopen(state.workspace(), annotation_id)
    state.flash(f"{annotation_id} reopened (no longer counted as done)", "info")


def _revert(annotation_id: str) -> None:
    nonce = st.session_state["doc_nonce"]
    nonce[annotation_id] = nonce.get(annotation_id, 0) + 1
    st.session_state.pop("prefill", None)


def _prefill(ws: Workspace, annotation_id: str) -> None:
    from labelgen.app.heads_bridge import predict_annotation

    try:
        pred = predict_annotation(ws.teacher(), ws, annotation_id)
    except LabelgenError as e:
        state.flash(f"no prediction: {e}", "warning")
        return
    _revert(annotation_id)
    st.session_state["prefill"] = (annotation_id, pred.mask)


@st.cache_data(max_entries=64, show_spinner=False)
def _superpixels(image, method: str, size: int):
    return superpixels(image, method, size)


def _assist(ws: Workspace, annotation_id: str, image, heads: bool):
    """The assistance row under the canvas: superpixel method and size, and the teacher's prediction on demand.
    Returns (segments, their id, prediction, its id)."""
    from labelgen.app.heads_bridge import current_head_id, predict_annotation

    row = st.columns(3)
    method = row[0].selectbox("Superpixels", list(SUPERPIXELS), key="sp_method",
                              help="Segments for the superpixel tool (S) and the teacher tool (T) on the canvas.")
    size = row[1].slider("Superpixel size (px)", *SUPERPIXEL_SIZES, value=DEFAULT_SUPERPIXEL_SIZE, key="sp_size")
    use_teacher = row[2].toggle("Teacher regions", key="assist_teacher", disabled=not heads,
                                help="Load the heads' prediction: the teacher tool (T) copies it into the clicked "
                                     "superpixel or a dragged rectangle." if heads else "Train heads first.")
    segments = _superpixels(image, method, int(size))
    prediction, head = None, ""
    if use_teacher and heads:
        try:
            head = current_head_id(ws) or ""
            cache = st.session_state.setdefault("assist_prediction", {})
            if (annotation_id, head) not in cache:
                cache.clear()
                cache[(annotation_id, head)] = predict_annotation(ws.teacher(), ws, annotation_id).mask
            prediction = cache[(annotation_id, head)]
        except LabelgenError as e:
            st.warning(f"no teacher prediction: {e}")
    return segments, f"{method}:{size}", prediction, head


def _shown_recipe(recipe: dict) -> dict:
    """A recipe for the status line: an inverted photo's latent (W+, noise maps: kilobytes) as its size only."""
    from labelgen.teacher import LATENT_KEYS

    bulky = (*LATENT_KEYS, "noise")
    return {k: (f"<{len(v)} entries>" if k in bulky and hasattr(v, "__len__") else v) for k, v in recipe.items()}


def _import_section(ws: Workspace, import_roots: list[str]) -> None:
    with st.expander("Import real images"):
        try:
            check_import_real(ws)
        except LabelgenError as e:
            st.info(str(e))
            return
        roots = allowed_roots(ws, import_roots)
        st.caption("Folders allowed: " + ", ".join(f"`{r}`" for r in roots))
        folder = st.text_input("Folder (inside an allowed folder)", key="import_folder")
        masks = st.text_input("Masks folder (optional: <name>.png or <name>.mask.png, as `labelgen import --masks`)",
                              key="import_masks")
        if st.button("Import folder", key="import_folder_btn") and folder:
            try:
                images = folder_images(ws, roots, folder)
                found = folder_masks(ws, roots, folder, masks, images) if masks else None
                _imported(*import_real_images(ws, images, found))
            except LabelgenError as e:
                st.error(str(e))
        files = st.file_uploader(f"or upload images (≤ {MAX_UPLOAD_BYTES // 2**20} MB each)", accept_multiple_files=True,
                                 type=["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff"], key="uploads")
        if files and st.button("Import uploads", key="import_uploads_btn"):
            images, errors = [], []
            for f in files:
                try:
                    if f.size > MAX_UPLOAD_BYTES:
                        raise AppError(f"{f.name}: over the {MAX_UPLOAD_BYTES // 2**20} MB limit")
                    images.append((f.name, decode_image_bytes(f.getvalue(), f.name)))
                except AppError as e:
                    errors.append(str(e))
            for e in errors:
                st.error(e)
            if images:
                _imported(*import_real_images(ws, images))


def _imported(ids: list[str], notices: list[str]) -> None:
    """Open the first imported image; say how many came in and which were stretched far out of proportion."""
    st.session_state["ann_id"] = ids[0]
    state.flash(f"imported {len(ids)} image(s)")
    for notice in notices:
        state.flash(notice, "warning")
    st.rerun()


def render(ws: Workspace, import_roots: list[str] | None = None) -> None:
    st.header("Annotate")
    state.show_flash()
    ids = ws.annotation_ids()
    if not ids:
        st.info("No images yet: press **Generate more** (or `labelgen sample`).")
        st.session_state.pop("canvas", None)
        _add_images(ws, import_roots or [])
        return
    progress = {p.annotation_id: p for p in annotation_progress(ws)}
    if st.session_state.get("ann_id") not in ids:
        st.session_state["ann_id"] = next((i for i in ids if progress[i].status == UNLABELLED), ids[0])
    # the image list in a column of its own: its rows come and go with the filter without moving the canvas
    # (a changed position of an element before the canvas remounts its iframe and drops its undo history)
    side, main = st.columns([1.4, 4], gap="medium")
    with side:
        shown = _image_list(ws, ids, progress)
    with main:
        _annotator(ws, shown or ids)
    _add_images(ws, import_roots or [])  # below the canvas: an opened import panel never pushes it down


def _add_images(ws: Workspace, import_roots: list[str]) -> None:
    row = st.columns([1, 1, 3], vertical_alignment="bottom")
    n_new = row[0].number_input("New images", min_value=1, max_value=64, value=4, key="n_generate")
    row[1].button("Generate more", on_click=_generate, args=(int(n_new),), key="generate", type="primary",
                  help="Sample new images from the workspace generator (their recipes are stored).")
    with row[2]:
        _import_section(ws, import_roots)


def _annotator(ws: Workspace, ids: list[str]) -> None:
    """Navigation, then the canvas (at the top of the page, all of it in the first screen), its status line, the
    rarer actions and the assistance row under it; Previous / Next step through ``ids``."""
    nav = st.columns(4)
    nav[0].button("◀ Previous", on_click=_step, args=(ids, -1), key="prev", use_container_width=True)
    nav[1].button("Next ▶", on_click=_step, args=(ids, 1), key="next", use_container_width=True)
    nav[2].button("Save", on_click=_save, key="save", type="primary", use_container_width=True)
    annotation_id = st.session_state["ann_id"]
    st.query_params["id"] = annotation_id
    nav[3].button("Mark done", on_click=_mark_done, args=(annotation_id,), key="mark_done", use_container_width=True,
                  help="Save, and confirm this mask as finished: only confirmed images count as done.")

    try:
        image, recipe, saved = ws.read_annotation(annotation_id)
    except LabelgenError as e:
        st.error(str(e))
        return
    from labelgen.app.heads_bridge import has_heads

    heads = has_heads(ws)
    # the canvas's place comes first; what is drawn under it is laid out before it is filled (the assistance
    # widgets' values are what the canvas is given)
    canvas_slot, status_slot = st.container(), st.empty()
    actions = st.columns([1, 1.4, 3])
    actions[0].button("Revert", on_click=_revert, args=(annotation_id,), key="revert", use_container_width=True,
                      help="Drop unsaved strokes and reload the saved mask.")
    if image_progress(ws, annotation_id).status == DONE:
        actions[1].button("Reopen", on_click=_reopen, args=(annotation_id,), key="reopen", use_container_width=True,
                          help="Withdraw the confirmation (the mask stays).")
    if saved is None and heads:
        actions[1].button("Pre-fill with heads", on_click=_prefill, args=(ws, annotation_id), key="prefill_btn",
                      use_container_width=True, help="Start from the current heads' prediction.")
    initial, prefilled = saved, False
    prefill = st.session_state.get("prefill")
    if prefill and prefill[0] == annotation_id:
        initial, prefilled = prefill[1], True

    nonce = st.session_state["doc_nonce"].get(annotation_id, 0)
    doc = f"{annotation_id}:{nonce}"
    key = f"canvas-{annotation_id}-{nonce}"
    segments, segments_id, prediction, prediction_id = _assist(ws, annotation_id, image, heads)
    st.session_state["canvas"] = {"ann_id": annotation_id, "doc": doc, "key": key, "shape": list(image.shape[:2])}
    with canvas_slot:
        value = mask_canvas(image, initial, ws.classes.palette, list(ws.classes.names), doc=doc, key=key,
                            emit_on_load=prefilled, segments=segments, segments_id=segments_id, prediction=prediction,
                            prediction_id=prediction_id)
    try:
        pending = state.pending_mask(ws)
    except LabelgenError as e:
        st.error(str(e))
        pending = None
    source = recipe.get("source", "generated")
    progress = image_progress(ws, annotation_id)
    if pending:
        status = "unsaved changes"
    elif saved is None:
        status = "not annotated yet"
    else:
        status = (f"saved mask, {100 * progress.fraction:.1f}% labelled · "
                  + ("✓ done" if progress.status == DONE else
                     "edited since marked done" if progress.edited else "not marked done"))
    status_slot.caption(f"`{annotation_id}` · {source} · {image.shape[1]}x{image.shape[0]} · "
                        f"recipe `{_shown_recipe(recipe)}` · **{status}**"
                        + (f" · edit #{value.get('seq')}" if isinstance(value, dict) else ""))
