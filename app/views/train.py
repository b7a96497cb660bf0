"""Train: run `labelgen train-heads` in the background, show progress and held-out per-class IoU."""
from __future__ import annotations

import streamlit as st

from labelgen.app import jobs, state
from labelgen.data.io import read_json
from labelgen.errors import LabelgenError
from labelgen.workspace import Workspace

JOB = "train"


def find_iou(obj, num_classes: int, names: list[str]) -> dict[str, float] | None:
    """Per-class IoU in a training log (the first ``*iou*`` entry with one value per class)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if "iou" in str(key).lower():
                if isinstance(value, list) and len(value) == num_classes and all(isinstance(v, (int, float)) or v is None for v in value):
                    return {n: v for n, v in zip(names, value)}
                if isinstance(value, dict) and value and set(value) <= set(names):
                    return {n: value.get(n) for n in names}
        for value in obj.values():
            found = find_iou(value, num_classes, names)
            if found:
                return found
    elif isinstance(obj, list):
        for value in reversed(obj):
            found = find_iou(value, num_classes, names)
            if found:
                return found
    return None


def training_log(ws: Workspace) -> dict | None:
    for name in ("train_log.json", "metrics.json"):
        path = ws.heads_dir / name
        if path.is_file():
            try:
                return read_json(path)
            except LabelgenError:
                return None
    return None


def _start(epochs: int) -> None:
    ws = state.workspace()
    state.on_navigate()
    try:
        jobs.start(ws, JOB, jobs.train_command(ws, epochs))
        state.flash("training started")
    except LabelgenError as e:
        state.flash(str(e), "error")


def _stop() -> None:
    jobs.stop(state.workspace(), JOB)


def render(ws: Workspace) -> None:
    st.header("Train heads")
    state.show_flash()
    n = len(ws.annotated_ids())
    st.write(f"{n} annotated image(s). Head: `{ws.config.head}`.")
    cols = st.columns([1, 1, 3])
    epochs = cols[0].number_input("Epochs", min_value=1, max_value=500, value=30, key="epochs")
    running = bool((jobs.status(ws, JOB) or {}).get("running"))
    cols[1].button("Train heads", on_click=_start, args=(int(epochs),), type="primary", disabled=running or n == 0,
                   key="train_btn")
    _progress(ws)


@st.fragment(run_every=1.0)
def _progress(ws: Workspace) -> None:
    record = jobs.status(ws, JOB)
    if record is None:
        st.caption("No training run yet.")
    else:
        if record["running"]:
            p = record.get("progress")
            st.progress(p if p is not None else 0.0, text=f"training… {'' if p is None else f'{100 * p:.0f}%'}")
            st.button("Stop", on_click=_stop, key="stop_btn")
        elif record.get("returncode") not in (0, None):
            st.error(f"training failed (exit {record['returncode']})")
        else:
            st.success("training finished")
        with st.expander("Log", expanded=record["running"]):
            st.code(record.get("log_tail", "")[-3000:] or "(empty)")
    log = training_log(ws)
    if log is not None:
        iou = find_iou(log, len(ws.classes), list(ws.classes.names))
        if iou:
            st.subheader("Held-out IoU per class")
            st.dataframe({"class": list(iou), "IoU": [None if v is None else round(float(v), 3) for v in iou.values()]},
                         hide_index=True)
            values = [v for v in iou.values() if isinstance(v, (int, float))]
            if values:
                st.metric("mean IoU", f"{sum(values) / len(values):.3f}")
        else:
            st.caption("No held-out IoU in the training log (train with held-out images to measure it).")
