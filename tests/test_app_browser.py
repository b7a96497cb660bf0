"""End-to-end: the app in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Paints with the real mouse on a generated DCGAN image and checks the saved index mask file; checks
that accept/reject survive a page reload; on a real dcgan workspace, trains from the Train page
(`labelgen train-heads --holdout`), reviews `labelgen synthesize` output and pre-fills with the heads.
Screenshots of every page go to test-output/ (app_*_real.png: real heads + synthesis).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelgen.app.testing import make_workspace

CHROMIUM = "/usr/bin/chromium"
OUT = Path(__file__).resolve().parents[1] / "test-output"
# Waits are on the app's own state (its flash messages, the mask status line, the canvas's JS state), so a
# slow machine only makes them slower; this bound only turns a hang into a failure (seconds).
APP_WAIT = int(os.environ.get("APP_WAIT", 180))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing (scripts/setup_browser.sh installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(ws_root: Path, log_path: Path, extra_env: dict[str, str] | None = None):
    port = _free_port()
    log = open(log_path, "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "labelgen.cli", "app", "--workspace", str(ws_root), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                return proc, log, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"app server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.3)


def _stop_server(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _serve(tmp_path_factory, n_images: int):
    """(url, workspace) of a server on a new workspace with ``n_images`` images and 6 synthetic samples."""
    ws = make_workspace(tmp_path_factory.mktemp("app") / "ws", n_images=n_images, synthetic=6)
    proc, log, url = _start_server(ws.root, tmp_path_factory.mktemp("log") / "server.log")
    yield url, ws
    _stop_server(proc, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def _browse(browser, width: int, height: int):
    """A page in a fresh browser context with a ``width`` x ``height`` window (a generator: closed after)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    p = context.new_page()
    p.set_default_timeout(APP_WAIT * 1000)
    yield p
    context.close()


@pytest.fixture
def page(browser):
    yield from _browse(browser, 1400, 1100)


def wait_until(predicate, timeout: float = APP_WAIT, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def canvas_frame(page, doc: str | None = None):
    """The painter's iframe (a Frame, for evaluating its JS state), once it shows ``doc`` (any if None)."""
    handle = page.wait_for_selector("iframe[title*='mask_canvas']")
    frame = handle.content_frame()
    frame.wait_for_function("doc => window.labelgenCanvas && window.labelgenCanvas.doc && "
                            "(doc === null || window.labelgenCanvas.doc === doc)", arg=doc)
    return frame


def app_says(page, text: str) -> None:
    """Wait until the app shows ``text`` (a flash message: its state after the rerun that did the work)."""
    page.get_by_text(text, exact=True).first.wait_for()


def app_has_edits(page, state) -> None:
    """Wait until the app (not just the canvas) has the canvas's latest edit: its mask status line shows
    "unsaved changes · edit #<seq>" for the seq the canvas sent last."""
    seq = state.evaluate("window.labelgenCanvas.seq")
    assert seq >= 1
    page.get_by_text(re.compile(rf"unsaved changes · edit #{seq}$")).first.wait_for()


def decide(page, key: str, choice: str) -> None:
    """Click ``choice`` (Accept / Reject / Clear) on sample ``key``'s review card."""
    page.locator(f".st-key-dec-{key}").get_by_text(choice, exact=True).click()


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"  # an index PNG, not colours
        return np.asarray(im).copy()


def test_paint_tools_on_a_generated_image_save_exact_class_ids(server, page):
    url, ws = server
    OUT.mkdir(exist_ok=True)
    page.goto(url)
    page.get_by_role("button", name="Generate more").click()
    app_says(page, "generated 4 image(s): g000001, g000002, g000003, g000004")
    assert len(ws.annotation_ids()) == 4
    frame = page.frame_locator("iframe[title*='mask_canvas']")
    overlay = frame.locator("#overlay")
    overlay.wait_for()
    state = canvas_frame(page, "g000001:0")
    zoom = state.evaluate("window.labelgenCanvas.zoom")
    def at(x, y):  # screen position of image pixel (x, y); re-measured (clicks may scroll the page)
        box = overlay.bounding_box()
        z = state.evaluate("window.labelgenCanvas.zoom")
        return box["x"] + (x + 0.5) * z, box["y"] + (y + 0.5) * z

    # brush, class "hair" (id 2): a horizontal stroke along row 20
    frame.locator("#class-2").click()
    page.mouse.move(*at(10, 20))
    page.mouse.down()
    page.mouse.move(*at(50, 20), steps=12)
    page.mouse.up()
    app_has_edits(page, state)
    page.get_by_role("button", name="Save", exact=True).click()
    app_says(page, "saved g000001")
    mask_file = ws.mask_path("g000001")
    mask = read_mask(mask_file)
    assert mask.shape == (64, 64)
    assert set(np.unique(mask).tolist()) <= {2, 255}  # only the chosen class id and "unlabelled"
    assert (mask[20, 10:51] == 2).all()  # the stroke's pixels
    assert (mask[:15] == 255).all() and (mask[26:] == 255).all()  # nothing far from it
    page.screenshot(path=str(OUT / "app_annotate.png"), full_page=True)

    def js_mask():
        return np.array(state.evaluate("Array.from(window.labelgenCanvas.mask)"), np.uint8).reshape(64, 64)

    def mask_when(condition, what: str) -> np.ndarray:
        """The canvas mask once ``condition(mask)`` holds (the canvas applies a click in its own time)."""
        return wait_until(lambda: (lambda m: [m] if condition(m) else None)(js_mask()), what=what)[0]

    # polygon, class "skin" (1): four clicks + Enter
    frame.locator("#class-1").click()
    frame.locator("#t-polygon").click()
    for x, y in ((5, 30), (30, 30), (30, 50), (5, 50)):
        page.mouse.click(*at(x, y))
    page.keyboard.press("Enter")
    m = js_mask()
    assert (m[32:49, 7:29] == 1).all() and m[55, 40] == 255
    app_has_edits(page, state)  # the rerun this edit caused is over: the page no longer moves under the pointer
    # flood fill with "background" (0) from an unlabelled pixel: the whole unlabelled region
    frame.locator("#class-0").click()
    frame.locator("#t-fill").click()
    page.mouse.click(*at(60, 60))
    m = mask_when(lambda m: m[60, 60] == 0, "the flood fill")
    assert m[0, 0] == 0 and m[40, 15] == 1 and m[20, 30] == 2 and (m != 255).all()
    app_has_edits(page, state)
    # undo restores the unlabelled region; eraser clears the polygon's centre
    frame.locator("#undo").click()
    m = js_mask()
    assert m[60, 60] == 255 and m[40, 15] == 1
    app_has_edits(page, state)
    frame.locator("#t-eraser").click()
    page.mouse.click(*at(15, 40))
    m = mask_when(lambda m: m[40, 15] == 255, "the eraser")
    assert m[32, 8] == 1
    # zoom in: the same image pixel is twice as far from the corner
    frame.locator("#zoom-in").click()
    assert state.evaluate("window.labelgenCanvas.zoom") == 2 * zoom
    assert overlay.bounding_box()["width"] == pytest.approx(64 * 2 * zoom, abs=1)
    expected = js_mask()
    page.screenshot(path=str(OUT / "app_annotate_tools.png"), full_page=True)
    # navigating away saves automatically
    app_has_edits(page, state)
    page.get_by_role("button", name="Next ▶").click()
    app_says(page, "saved g000001 (autosave)")
    saved = read_mask(mask_file)
    np.testing.assert_array_equal(saved, expected)
    assert set(np.unique(saved).tolist()) <= {1, 2, 255}
    # reopening shows the saved mask
    page.goto(f"{url}/?page=annotate&id=g000001")
    page.screenshot(path=str(OUT / "app_annotate_reopened.png"), full_page=True)
    state = canvas_frame(page, "g000001:0")
    np.testing.assert_array_equal(js_mask(), saved)


def test_review_decisions_survive_reload(server, page):
    url, ws = server
    OUT.mkdir(exist_ok=True)
    page.goto(f"{url}/?page=review")
    decide(page, "s00005", "Accept")
    wait_until(lambda: (ws.root / "review.json").is_file(), what="review.json")
    decide(page, "s00002", "Reject")
    wait_until(lambda: json.loads((ws.root / "review.json").read_text())["sets"]["synthetic"]
               == {"s00005": "accepted", "s00002": "rejected"}, what="both decisions")
    page.reload()
    page.get_by_text("s00005 · unc 0.833 · ACCEPTED").wait_for()
    page.get_by_text("s00002 · unc 0.333 · REJECTED").wait_for()
    page.locator(".st-key-unc-s00004 label").click()  # per-pixel uncertainty on demand (no heads yet)
    page.get_by_text("no uncertainty map").wait_for()
    page.screenshot(path=str(OUT / "app_review.png"), full_page=True)
    page.goto(f"{url}/?page=train")
    page.get_by_role("heading", name="Train heads").wait_for()
    page.get_by_text("No training run yet").wait_for()
    page.screenshot(path=str(OUT / "app_train.png"), full_page=True)


# ------------------------------------------------------------------ the annotator's first hour (issue 34)
@pytest.fixture(scope="module")
def annotator(tmp_path_factory):
    """A server on a workspace with 3 images to annotate and 6 synthetic samples to review."""
    yield from _serve(tmp_path_factory, 3)


@pytest.fixture
def screen(browser):
    """A page in a 1280x1000 window (a laptop screen)."""
    yield from _browse(browser, 1280, 1000)


def test_canvas_in_the_first_screen_plain_wheel_scrolls_ctrl_wheel_sizes(annotator, screen):
    url, ws = annotator
    OUT.mkdir(exist_ok=True)
    page = screen
    page.goto(f"{url}/?page=annotate&id=g000002")
    state = canvas_frame(page, "g000002:0")
    overlay = page.frame_locator("iframe[title*='mask_canvas']").locator("#overlay")
    box = overlay.bounding_box()
    assert box["height"] == 512 and box["y"] >= 0 and box["y"] + box["height"] <= 1000, box  # all of it in view
    assert box["x"] + box["width"] <= 1280, box
    page.screenshot(path=str(OUT / "app_annotate_first_screen.png"))
    # the import panel opened does not push the canvas down
    top = page.evaluate("() => document.querySelector('iframe[title*=mask_canvas]').getBoundingClientRect().top "
                        "+ document.querySelector('[data-testid=stMain]').scrollTop")
    page.get_by_text("Import real images").click()
    page.get_by_text("needs features of real images").wait_for()
    assert page.evaluate("() => document.querySelector('iframe[title*=mask_canvas]').getBoundingClientRect().top "
                         "+ document.querySelector('[data-testid=stMain]').scrollTop") == top
    page.get_by_text("Import real images").click()  # closed again
    page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollTo(0, 0)")  # back to the top
    wait_until(lambda: overlay.bounding_box()["y"] == box["y"], what="the page scrolled back to the top")

    # a plain wheel over the canvas scrolls the page and leaves the brush alone
    size = state.evaluate("window.labelgenCanvas.size")
    page.mouse.move(box["x"] + 256, box["y"] + 256)
    page.mouse.wheel(0, 200)
    wait_until(lambda: overlay.bounding_box()["y"] < box["y"] - 100, what="the page to scroll")
    assert state.evaluate("window.labelgenCanvas.size") == size
    # Ctrl + wheel sets the brush size (up: larger) and does not scroll
    scrolled = overlay.bounding_box()
    page.mouse.move(scrolled["x"] + 256, scrolled["y"] + 400)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    wait_until(lambda: state.evaluate("window.labelgenCanvas.size") == size + 2, what="brush size + 2")
    assert overlay.bounding_box()["y"] == scrolled["y"]
    # Alt + wheel zooms
    zoom = state.evaluate("window.labelgenCanvas.zoom")
    page.keyboard.down("Alt")
    page.mouse.wheel(0, 100)
    page.keyboard.up("Alt")
    wait_until(lambda: state.evaluate("window.labelgenCanvas.zoom") == zoom // 2, what="zoom out")
    assert (ws.root / "annotations" / "g000002.mask.png").exists() is False  # nothing painted by any of it


def test_counter_counts_what_the_annotator_marked_done(annotator, screen):
    url, ws = annotator
    page = screen
    page.goto(f"{url}/?page=annotate&id=g000001")
    state = canvas_frame(page, "g000001:0")
    overlay = page.frame_locator("iframe[title*='mask_canvas']").locator("#overlay")
    metric = page.locator("[data-testid='stSidebar'] [data-testid='stMetricValue']")
    wait_until(lambda: metric.inner_text() == "0 / 3", what="0 / 3 done")
    box = overlay.bounding_box()
    page.mouse.move(box["x"] + 40, box["y"] + 80)  # a stroke: a few % of the image labelled
    page.mouse.down()
    page.mouse.move(box["x"] + 400, box["y"] + 80, steps=10)
    page.mouse.up()
    app_has_edits(page, state)
    page.get_by_role("button", name="Save", exact=True).click()
    app_says(page, "saved g000001")
    assert ws.read_mask("g000001") is not None
    page.get_by_text(re.compile(r"saved mask, \d+\.\d% labelled · not marked done")).wait_for()
    assert metric.inner_text() == "0 / 3"  # saved is not done
    page.get_by_role("button", name="Mark done").click()
    app_says(page, f"marked g000001 done ({100 * (ws.read_mask('g000001') != 255).mean():.1f}% labelled)")
    wait_until(lambda: metric.inner_text() == "1 / 3", what="1 / 3 done")
    assert json.loads((ws.annotations_dir / "g000001.status.json").read_text())["status"] == "done"
    page.get_by_role("button", name=re.compile(r"^✓ g000001 · \d+%$")).wait_for()  # its row in the list: done
    # the list's filter: done images only
    page.locator(".st-key-list_filter").click()
    page.get_by_role("option", name="Done").click()
    wait_until(lambda: page.locator("[class*='st-key-pick-']").count() == 1, what="one done image listed")
    page.screenshot(path=str(OUT / "app_annotate_done.png"))


def test_view_options_hide_the_mask_outline_hide_a_class_and_the_legend(annotator, screen):
    """H hides the mask, O shows outlines only, Shift+2 / the eye hide class 1, ? opens the shortcuts legend; none
    of it edits the mask."""
    url, ws = annotator
    page = screen
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    ws.save_mask("g000003", mask)
    page.goto(f"{url}/?page=annotate&id=g000003")
    state = canvas_frame(page, "g000003:0")
    frame = page.frame_locator("iframe[title*='mask_canvas']")

    def shown(x, y):  # the mask layer's opacity at image pixel (x, y), and whether the layer is visible
        return state.evaluate("([x, y]) => [document.getElementById('mask').getContext('2d')"
                              ".getImageData(x, y, 1, 1).data[3], document.getElementById('mask').style.visibility]",
                              [x, y])

    wait_until(lambda: shown(32, 32) == [255, "visible"], what="the mask drawn")
    frame.locator("#status").click()  # the keyboard goes to the canvas
    page.keyboard.press("h")
    assert shown(32, 32)[1] == "hidden"
    page.keyboard.press("h")
    page.keyboard.press("o")  # outlines only: the square's edge and the background's edge next to it
    assert [shown(32, 32)[0], shown(16, 32)[0], shown(15, 32)[0], shown(5, 5)[0]] == [0, 255, 255, 0]
    page.screenshot(path=str(OUT / "app_annotate_outline.png"))
    page.keyboard.press("o")
    page.keyboard.press("Shift+Digit2")  # class 1 hidden, class 0 still shown
    assert [shown(32, 32)[0], shown(5, 5)[0]] == [0, 255]
    frame.locator("#eye-1").click()  # and shown again by its eye
    assert [shown(32, 32)[0], shown(5, 5)[0]] == [255, 255]
    frame.locator("#status").click()
    page.keyboard.press("?")
    frame.get_by_text("outlines only").wait_for()
    page.screenshot(path=str(OUT / "app_annotate_legend.png"))
    assert state.evaluate("window.labelgenCanvas.seq") == 0  # nothing sent to the app: the mask is as saved
    np.testing.assert_array_equal(ws.read_mask("g000003"), mask)


def test_accept_twice_stays_accepted_and_quick_clicks_all_land(annotator, screen):
    url, ws = annotator
    page = screen
    review = ws.root / "review.json"

    def on_disk():
        data = json.loads(review.read_text()) if review.is_file() else {"sets": {}}
        return data["sets"].get("synthetic", {}), data.get("updated")

    page.goto(f"{url}/?page=review")
    decide(page, "s00005", "Accept")
    wait_until(lambda: on_disk()[0] == {"s00005": "accepted"}, what="s00005 accepted on disk")
    page.get_by_text("s00005 · unc 0.833 · ACCEPTED").wait_for()
    decide(page, "s00005", "Accept")  # a second Accept: still accepted (it used to toggle back to unreviewed)
    decide(page, "s00000", "Reject")  # (once this one is on disk, the page has had the second Accept too)
    wait_until(lambda: on_disk()[0] == {"s00005": "accepted", "s00000": "rejected"}, what="s00000 rejected")
    page.get_by_text("s00005 · unc 0.833 · ACCEPTED").wait_for()
    # clicks while the page is still updating from the one before: every one is written
    decide(page, "s00004", "Reject")
    decide(page, "s00003", "Accept")
    decide(page, "s00003", "Accept")
    decide(page, "s00001", "Reject")
    wait_until(lambda: on_disk()[0] == {"s00005": "accepted", "s00000": "rejected", "s00004": "rejected",
                                        "s00003": "accepted", "s00001": "rejected"}, what="all decisions on disk")
    decide(page, "s00005", "Clear")  # back to unreviewed
    wait_until(lambda: "s00005" not in on_disk()[0], what="s00005 cleared")
    page.get_by_text("s00005 · unc 0.833 · unreviewed").wait_for()
    page.get_by_text("s00003 · unc 0.500 · ACCEPTED").wait_for()
    page.screenshot(path=str(OUT / "app_review_states.png"), full_page=True)


# ------------------------------------------------------------------ the real teacher behind the pages
def _cli(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LABELGEN_WORKSPACE="")
    subprocess.run([sys.executable, "-m", "labelgen.cli", *args], check=True, env=env, capture_output=True)


def test_pages_on_real_heads_and_synthesis(tmp_path, page):
    """`labelgen init` (dcgan) + `sample` + masks; train from the Train page (the real `labelgen
    train-heads --holdout`); `labelgen synthesize` into W/synthetic; review it with the heads'
    uncertainty map; pre-fill a new image with the heads. Screenshots: test-output/app_*_real.png."""
    from labelgen.workspace import Workspace

    OUT.mkdir(exist_ok=True)
    root = tmp_path / "W"
    _cli("init", str(root), "--generator", "dcgan", "--classes", "background,face,hair")
    _cli("sample", "-w", str(root), "--n", "5")
    ws = Workspace(root)
    yy, xx = np.mgrid[:64, :64]
    for k, annotation_id in enumerate(ws.annotation_ids()):  # a rough face ellipse with hair above it
        mask = np.zeros((64, 64), np.uint8)
        mask[((yy - 36 - k) / 20) ** 2 + ((xx - 32) / 15) ** 2 <= 1] = 1
        mask[(((yy - 26) / 16) ** 2 + ((xx - 32) / 20) ** 2 <= 1) & (yy < 26 + k)] = 2
        ws.save_mask(annotation_id, mask)
    proc, log, url = _start_server(root, tmp_path / "server.log")
    try:
        page.goto(f"{url}/?page=train")
        page.get_by_role("heading", name="Train heads").wait_for()
        epochs = page.get_by_role("spinbutton", name="Epochs")
        epochs.fill("3")
        epochs.press("Enter")
        assert page.get_by_role("spinbutton", name="Hold out").input_value() == "1"
        page.get_by_role("button", name="Train heads").click()
        page.get_by_text("Held-out IoU per class").wait_for(timeout=240_000)
        page.get_by_text("training finished").wait_for()
        wait_until(lambda: page.get_by_role("button", name="Train heads").is_enabled(), what="Train button enabled again")
        page.set_viewport_size({"width": 1400, "height": 1900})  # the app scrolls inside: show the whole page
        log_json = json.loads((ws.heads_dir / "train_log.json").read_text())
        assert log_json["holdout"]["ids"] == ["g000005"]
        page.screenshot(path=str(OUT / "app_train_real.png"), full_page=True)

        _cli("synthesize", "-w", str(root), "--n", "8", "--out", str(ws.synthetic_dir), "--soft-labels", "uint8",
             "--encode-workers", "0")
        page.goto(f"{url}/?page=review")
        page.get_by_role("heading", name="Review synthetic samples").wait_for()
        first = page.locator("[data-testid='stImage']").first
        first.wait_for()
        key = page.locator("[data-testid='stImageCaption']").first.inner_text().split(" · ")[0]
        page.locator(f".st-key-unc-{key} label").click()
        page.get_by_text("per-pixel js-divergence").wait_for(timeout=60_000)
        decide(page, key, "Accept")
        wait_until(lambda: (ws.root / "review.json").is_file(), what="review.json")
        page.get_by_text(f"{key} · unc").filter(has_text="ACCEPTED").wait_for()
        page.screenshot(path=str(OUT / "app_review_real.png"), full_page=True)

        _cli("sample", "-w", str(root), "--n", "1")
        page.goto(f"{url}/?page=annotate&id=g000006")
        canvas_frame(page)
        page.get_by_role("button", name="Pre-fill with heads").click()

        def prefilled_mask():  # the canvas iframe is replaced (new document): re-find it until it shows the prediction
            try:
                frame = canvas_frame(page)
                if frame.evaluate("window.labelgenCanvas.doc") != "g000006:1":
                    return None
                return [np.array(frame.evaluate("Array.from(window.labelgenCanvas.mask)"), np.uint8)]
            except Exception:  # noqa: BLE001  (a frame detached mid-call)
                return None

        mask = wait_until(prefilled_mask, 60, "pre-filled canvas")[0]
        assert (mask != 255).all() and set(np.unique(mask).tolist()) <= {0, 1, 2}
        page.mouse.move(5, 5)  # no tooltip in the picture
        page.screenshot(path=str(OUT / "app_annotate_real.png"), full_page=True)
    finally:
        _stop_server(proc, log)


# ------------------------------------------------------------------ assisted annotation
def test_assisted_annotation_superpixels_teacher_wheel_and_undo(tmp_path, page):
    """Superpixel fill (SLIC, then Felzenszwalb without losing the mask or its history), the teacher's prediction
    accepted for a clicked superpixel and a dragged rectangle, brush size on Ctrl + mouse wheel, Ctrl+Z /
    Ctrl+Shift+Z, and no "Deploy" button. On a fake-GAN workspace with heads (teacher_fakes, tests/ on the
    server's PYTHONPATH). Screenshot: test-output/app_assist.png."""
    from labelgen.app.assist import superpixels
    from labelgen.app.heads_bridge import predict_annotation
    from labelgen.heads.train import TrainConfig
    from teacher_fakes import TESTS_DIR, annotated_workspace, train_workspace_heads

    OUT.mkdir(exist_ok=True)
    ws = annotated_workspace(tmp_path / "W", count=3)
    train_workspace_heads(ws, TrainConfig(epochs=2, pixels_per_image=256), progress=False)
    [annotation_id] = ws.sample_annotations(1)
    image = ws.read_annotation(annotation_id)[0]
    h, w = image.shape[:2]
    pythonpath = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    proc, log, url = _start_server(ws.root, tmp_path / "server.log", {"PYTHONPATH": pythonpath})
    try:
        page.goto(f"{url}/?page=annotate&id={annotation_id}")
        state = canvas_frame(page, f"{annotation_id}:0")
        frame = page.frame_locator("iframe[title*='mask_canvas']")
        overlay = frame.locator("#overlay")
        assert page.get_by_role("button", name="Deploy").count() == 0  # a local tool: no Deploy button

        def at(x, y):
            box = overlay.bounding_box()
            z = state.evaluate("window.labelgenCanvas.zoom")
            return box["x"] + (x + 0.5) * z, box["y"] + (y + 0.5) * z

        def js(name: str, dtype=np.uint8) -> np.ndarray | None:
            values = state.evaluate(f"window.labelgenCanvas.{name} && Array.from(window.labelgenCanvas.{name})")
            return None if values is None else np.array(values, dtype).reshape(h, w)

        def mask_when(condition, what: str) -> np.ndarray:
            return wait_until(lambda: (lambda m: [m] if condition(m) else None)(js("mask")), what=what)[0]

        # superpixel fill: the clicked SLIC segment, exactly, takes class 2
        slic = superpixels(image, "SLIC", 8)
        seg = wait_until(lambda: (lambda s: [s] if s is not None else None)(js("seg", np.int32)), what="superpixels")[0]
        np.testing.assert_array_equal(seg, slic)
        frame.locator("#class-2").click()
        frame.locator("#t-superpixel").click()
        page.mouse.click(*at(5, 5))
        m = mask_when(lambda m: m[5, 5] == 2, "the superpixel fill")
        np.testing.assert_array_equal(m, np.where(slic == slic[5, 5], 2, 255))
        app_has_edits(page, state)

        # Felzenszwalb: new segments arrive, the mask and its undo history stay
        page.locator(".st-key-sp_method").click()
        page.get_by_role("option", name="Felzenszwalb").click()
        felz = superpixels(image, "Felzenszwalb", 8)
        wait_until(lambda: np.array_equal(js("seg", np.int32), felz), what="Felzenszwalb segments")
        assert state.evaluate("window.labelgenCanvas.doc") == f"{annotation_id}:0"
        assert state.evaluate("window.labelgenCanvas.undo.length") == 1
        np.testing.assert_array_equal(js("mask"), m)
        frame.locator("#class-1").click()
        x, y = next((x, y) for y in range(h) for x in range(w) if m[y, x] == 255)
        page.mouse.click(*at(x, y))
        m2 = mask_when(lambda m2: m2[y, x] == 1, "the Felzenszwalb fill")
        np.testing.assert_array_equal(m2, np.where(felz == felz[y, x], 1, m))
        app_has_edits(page, state)

        # Ctrl+Z / Ctrl+Shift+Z (the canvas has the keyboard focus after the click)
        page.keyboard.press("Control+z")
        mask_when(lambda u: np.array_equal(u, m), "undo")
        page.keyboard.press("Control+Shift+z")
        mask_when(lambda r: np.array_equal(r, m2), "redo")
        app_has_edits(page, state)

        # brush size on Ctrl + mouse wheel (up: larger, down: smaller)
        frame.locator("#t-brush").click()
        size = state.evaluate("window.labelgenCanvas.size")
        page.mouse.move(*at(w // 2, h // 2))
        page.keyboard.down("Control")
        page.mouse.wheel(0, -100)
        wait_until(lambda: state.evaluate("window.labelgenCanvas.size") == size + 1, what="size + 1")
        page.mouse.wheel(0, -100)
        page.mouse.wheel(0, 100)
        page.mouse.wheel(0, 100)
        page.mouse.wheel(0, 100)
        page.keyboard.up("Control")
        wait_until(lambda: state.evaluate("window.labelgenCanvas.size") == size - 1, what="size - 1")
        assert frame.locator("#size-v").inner_text() == str(size - 1)
        np.testing.assert_array_equal(js("mask"), m2)  # the wheel paints nothing

        # the teacher's prediction: for a clicked superpixel, then for a dragged rectangle
        assert frame.locator("#t-teacher").is_disabled()  # nothing to accept until the prediction is loaded
        page.get_by_text("Teacher regions").click()
        pred = predict_annotation(ws.teacher(), ws, annotation_id).mask
        wait_until(lambda: np.array_equal(js("pred"), pred), what="the teacher's prediction on the canvas")
        np.testing.assert_array_equal(js("mask"), m2)
        frame.locator("#t-teacher").click()
        x, y = next((x, y) for y in range(h) for x in range(w) if m2[y, x] == 255)
        page.mouse.click(*at(x, y))
        region = felz == felz[y, x]
        m3 = mask_when(lambda m3: m3[y, x] != 255, "the teacher's superpixel")
        np.testing.assert_array_equal(m3, np.where(region, pred, m2))
        app_has_edits(page, state)
        page.mouse.move(*at(2, h - 10))
        page.mouse.down()
        page.mouse.move(*at(12, h - 3), steps=6)
        page.mouse.up()
        expected = m3.copy()
        expected[h - 10:h - 2, 2:13] = pred[h - 10:h - 2, 2:13]
        mask_when(lambda m4: np.array_equal(m4, expected), "the teacher's rectangle")
        app_has_edits(page, state)
        page.get_by_role("button", name="Save", exact=True).click()
        app_says(page, f"saved {annotation_id}")
        np.testing.assert_array_equal(read_mask(ws.mask_path(annotation_id)), expected)
        frame.locator("#t-superpixel").click()  # show the segment outlines in the picture
        page.mouse.move(*at(w // 2, h // 2))
        page.screenshot(path=str(OUT / "app_assist.png"), full_page=True)
    finally:
        _stop_server(proc, log)
