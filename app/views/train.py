"""Train: run `labelgen train-heads` in the background, show progress and held-out per-class IoU.

The IoU table is what the teacher wrote: ``W/heads/train_log.json`` -> ``holdout``
(``ids``, ``per_class`` {class: IoU or null}, ``miou``, ``pixel_accuracy``; labelgen.heads.train).
"""
from __future__ import annotations

import streamlit as st

from labelgen.app import jobs, state
from labelgen.data.io import read_json
from labelgen.errors import LabelgenError
from labelgen.heads.train import TRAIN_LOG_NAME
from labelgen.workspace import Workspace

JOB = "train"


def default_holdout(annotated: int) -> int:
    """20 % of the annotated images (at least one) once there are 5, else none."""
    return max(1, round(0.2 * annotated)) if annotated >= 5 else 0


def training_log(ws: Workspace) -> dict | None:
    path = ws.heads_dir / TRAIN_LOG_NAME
    if not path.is_file():
        return None
    try:
        log = read_json(path)
    except LabelgenError:
        return None
    return log if isinstance(log, dict) else None


def _start(epochs: int, holdout: int) -> None:
    ws = state.workspace()
    state.on_navigate()
    try:
        jobs.start(ws, JOB, jobs.train_command(ws, epochs, holdout), progress_log=jobs.train_progress_log(ws))
        state.flash("training started")
    except LabelgenError as e:
        state.flash(str(e), "error")


def _stop() -> None:
    try:
        jobs.stop(state.workspace(), JOB)
    except LabelgenError as e:
        state.flash(str(e), "error")


def render(ws: Workspace) -> None:
    st.header("Train heads")
    state.show_flash()
    n = len(ws.annotated_ids())
    st.write(f"{n} annotated image(s). Head: `{ws.config.head}`.")
    cols = st.columns([1, 1, 1, 2])
    epochs = cols[0].number_input("Epochs", min_value=1, max_value=500, value=30, key="epochs")
    holdout = cols[1].number_input(
        "Hold out", min_value=0, max_value=max(0, n - 1), value=min(default_holdout(n), max(0, n - 1)), key="holdout",
        help="The last K annotated images are not trained on; their per-class IoU measures the heads.")
    running = bool((jobs.status(ws, JOB) or {}).get("running"))
    cols[2].button("Train heads", on_click=_start, args=(int(epochs), int(holdout)), type="primary",
                   disabled=running or n == 0 or int(holdout) >= n, key="train_btn")
    _progress(ws)


@st.fragment(run_every=1.0)
def _progress(ws: Workspace) -> None:
    record = jobs.status(ws, JOB)
    if record is not None and record["running"]:
        st.session_state["train_seen_running"] = True
    elif st.session_state.pop("train_seen_running", False):
        st.rerun()  # the run just ended: redraw the whole page (re-enables the Train button, new heads)
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
    _scores(ws)


def _scores(ws: Workspace) -> None:
    log = training_log(ws)
    if log is None:
        return
    losses = log.get("losses") or []
    trained = log.get("train_ids") or []
    st.caption(f"Current heads: {log.get('head', '?')} x{log.get('ensemble', '?')}, trained on {len(trained)} image(s)"
               + (f", final loss {losses[-1]:.4f}" if losses and isinstance(losses[-1], (int, float)) else ""))
    holdout = log.get("holdout")
    per_class = holdout.get("per_class") if isinstance(holdout, dict) else None
    if not isinstance(per_class, dict) or not per_class:
        st.caption("No held-out IoU in the training log (train with **Hold out** > 0 to measure it).")
        return
    ids = holdout.get("ids") or []
    st.subheader("Held-out IoU per class")
    st.caption(f"on {len(ids)} annotated image(s) not trained on: {', '.join(f'`{i}`' for i in ids)}")
    st.dataframe({"class": list(per_class),
                  "IoU": [None if not isinstance(v, (int, float)) else round(float(v), 3) for v in per_class.values()]},
                 hide_index=True)
    miou = holdout.get("miou")
    if isinstance(miou, (int, float)):
        st.metric("mean IoU", f"{miou:.3f}")
