"""Review: synthetic samples with mask overlays, sorted by uncertainty; accept / reject / fix; suggest next."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from labelgen.app import state
from labelgen.app.core import (
    ACCEPTED, REJECTED, AppError, ReviewStore, fix_sample, heat, list_samples, load_sample, resolve_inside,
    synthetic_sets,
)
from labelgen.errors import LabelgenError
from labelgen.visualize import overlay, upscale
from labelgen.workspace import Workspace

PAGE_SIZE = 12
COLUMNS = 4
UNREVIEWED = "unreviewed"
DECISIONS = {ACCEPTED: "Accept", REJECTED: "Reject", UNREVIEWED: "Clear"}  # state -> its choice on a card


@st.cache_data(show_spinner=False, max_entries=8)
def _samples(set_dir: str, stamp: float):
    return list_samples(Path(set_dir))


def _stamp(set_dir: Path) -> float:
    return max((p.stat().st_mtime for p in set_dir.glob("*.json")), default=0.0)


def _head_stamp(ws: Workspace) -> str | None:
    files = sorted(p for folder in ws.trained_heads().values() for p in folder.glob("head*") if p.is_file())
    return "|".join(f"{p.relative_to(ws.heads_dir)}:{p.stat().st_mtime_ns}" for p in files) or None


def _write_choices(store: ReviewStore, set_name: str) -> None:
    """Write every decision the annotator chose on a card since the page last showed it (atomic, one write each).

    The cards' decision controls hold values, and every message from the browser carries all of them, so choices
    made while the page is still updating all arrive; but Streamlit may skip the on_change callback of a control
    changed while a run was interrupted, so the page compares each control with what it last showed instead of
    relying on callbacks. A control that still shows what it was given is left alone (review.json wins: another
    session may have changed it)."""
    shown = st.session_state.setdefault("review_shown", {})
    for (name, key), was in list(shown.items()):
        control = f"dec-{key}"
        if name != set_name or control not in st.session_state:
            continue
        choice = st.session_state[control]
        if choice != was:
            store.set(set_name, key, choice if choice in (ACCEPTED, REJECTED) else None)
            shown[(name, key)] = choice


def _decision_control(set_name: str, key: str, decision: str | None) -> None:
    """Accept / Reject / Clear for one card, showing ``decision`` (None: unreviewed, nothing selected); what it
    shows is remembered for :func:`_write_choices` until a run of the page ends without drawing the card."""
    control = f"dec-{key}"
    if st.session_state.get(control) != decision:
        st.session_state[control] = decision  # as review.json says (Clear leaves nothing selected)
    st.session_state.setdefault("review_shown", {})[(set_name, key)] = decision
    st.segmented_control("Decision", list(DECISIONS), format_func=DECISIONS.get, required=True, key=control,
                         label_visibility="collapsed", width="stretch")


def _fix(set_dir: str, info) -> None:
    ws = state.workspace()
    try:
        annotation_id = fix_sample(ws, load_sample(Path(set_dir), info))
    except LabelgenError as e:
        state.flash(f"could not copy {info.key}: {e}", "error")
        return
    state.go_annotate(annotation_id)
    state.flash(f"copied synthetic sample {info.key} into the annotations as {annotation_id}")


@st.cache_data(show_spinner="computing the uncertainty map", max_entries=64)
def _cached_uncertainty_map(set_dir: str, stamp: float, key: str, head: str | None, _ws: Workspace, _sample):
    """:func:`_uncertainty_map`, once per sample and saved head (reruns do not recompute it)."""
    return _uncertainty_map(_ws, _sample)


def _uncertainty_map(ws: Workspace, sample) -> tuple[np.ndarray | None, str]:
    """(heat image of the per-pixel uncertainty, caption) from the heads' prediction of the sample
    (labelgen.teacher: JS divergence of the ensemble, entropy for one member), or (None, why)."""
    from labelgen.app import heads_bridge

    try:
        pred = heads_bridge.predict_sample(ws.teacher(), sample)
        same = sample.meta.get("head") in (None, heads_bridge.current_head_id(ws))
    except LabelgenError as e:
        return None, str(e)
    measure = sample.meta.get("uncertainty_measure") or "uncertainty"
    note = "the heads that labelled it" if same else "the CURRENT heads (retrained since synthesis)"
    peak = float(pred.uncertainty.max())  # scaled per image: typical values are far below the bound ln K
    return heat(pred.uncertainty / peak if peak > 0 else pred.uncertainty), (
        f"per-pixel {measure} from {note}: score {pred.score:.3f} (white = this image's max, {peak:.3f} nats)")


def render(ws: Workspace) -> None:
    st.header("Review synthetic samples")
    state.show_flash()
    sets = synthetic_sets(ws)
    if not sets:
        st.info("No synthetic samples yet: run `labelgen synthesize` (output goes to W/synthetic).")
        return
    top = st.columns([2, 2, 2, 1])
    set_name = top[0].selectbox("Output folder", sets, key="review_set")
    try:
        set_dir = resolve_inside(ws.root, set_name)
        samples = _samples(str(set_dir), _stamp(set_dir))
    except (AppError, LabelgenError) as e:
        st.error(str(e))
        return
    order = top[1].selectbox("Sort by", ["most uncertain first", "least uncertain first", "key"], key="review_sort")
    show = top[2].selectbox("Show", ["all", "unreviewed", "accepted", "rejected"], key="review_filter")
    store = ReviewStore(ws)
    _write_choices(store, set_name)
    decisions = store.decisions(set_name)

    def unc(s):
        return s.uncertainty if s.uncertainty is not None else -1.0

    if order == "key":
        samples = sorted(samples, key=lambda s: s.key)
    else:
        samples = sorted(samples, key=unc, reverse=order.startswith("most"))
    if show != "all":
        samples = [s for s in samples if decisions.get(s.key, "unreviewed") == show]
    n_acc = sum(v == ACCEPTED for v in decisions.values())
    n_rej = sum(v == REJECTED for v in decisions.values())
    st.caption(f"{len(samples)} shown · {n_acc} accepted · {n_rej} rejected (saved in `{store.path.name}`)")

    _suggest(ws, set_name, str(set_dir), decisions)

    pages = max(1, -(-len(samples) // PAGE_SIZE))
    page = top[3].number_input("Page", min_value=1, max_value=pages, value=1, key="review_page") if pages > 1 else 1
    chosen = samples[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    decoded = _decode(str(set_dir), _stamp(set_dir), tuple((s.shard, s.index, s.key) for s in chosen))
    palette = ws.classes.palette
    for row in range(0, len(chosen), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, info in zip(cols, chosen[row:row + COLUMNS]):
            sample = decoded[info.key]
            with col.container(border=True):
                factor = max(1, 192 // max(sample.image.shape[:2]))
                decision = decisions.get(info.key)
                badge = {"accepted": "ACCEPTED", "rejected": "REJECTED"}.get(decision, "unreviewed")
                u = "" if info.uncertainty is None else f" · unc {info.uncertainty:.3f}"
                st.image(upscale(overlay(sample.image, sample.mask, palette), factor),
                         caption=f"{info.key}{u} · {badge}")
                # a state, not a toggle: a second Accept stays accepted; a control holding a value, not buttons
                # (of several button clicks made while the page updates, Streamlit keeps only the last)
                _decision_control(set_name, info.key, decision)
                st.button("Fix → annotate", key=f"fix-{info.key}", on_click=_fix, args=(str(set_dir), info),
                            use_container_width=True, help="Copy into the annotations and open it in the annotator.")
                if st.toggle("uncertainty map", key=f"unc-{info.key}"):
                    umap, text = _cached_uncertainty_map(str(set_dir), _stamp(set_dir), info.key, _head_stamp(ws),
                                                         ws, sample)
                    if umap is None:
                        st.caption(f"no uncertainty map: {text}")
                    else:
                        st.image(upscale(umap, factor), caption=text)
    drawn = {(set_name, info.key) for info in chosen}  # the run got here: forget the cards it did not draw
    st.session_state["review_shown"] = {k: v for k, v in st.session_state["review_shown"].items() if k in drawn}


@st.cache_data(show_spinner=False, max_entries=16)
def _decode(set_dir: str, stamp: float, wanted: tuple):
    """Decode the samples of one grid page, reading each shard once."""
    from labelgen.data.shards import iter_shard

    by_shard: dict[str, set[int]] = {}
    for shard, index, _key in wanted:
        by_shard.setdefault(shard, set()).add(index)
    out = {}
    for shard, indices in by_shard.items():
        for k, sample in enumerate(iter_shard(resolve_inside(Path(set_dir), shard))):
            if k in indices:
                out[sample.key] = sample
            if k >= max(indices):
                break
    return out


def _suggest(ws: Workspace, set_name: str, set_dir: str, decisions: dict) -> None:
    samples = _samples(set_dir, _stamp(Path(set_dir)))
    ranked = sorted((s for s in samples if s.uncertainty is not None and s.key not in decisions),
                    key=lambda s: s.uncertainty, reverse=True)[:5]
    with st.expander("Suggest next: the most uncertain samples to annotate (active learning)"):
        if not ranked:
            st.caption("No unreviewed samples with an uncertainty score.")
            return
        for info in ranked:
            c = st.columns([3, 1])
            c[0].write(f"`{info.key}` · uncertainty {info.uncertainty:.3f}")
            c[1].button("Annotate", key=f"sug-{info.key}", on_click=_fix, args=(set_dir, info))
