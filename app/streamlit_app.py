"""Entry script run by ``streamlit run`` (``labelgen app`` starts it): sidebar, page switch, autosave.

    streamlit run app/streamlit_app.py -- --workspace W [--import-root DIR ...]

The workspace may also come from LABELGEN_WORKSPACE (tests). The current page and annotation id live
in the URL (``?page=review&id=g000003``) so a reload shows the same thing.
"""
from __future__ import annotations

import argparse
import html
import os
import sys

import numpy as np
import streamlit as st

from labelgen.app import state
from labelgen.app.core import DONE, PARTLY, annotation_progress
from labelgen.errors import LabelgenError

PAGES = {"annotate": "Annotate", "train": "Train", "review": "Review"}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="labelgen app", add_help=False)
    parser.add_argument("--workspace", default=os.environ.get("LABELGEN_WORKSPACE"))
    parser.add_argument("--import-root", action="append", default=[])
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args


def _sidebar(ws) -> str:
    st.sidebar.title("labelgen")
    st.sidebar.caption(f"workspace `{ws.root}` · {ws.config.backend}")
    page = st.sidebar.radio("Page", list(PAGES), format_func=PAGES.get, key="page", on_change=state.on_navigate)
    progress = annotation_progress(ws)
    n_done = sum(p.status == DONE for p in progress)
    n_partly = sum(p.status == PARTLY for p in progress)
    st.sidebar.metric("Images done", f"{n_done} / {len(progress)}",
                      help="Images whose mask the annotator confirmed with **Mark done** (a saved or copied mask "
                           "alone does not count).")
    pixels = sum(p.pixels for p in progress)
    st.sidebar.caption(f"{n_partly} partly labelled · {100 * sum(p.labelled for p in progress) / max(1, pixels):.1f}% "
                       "of all pixels labelled")
    # raw HTML (the colour swatches): a class name is text, escaped (a workspace may come from someone else)
    counts = sum((p.counts for p in progress), np.zeros(len(ws.classes), np.int64))
    total = max(1, int(counts.sum()))
    rows = "".join(
        f"<tr><td><span style='display:inline-block;width:11px;height:11px;background:rgb{tuple(colour)};"
        f"border:1px solid #555'></span> {html.escape(name)}</td><td style='text-align:right'>{int(c):,}</td>"
        f"<td style='text-align:right'>{100 * c / total:.1f}%</td></tr>"
        for name, colour, c in zip(ws.classes.names, ws.classes.colours, counts))
    st.sidebar.markdown("**Class pixels**")
    st.sidebar.markdown(f"<table style='font-size:0.8em'>{rows}</table>", unsafe_allow_html=True)
    return page


def main() -> None:
    st.set_page_config(page_title="labelgen", layout="wide")
    args = _args()
    try:
        ws = state.workspace(args.workspace)
    except LabelgenError as e:
        st.error(str(e))
        st.info("Start the app with `labelgen app --workspace W` (create one with `labelgen init`).")
        st.stop()
    state.init_session(list(PAGES))
    page = _sidebar(ws)
    st.query_params["page"] = page
    if page == "annotate":
        from labelgen.app.views.annotate import render
        render(ws, args.import_root)
    elif page == "train":
        from labelgen.app.views.train import render
        render(ws)
    else:
        from labelgen.app.views.review import render
        render(ws)


main()
