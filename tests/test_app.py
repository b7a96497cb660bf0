"""The Streamlit app: page logic (streamlit.testing AppTest) and its path/upload/mask safety."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelgen.app import core, jobs
from labelgen.app.testing import make_workspace
from labelgen.errors import LabelgenError
from labelgen.imaging import fit_photo

APP_FILE = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path / "ws", n_images=3, synthetic=6)


@pytest.fixture
def app(ws, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LABELGEN_WORKSPACE", str(ws.root))
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    return at


def canvas_value(at, mask: np.ndarray) -> tuple[str, dict]:
    """What the browser component would send for ``mask`` on the canvas the page shows now."""
    canvas = at.session_state["canvas"]
    return canvas["key"], {"doc": canvas["doc"], "seq": 1, "width": mask.shape[1], "height": mask.shape[0],
                           "rle": core.rle_encode(mask)}


def status(at) -> str:
    """The annotator's status line under the canvas."""
    return next(c.value for c in at.main.caption if "recipe" in c.value)


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def decide(at, key: str, decision: str) -> None:
    """Choose ``decision`` (accepted / rejected / unreviewed: Accept / Reject / Clear) on sample ``key``'s card."""
    at.segmented_control(key=f"dec-{key}").set_value(decision).run()


# ------------------------------------------------------------------ pure logic
def test_rle_round_trip_and_validation():
    mask = np.full((5, 7), 255, np.uint8)
    mask[1:3, 2:6] = 2
    mask[4, 0] = 0
    rle = core.rle_encode(mask)
    assert sum(rle[1::2]) == 35
    np.testing.assert_array_equal(core.rle_decode(rle, (5, 7), 3), mask)
    with pytest.raises(core.AppError, match="out of range"):
        core.rle_decode([3, 35], (5, 7), 3)  # class 3 of 3 classes
    with pytest.raises(core.AppError, match="pixels"):
        core.rle_decode([0, 34], (5, 7), 3)
    with pytest.raises(core.AppError):
        core.rle_decode([0, -1, 1, 36], (5, 7), 3)
    with pytest.raises(core.AppError):
        core.rle_decode("0,35", (5, 7), 3)
    # a value for another document (image) is ignored, never saved onto the wrong image
    assert core.mask_from_component({"doc": "a:0", "width": 7, "height": 5, "rle": rle}, "b:0", (5, 7), 3) is None


# runs whose counts wrap around in int64 to exactly 64x64 (4 * 2**62 = 2**64): numpy.repeat once wrote
# out of bounds with them and the server process died (issue 33)
OVERFLOWING_RUNS = [0, 2**62, 1, 2**62, 0, 2**62, 1, 2**62, 0, 64 * 64]
HOSTILE_RUNS = [OVERFLOWING_RUNS, [0, 2**64 + 4096], [0, -4096, 0, 8192], [0, 4096.0], [0.5, 4096],
                [0, True, 0, 4095], ["0", "4096"], [None, 4096], [[0], 4096], [2**70, 4096]]


@pytest.mark.parametrize("rle", HOSTILE_RUNS)
def test_rle_decode_refuses_overflowing_negative_and_non_integer_runs(rle):
    with pytest.raises(core.AppError, match="^mask from the browser: "):
        core.rle_decode(rle, (64, 64), 3)


def test_paths_never_leave_the_workspace(ws, tmp_path):
    (ws.root / "inside").mkdir()
    assert core.resolve_inside(ws.root, "inside") == ws.root / "inside"
    assert core.resolve_inside(ws.root, str(ws.root / "inside")) == ws.root / "inside"
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.root / "link").symlink_to(outside)
    for bad in ("../outside", "inside/../../outside", str(outside), "link", "/etc", "~", ""):
        with pytest.raises(core.AppError):
            core.resolve_inside(ws.root, bad)
    # annotation ids from the browser are checked before any path is built
    for bad_id in ("../x", "a/b", "..", "g1.mask", ""):
        with pytest.raises(LabelgenError):
            ws.mask_path(bad_id)
    # the review page resolves set names and shard names the same way
    with pytest.raises(core.AppError):
        core.load_sample(ws.synthetic_dir, core.SampleInfo("k", "../../workspace.json", 0, {}))


def test_folder_import_only_inside_allowed_roots(ws, tmp_path, monkeypatch):
    outside = tmp_path / "photos"
    outside.mkdir()
    Image.new("RGB", (80, 40), (200, 10, 10)).save(outside / "a.png")
    roots = core.allowed_roots(ws)
    with pytest.raises(core.AppError, match="not inside the allowed folders"):
        core.folder_images(ws, roots, str(outside))
    with pytest.raises(core.AppError):
        core.folder_images(ws, roots, "../photos")
    monkeypatch.setenv("LABELGEN_APP_IMPORT_ROOTS", str(outside))
    roots = core.allowed_roots(ws)
    images = core.folder_images(ws, roots, str(outside))
    assert [n for n, _ in images] == ["a.png"] and images[0][1].shape == (40, 80, 3)
    # the dcgan teacher cannot use real images: refused with a reason, nothing written
    with pytest.raises(LabelgenError, match="^importing photos here .* needs features of real images, which the dcgan "
                                            "teacher cannot compute"):
        core.import_real_images(ws, images)
    assert ws.annotation_ids() == ["g000001", "g000002", "g000003"]


def test_uploads_are_size_limited_and_validated():
    buf = io.BytesIO()
    Image.new("RGB", (120, 60), (1, 2, 3)).save(buf, format="PNG")
    image = core.decode_image_bytes(buf.getvalue(), "ok.png")
    assert image.shape == (60, 120, 3)
    with pytest.warns(UserWarning, match="stretched"):  # what an import stores (the photo rule: test_photo_rule.py)
        fitted, _ = fit_photo(image, (64, 64))
    assert fitted.shape == (64, 64, 3) and fitted.dtype == np.uint8
    with pytest.raises(core.AppError, match="limit"):
        core.decode_image_bytes(buf.getvalue(), "big.png", max_bytes=100)
    with pytest.raises(core.AppError, match="not a readable image"):
        core.decode_image_bytes(b"<html>not an image</html>", "evil.png")
    with pytest.raises(core.AppError, match="empty"):
        core.decode_image_bytes(b"", "empty.png")
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 64 Mpx in a few kB
    with pytest.raises(core.AppError, match="too large"):
        core.decode_image_bytes(bomb.getvalue(), "bomb.png")


def test_review_store_is_atomic_json(ws):
    store = core.ReviewStore(ws)
    store.set("synthetic", "s00001", core.ACCEPTED)
    store.set("synthetic", "s00002", core.REJECTED)
    store.set("synthetic", "s00002", None)
    assert json.loads((ws.root / "review.json").read_text())["sets"]["synthetic"] == {"s00001": "accepted"}
    assert not list(ws.root.glob(".review.json.*"))  # no temp files left
    with pytest.raises(core.AppError):
        store.set("synthetic", "s00001", "maybe")
    (ws.root / "review.json").write_text("{broken")
    assert core.ReviewStore(ws).decisions("synthetic") == {}


def test_synthetic_listing_fix_and_uncertainty(ws):
    assert core.synthetic_sets(ws) == ["synthetic"]
    samples = core.list_samples(ws.synthetic_dir)
    assert [s.key for s in samples] == [f"s{k:05d}" for k in range(6)]
    assert samples[5].uncertainty == pytest.approx(5 / 6)
    sample = core.load_sample(ws.synthetic_dir, samples[4])
    new_id = core.fix_sample(ws, sample)
    image, recipe, mask = ws.read_annotation(new_id)
    np.testing.assert_array_equal(image, sample.image)
    np.testing.assert_array_equal(mask, sample.mask)
    assert recipe["seed"] == 5004 and recipe["from_synthetic"] == "s00004"


def test_training_job_runs_in_background_with_progress(ws, tmp_path):
    from labelgen.run import RunLog

    folder = tmp_path / "runlog"
    old = RunLog(folder, ["loss"], total=3, tensorboard=False)  # a finished earlier run: not this job's progress
    old.row(3, {"loss": 0.1})
    old.close()
    os.utime(folder / "log.csv", (time.time() - 60, time.time() - 60))
    # the job: prints to stdout (only the log tail) and writes its progress as run-log rows
    script = ("import sys, time\nfrom labelgen.run import RunLog\ntime.sleep(0.5)\n"
              f"log = RunLog({str(folder)!r}, ['loss'], total=4, tensorboard=False)\n"
              "for i in range(1, 4):\n    print(f'epoch {i}', flush=True); log.row(i, {'loss': 1 / i}); time.sleep(0.2)\n")
    record = jobs.start(ws, "train", [sys.executable, "-c", script], progress_log=folder / "log.csv")
    assert record["pid"] > 0
    assert jobs.status(ws, "train")["progress"] is None  # only the old run's log so far
    with pytest.raises(LabelgenError, match="already running"):
        jobs.start(ws, "train", [sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while (status := jobs.status(ws, "train"))["running"] and time.time() < deadline:
        time.sleep(0.1)
    assert not status["running"] and status["returncode"] == 0
    assert status["progress"] == pytest.approx(3 / 4)  # the last row: step 3 of 4
    assert "epoch 3" in status["log_tail"]


def _wait_finished(ws, name: str = "train", timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while (record := jobs.status(ws, name))["running"] and time.time() < deadline:
        time.sleep(0.1)
    return record


def _proc_start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (read here, independently of labelgen.app.jobs)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_stop_signals_only_the_job_it_started(ws):
    """A job file naming another process - even with that process's real pid, start time, command line
    and process group copied from /proc - is refused by Stop: nothing is signalled, the process lives."""
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        forged = {"pid": sleeper.pid, "start_ticks": _proc_start_ticks(sleeper.pid), "cmd": ["sleep", "60"],
                  "token": "0" * 32, "log": "train.log", "started": time.time(), "finished": None, "returncode": None}
        naive = {"pid": sleeper.pid, "cmd": ["sleep", "60"], "log": "train.log", "finished": None}
        for record in (forged, naive, dict(forged, pid=0), dict(forged, pid=-1), dict(forged, pid=str(sleeper.pid))):
            jobs.job_dir(ws).mkdir(exist_ok=True)
            (jobs.job_dir(ws) / "train.json").write_text(json.dumps(record))
            with pytest.raises(LabelgenError, match=f"pid {record['pid']} is not .*nothing signalled"):
                jobs.stop(ws, "train")
            assert not jobs.status(ws, "train")["running"]  # and it does not block a new run
            time.sleep(0.3)
            assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    # the job it did start: verified (also from a fresh server: no Popen in memory) and stopped
    jobs.start(ws, "train", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"])
    jobs._PROCS.clear()
    assert jobs.status(ws, "train")["running"]
    jobs.stop(ws, "train")
    assert not _wait_finished(ws, timeout=30)["running"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is 3.11+")
def test_app_server_keeps_its_working_directory_off_sys_path(tmp_path):
    """`labelgen app` run inside a folder (e.g. the workspace) that holds a module: the server's python
    (the flags of streamlit_command) cannot import it."""
    from labelgen.app.cli import streamlit_command

    (tmp_path / "evilplug.py").write_text("raise SystemExit('imported from the working directory')\n")
    cmd = streamlit_command(tmp_path, "127.0.0.1", 8501)
    python = cmd[:cmd.index("-m")]
    probe = subprocess.run([*python, "-c", "import importlib.util as u; print(u.find_spec('evilplug'))"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe.stdout + probe.stderr


def test_app_server_pins_its_security_settings_on_the_command_line(tmp_path):
    from labelgen.app.cli import streamlit_command

    cmd = streamlit_command(tmp_path, "10.1.2.3", 8501)
    flags = dict(zip(cmd[cmd.index("run") + 2:cmd.index("--")][::2], cmd[cmd.index("run") + 3:cmd.index("--")][::2]))
    assert {k: flags.get(k) for k in ("--server.enableXsrfProtection", "--server.enableCORS",
                                      "--global.developmentMode", "--server.address")} == {
        "--server.enableXsrfProtection": "true", "--server.enableCORS": "true", "--global.developmentMode": "false",
        "--server.address": "10.1.2.3"}


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
def test_app_ignores_a_hostile_streamlit_config_in_the_folder_it_is_started_in(ws, tmp_path):
    """`labelgen app` started in a folder whose .streamlit/config.toml turns XSRF and CORS protection off,
    allows another origin, asks for development mode (every origin allowed) and binds every address: the
    server still sets its XSRF cookie, answers that origin without Access-Control-Allow-Origin, and listens
    on 127.0.0.1 only."""
    import socket
    import urllib.request

    folder = tmp_path / "downloads"
    (folder / ".streamlit").mkdir(parents=True)
    (folder / ".streamlit" / "config.toml").write_text(
        '[global]\ndevelopmentMode = true\n[server]\nenableXsrfProtection = false\nenableCORS = false\n'
        'corsAllowedOrigins = ["http://evil.example"]\naddress = "0.0.0.0"\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "labelgen.cli", "app", "-w", str(ws.root), "--port", str(port)],
                              cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/_stcore/health",
                                         headers={"Origin": "http://evil.example"})
        deadline, response = time.time() + 120, None
        while response is None and time.time() < deadline and server.poll() is None:
            try:
                response = urllib.request.urlopen(request, timeout=5)
            except OSError:
                time.sleep(0.5)
        assert response is not None and response.status == 200, server.poll()
        assert response.headers.get("Access-Control-Allow-Origin") is None
        assert "_streamlit_xsrf=" in (response.headers.get("Set-Cookie") or "")
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert "labelgen app on http://127.0.0.1" in output, output


def test_train_job_never_imports_from_the_workspace(tmp_path, monkeypatch):
    """The Train job on a workspace naming "evilplug:Gen" with evilplug.py beside it: refused in one line
    without the opt-in; with LABELGEN_PLUGINS=evilplug still not importable (the job's cwd is not the
    workspace and python runs with -P). The module's code never runs."""
    from teacher_fakes import evil_workspace

    marker = tmp_path / "marker"
    ws = evil_workspace(tmp_path / "w", marker)
    _fake_teacher_env(monkeypatch, ws)
    for plugins, message in (("teacher_fakes", "error: generator plug-in 'evilplug:Gen' is not enabled"),
                             ("evilplug", "error: generator 'evilplug:Gen' not importable (No module named")):
        monkeypatch.setenv("LABELGEN_PLUGINS", plugins)
        jobs.start(ws, "train", jobs.train_command(ws, epochs=1))
        record = _wait_finished(ws)
        lines = record["log_tail"].strip().splitlines()
        assert record["returncode"] == 2 and len(lines) == 1 and lines[0].startswith(message), record["log_tail"]
        assert not marker.exists()


# ------------------------------------------------------------------ pages (AppTest)
def test_no_workspace_gives_a_clear_message(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("LABELGEN_WORKSPACE", raising=False)
    at = AppTest.from_file(APP_FILE, default_timeout=60).run()
    assert not at.exception
    assert "no workspace given" in at.error[0].value


def test_annotate_page_sidebar_and_explicit_save(app, ws):
    at = app.run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Annotate"
    assert at.sidebar.radio[0].value == "annotate"
    assert at.sidebar.metric[0].value == "0 / 3"
    assert at.session_state["ann_id"] == "g000001"
    mask = np.full((64, 64), 255, np.uint8)
    mask[10:20, 5:30] = 2
    mask[40:, :] = 0
    key, value = canvas_value(at, mask)
    at.session_state[key] = value
    at.run()
    assert "unsaved changes" in status(at)
    assert not ws.mask_path("g000001").exists()
    button(at, "Save").click().run()
    np.testing.assert_array_equal(ws.read_mask("g000001"), mask)
    assert at.sidebar.metric[0].value == "0 / 3"  # saved, not confirmed: not done
    assert "saved mask" in status(at)
    assert any("saved g000001" in s.value for s in at.success)
    # a class id outside the palette from the browser is refused, the file keeps the good mask
    bad = mask.copy()
    bad[0, 0] = 7
    key, value = canvas_value(at, bad)
    at.session_state[key] = value
    at.run()
    button(at, "Save").click().run()
    np.testing.assert_array_equal(ws.read_mask("g000001"), mask)


def test_hostile_canvas_values_show_an_error_and_never_reach_the_mask(app, ws):
    """Each hostile value through the component's message path (its widget value in the session): the page
    shows one error line, Save refuses, the server keeps running and no mask file is written."""
    at = app.run()
    for rle in HOSTILE_RUNS:
        key, value = canvas_value(at, np.zeros((64, 64), np.uint8))
        at.session_state[key] = {**value, "rle": rle}
        at.run()
        assert not at.exception, (rle, at.exception)
        assert any(e.value.startswith("mask from the browser: ") for e in at.main.error), rle
        button(at, "Save").click().run()
        assert not at.exception, (rle, at.exception)
        assert any(e.value.startswith("not saved: mask from the browser: ") for e in at.error), rle
        assert not ws.mask_path("g000001").exists()


def test_images_done_counts_only_masks_the_annotator_confirmed(app, ws):
    """A saved mask (partly labelled or not) is not "done"; Mark done is, until the mask changes again; a teacher
    sample copied by "Fix -> annotate" stays unconfirmed. Per-image labelled % in the status line."""
    at = app.run()
    assert at.sidebar.metric[0].label == "Images done" and at.sidebar.metric[0].value == "0 / 3"
    mask = np.full((64, 64), 255, np.uint8)
    mask[:8, :30] = 1  # 240 of 4096 pixels: 5.9 %
    key, value = canvas_value(at, mask)
    at.session_state[key] = value
    at.run()
    button(at, "Save").click().run()
    assert at.sidebar.metric[0].value == "0 / 3"
    assert "5.9% labelled · not marked done" in status(at)
    assert core.image_progress(ws, "g000001").status == core.PARTLY
    button(at, "Mark done").click().run()  # confirms the partly labelled mask as the annotator's final word
    assert not at.exception, at.exception
    assert at.sidebar.metric[0].value == "1 / 3"
    assert "5.9% labelled · ✓ done" in status(at)
    record = json.loads(core.status_path(ws, "g000001").read_text())
    assert record["status"] == "done" and ws.annotation_ids() == ["g000001", "g000002", "g000003"]
    assert any("2.0% of all pixels labelled" in c.value for c in at.sidebar.caption)  # 240 of 3 x 4096
    # an edit after confirming: saved, but no longer done until confirmed again
    mask[60:, :] = 0
    key, value = canvas_value(at, mask)
    at.session_state[key] = value
    at.run()
    button(at, "Save").click().run()
    assert at.sidebar.metric[0].value == "0 / 3" and "edited since marked done" in status(at)
    # Mark done saves pending strokes first, then confirms what it saved
    mask[30:40, :] = 2
    key, value = canvas_value(at, mask)
    at.session_state[key] = value
    at.run()
    button(at, "Mark done").click().run()
    np.testing.assert_array_equal(ws.read_mask("g000001"), mask)
    assert at.sidebar.metric[0].value == "1 / 3"
    button(at, "Reopen").click().run()
    assert at.sidebar.metric[0].value == "0 / 3" and not core.status_path(ws, "g000001").exists()
    # nothing labelled: refused with a message, nothing recorded
    at.button(key="pick-g000002").click().run()
    button(at, "Mark done").click().run()
    assert any("nothing labelled yet" in e.value for e in at.error)
    assert not core.status_path(ws, "g000002").exists()
    # a teacher sample copied for fixing is not done, whatever its mask covers
    at.sidebar.radio[0].set_value("review").run()
    at.button(key="fix-s00003").click().run()
    copied = at.session_state["ann_id"]
    assert (ws.read_mask(copied) != 255).all() and core.image_progress(ws, copied).status == core.PARTLY
    assert at.sidebar.metric[0].value == "0 / 4"
    # a mask replaced outside the app after confirming is not done either
    button(at, "Mark done").click().run()
    assert at.sidebar.metric[0].value == "1 / 4"
    ws.save_mask(copied, np.zeros((64, 64), np.uint8))
    at.run()
    assert at.sidebar.metric[0].value == "0 / 4"


def test_image_list_shows_each_state_and_filters_by_it(app, ws, monkeypatch):
    from labelgen.app.views import annotate

    monkeypatch.setattr(annotate, "LIST_PAGE", 2)  # 3 images: two pages of the list
    partly = np.full((64, 64), 255, np.uint8)
    partly[:16] = 1  # 25 %
    ws.save_mask("g000002", partly)
    ws.save_mask("g000003", np.zeros((64, 64), np.uint8))
    core.mark_done(ws, "g000003")
    at = app.run()
    assert not at.exception, at.exception
    assert at.session_state["ann_id"] == "g000001"  # the first unlabelled image
    rows = {b.key: b.label for b in at.button if b.key and b.key.startswith("pick-")}
    assert rows == {"pick-g000001": "○ g000001 · 0%", "pick-g000002": "◐ g000002 · 25%"}  # page 1
    assert len(at.get("image")) == 2  # a thumbnail per row
    assert any(c.value == "○ 1 unlabelled · ◐ 1 partly · ✓ 1 done" for c in at.main.caption)
    at.number_input(key="list_page").set_value(2).run()
    rows = {b.key: b.label for b in at.button if b.key and b.key.startswith("pick-")}
    assert rows == {"pick-g000003": "✓ g000003 · 100%"}
    at.button(key="pick-g000003").click().run()
    assert at.session_state["canvas"]["ann_id"] == "g000003" and "✓ done" in status(at)
    # the filter: only the images in that state, and Previous / Next step through them
    for show, expected in (("unlabelled", ["g000001"]), ("partly", ["g000002"]), ("done", ["g000003"])):
        at.selectbox(key="list_filter").set_value(show).run()
        assert [b.key[5:] for b in at.button if b.key and b.key.startswith("pick-")] == expected, show
    at.selectbox(key="list_filter").set_value("unlabelled").run()
    button(at, "Next ▶").click().run()  # from g000003 (not in the filter): its first image
    assert at.session_state["ann_id"] == "g000001"
    mask = np.full((64, 64), 255, np.uint8)
    mask[0, 0] = 2
    key, value = canvas_value(at, mask)
    at.session_state[key] = value
    at.run()
    button(at, "Next ▶").click().run()  # autosaves: g000001 is partly labelled now, gone from this filter
    np.testing.assert_array_equal(ws.read_mask("g000001"), mask)
    assert not [b for b in at.button if b.key and b.key.startswith("pick-")]
    assert any(c.value == "no unlabelled images" for c in at.main.caption)
    at.selectbox(key="list_filter").set_value("partly").run()
    assert [b.key[5:] for b in at.button if b.key and b.key.startswith("pick-")] == ["g000001", "g000002"]
    assert next(b.label for b in at.button if b.key == "pick-g000001") == "◐ g000001 · 0%"  # 1 of 4096 px: partly
    button(at, "Next ▶").click().run()
    assert at.session_state["ann_id"] == "g000002"
    button(at, "Next ▶").click().run()
    assert at.session_state["ann_id"] == "g000001"


def test_sidebar_shows_an_html_class_name_as_text(tmp_path, monkeypatch):
    """A workspace from someone else whose class name is HTML: the sidebar's class table (raw HTML for its
    colour swatches) shows the name escaped, never as markup."""
    from streamlit.testing.v1 import AppTest

    from labelgen.workspace import CONFIG_NAME

    ws = make_workspace(tmp_path / "ws", n_images=1)
    config = json.loads((ws.root / CONFIG_NAME).read_text())
    config["classes"][1]["name"] = "<img src=x onerror=alert(1)>"
    (ws.root / CONFIG_NAME).write_text(json.dumps(config))
    monkeypatch.setenv("LABELGEN_WORKSPACE", str(ws.root))
    at = AppTest.from_file(APP_FILE, default_timeout=60).run()
    assert not at.exception, at.exception
    table = next(m.value for m in at.sidebar.markdown if "<table" in m.value)
    assert "&lt;img src=x onerror=alert(1)&gt;" in table and "<img" not in table


def test_navigation_autosaves_and_reopening_shows_the_mask(app, ws):
    at = app.run()
    mask = np.full((64, 64), 1, np.uint8)
    key, value = canvas_value(at, mask)
    at.session_state[key] = value
    at.run()
    button(at, "Next ▶").click().run()  # navigation saves without pressing Save
    assert at.session_state["ann_id"] == "g000002"
    np.testing.assert_array_equal(ws.read_mask("g000001"), mask)
    # switching page autosaves too
    mask2 = np.zeros((64, 64), np.uint8)
    key, value = canvas_value(at, mask2)
    at.session_state[key] = value
    at.run()
    at.sidebar.radio[0].set_value("review").run()
    np.testing.assert_array_equal(ws.read_mask("g000002"), mask2)
    # back on the first image: the canvas is given the saved mask
    at.sidebar.radio[0].set_value("annotate").run()
    at.button(key="pick-g000001").click().run()
    assert at.session_state["canvas"]["ann_id"] == "g000001"
    assert "saved mask" in status(at)


def test_generate_more_samples_from_the_generator(app, ws):
    at = app.run()
    at.number_input(key="n_generate").set_value(2).run()
    button(at, "Generate more").click().run(timeout=120)
    assert not at.exception, at.exception
    assert ws.annotation_ids() == ["g000001", "g000002", "g000003", "g000004", "g000005"]
    recipes = [json.loads(ws.recipe_path(i).read_text()) for i in ("g000004", "g000005")]
    assert [r["seed"] for r in recipes] == [1003, 1004]  # continues after the used seeds
    assert at.session_state["ann_id"] == "g000004"


def test_review_accept_reject_persist_and_fix_opens_annotator(app, ws):
    at = app.run()
    at.sidebar.radio[0].set_value("review").run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Review synthetic samples"
    assert len(at.get("image")) == 6
    # most uncertain first
    captions = [c for el in at.get("image") for c in el.captions]
    assert captions[0].startswith("s00005") and captions[-1].startswith("s00000")
    decide(at, "s00005", "accepted")
    decide(at, "s00001", "rejected")
    decisions = json.loads((ws.root / "review.json").read_text())["sets"]["synthetic"]
    assert decisions == {"s00005": "accepted", "s00001": "rejected"}
    at.selectbox(key="review_filter").set_value("accepted").run()
    assert len(at.get("image")) == 1
    at.selectbox(key="review_filter").set_value("all").run()
    # the suggestions skip reviewed samples: s00004 is the most uncertain unreviewed one
    assert at.button(key="sug-s00004") is not None
    at.button(key="fix-s00003").click().run()
    assert at.sidebar.radio[0].value == "annotate"
    new_id = at.session_state["ann_id"]
    assert new_id == "g000004" and ws.read_mask(new_id) is not None
    assert json.loads(ws.recipe_path(new_id).read_text())["from_synthetic"] == "s00003"


def test_review_states_are_explicit_idempotent_and_written_at_once(app, ws):
    """Accept / Reject / Clear each set one state: a second Accept stays accepted (it used to toggle back to
    unreviewed), and every choice is on disk before the page shows it."""
    from streamlit.testing.v1 import AppTest

    at = app.run()
    at.sidebar.radio[0].set_value("review").run()

    def on_disk():
        data = json.loads((ws.root / "review.json").read_text())
        return data["sets"]["synthetic"], data["updated"]

    def badge(key):
        return next(c for el in at.get("image") for c in el.captions if c.startswith(key)).rsplit(" · ", 1)[1]

    control = at.segmented_control(key="dec-s00005")
    assert control.value is None and control.options == ["Accept", "Reject", "Clear"]
    decide(at, "s00005", "accepted")
    decisions, first = on_disk()
    assert decisions == {"s00005": "accepted"} and badge("s00005") == "ACCEPTED"
    decide(at, "s00005", "accepted")  # again: still accepted (it used to toggle back)
    assert on_disk() == (decisions, first) and badge("s00005") == "ACCEPTED"
    assert at.segmented_control(key="dec-s00005").value == "accepted"
    decide(at, "s00005", "rejected")
    decide(at, "s00005", "rejected")
    assert on_disk()[0] == {"s00005": "rejected"} and badge("s00005") == "REJECTED"
    decide(at, "s00005", "unreviewed")  # Clear: unreviewed, nothing selected
    assert on_disk()[0] == {} and badge("s00005") == "unreviewed"
    assert at.segmented_control(key="dec-s00005").value is None
    decide(at, "s00005", "unreviewed")
    assert on_disk()[0] == {} and badge("s00005") == "unreviewed"
    # the control follows review.json (another session's decisions, a fresh session)
    core.ReviewStore(ws).set("synthetic", "s00004", core.REJECTED)
    at.run()
    assert at.segmented_control(key="dec-s00004").value == "rejected" and badge("s00004") == "REJECTED"
    decide(at, "s00002", "accepted")
    again = AppTest.from_file(APP_FILE, default_timeout=60).run()
    again.sidebar.radio[0].set_value("review").run()
    assert any(c == "s00002 · unc 0.333 · ACCEPTED" for el in again.get("image") for c in el.captions)


def test_train_page_without_holdout_says_so(app, ws):
    ws.heads_dir.mkdir(exist_ok=True)
    (ws.heads_dir / "train_log.json").write_text(json.dumps(
        {"head": "pixel-mlp", "ensemble": 3, "train_ids": ["g000001"], "losses": [0.5], "holdout": None}))
    at = app.run()
    at.sidebar.radio[0].set_value("train").run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Train heads"
    assert at.number_input(key="holdout").value == 0  # < 5 annotated images: nothing held out by default
    assert not at.dataframe
    assert any("No held-out IoU" in c.value for c in at.main.caption)


# ------------------------------------------------------------------ the real teacher behind the pages
def _fake_teacher_env(monkeypatch, ws) -> None:
    """The app (and the `labelgen train-heads` it starts) on a tests/teacher_fakes workspace, 1 thread."""
    from teacher_fakes import subprocess_env

    for name in ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, subprocess_env()[name])
    monkeypatch.setenv("LABELGEN_WORKSPACE", str(ws.root))


def test_train_page_runs_the_real_train_heads_and_shows_held_out_iou(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from teacher_fakes import annotated_workspace

    ws = annotated_workspace(tmp_path / "w", count=5)
    _fake_teacher_env(monkeypatch, ws)
    at = AppTest.from_file(APP_FILE, default_timeout=60).run()
    at.sidebar.radio[0].set_value("train").run()
    assert not at.exception, at.exception
    assert at.number_input(key="holdout").value == 1  # 20 % of 5 annotated images
    at.number_input(key="epochs").set_value(4).run()
    button(at, "Train heads").click().run()
    record = jobs.status(ws, "train")
    assert record["cmd"][-8:-6] == ["labelgen.cli", "train-heads"] and record["cmd"][-2:] == ["--holdout", "1"]
    deadline = time.time() + 300
    while (record := jobs.status(ws, "train"))["running"] and time.time() < deadline:
        time.sleep(0.5)
    assert record["returncode"] == 0, record["log_tail"]
    at.run()
    assert not at.exception, at.exception
    assert any("training finished" in s.value for s in at.success)
    log = json.loads((ws.heads_dir / "train_log.json").read_text())
    assert log["holdout"]["ids"] == ["g000005"] and "g000005" not in log["train_ids"]
    table = at.dataframe[0].value
    assert list(table["class"]) == ["background", "disc", "bar"]
    assert table["IoU"].tolist() == [round(log["holdout"]["per_class"][c], 3) for c in ("background", "disc", "bar")]
    assert at.metric[0].value == f"{log['holdout']['miou']:.3f}" and log["holdout"]["miou"] > 0.5
    assert any("g000005" in c.value for c in at.main.caption)
    assert "held-out mIoU" in record["log_tail"]


@pytest.fixture
def synthesized(tmp_path):
    """A fake-GAN workspace with trained heads and the real `labelgen synthesize` output in W/synthetic."""
    import torch

    from labelgen.heads.train import TrainConfig
    from labelgen.synthesis import SynthesisConfig, synthesize
    from teacher_fakes import annotated_workspace, train_workspace_heads

    torch.set_num_threads(1)
    ws = annotated_workspace(tmp_path / "w", count=3)
    train_workspace_heads(ws, TrainConfig(epochs=4, pixels_per_image=256), progress=False)
    synthesize(ws.teacher(), SynthesisConfig(n=6, shard_size=3, batch_size=3, soft_labels="uint8", encode_workers=0),
               ws.synthetic_dir, progress=False)
    return ws


def test_review_on_real_synthesis_output(synthesized, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from labelgen.app import heads_bridge
    from labelgen.imaging import tensor_to_uint8
    from labelgen.teacher import recipe_of

    ws = synthesized
    _fake_teacher_env(monkeypatch, ws)
    infos = core.list_samples(ws.synthetic_dir)
    assert len(infos) == 6 and all(isinstance(i.meta["uncertainty"], float) for i in infos)
    by_score = sorted(infos, key=lambda i: i.uncertainty, reverse=True)
    at = AppTest.from_file(APP_FILE, default_timeout=60).run()
    at.sidebar.radio[0].set_value("review").run()
    assert not at.exception, at.exception
    captions = [c for el in at.get("image") for c in el.captions]
    assert [c.split(" · ")[0] for c in captions] == [i.key for i in by_score]  # the real meta, most uncertain first
    assert captions[0] == f"{by_score[0].key} · unc {by_score[0].uncertainty:.3f} · unreviewed"

    # the uncertainty map is the teacher's prediction (labelgen.teacher) of the sample's recipe
    top = by_score[0]
    at.toggle(key=f"unc-{top.key}").set_value(True).run()
    assert not at.exception, at.exception
    text = next(c for el in at.get("image") for c in el.captions if c.startswith("per-pixel"))
    assert "js-divergence" in text and "the heads that labelled it" in text
    assert f"score {top.uncertainty:.3f}" in text  # recomputed score = the score synthesis stored
    sample = core.load_sample(ws.synthetic_dir, top)
    pred = heads_bridge.predict_sample(ws.teacher(), sample)
    assert pred.score == pytest.approx(top.uncertainty, abs=1e-5)
    np.testing.assert_array_equal(pred.mask, sample.mask)

    # accept / reject persist across a fresh session
    decide(at, by_score[1].key, "accepted")
    decide(at, by_score[2].key, "rejected")
    assert json.loads((ws.root / "review.json").read_text())["sets"]["synthetic"] == {
        by_score[1].key: "accepted", by_score[2].key: "rejected"}
    again = AppTest.from_file(APP_FILE, default_timeout=60).run()
    again.sidebar.radio[0].set_value("review").run()
    captions = [c for el in again.get("image") for c in el.captions]
    assert f"{by_score[1].key} · unc {by_score[1].uncertainty:.3f} · ACCEPTED" in captions
    assert f"{by_score[2].key} · unc {by_score[2].uncertainty:.3f} · REJECTED" in captions

    # fix: a new annotation whose recipe recomputes the same image (and the same features)
    at.button(key=f"fix-{top.key}").click().run()
    assert not at.exception, at.exception
    assert at.sidebar.radio[0].value == "annotate"
    new_id = at.session_state["ann_id"]
    assert new_id == "g000004"
    image, recipe, mask = ws.read_annotation(new_id)
    assert recipe["seed"] == sample.meta["seed"] and recipe["from_synthetic"] == top.key
    np.testing.assert_array_equal(tensor_to_uint8(ws.generator().features_from_recipes([recipe_of(recipe)]).images)[0],
                                  image)
    np.testing.assert_array_equal(image, sample.image)
    np.testing.assert_array_equal(mask, sample.mask)
    assert heads_bridge.predict_annotation(ws.teacher(), ws, new_id).score == pytest.approx(top.uncertainty, abs=1e-5)


def test_prefill_uses_the_heads_prediction(synthesized, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from labelgen.app.heads_bridge import predict_annotation

    ws = synthesized
    _fake_teacher_env(monkeypatch, ws)
    new_id = ws.sample_annotations(1)[0]
    at = AppTest.from_file(APP_FILE, default_timeout=60).run()
    at.button(key=f"pick-{new_id}").click().run()
    button(at, "Pre-fill with heads").click().run()
    assert not at.exception, at.exception
    prefill_id, mask = at.session_state["prefill"]
    assert prefill_id == new_id
    np.testing.assert_array_equal(mask, predict_annotation(ws.teacher(), ws, new_id).mask)
    # the canvas is handed the prediction (and reports it back, so Save writes it)
    canvas = at.session_state["canvas"]
    at.session_state[canvas["key"]] = {"doc": canvas["doc"], "seq": 0, "width": 32, "height": 32,
                                       "rle": core.rle_encode(mask)}
    at.run()
    button(at, "Save").click().run()
    np.testing.assert_array_equal(ws.read_mask(new_id), mask)


def test_app_without_workspace_serves_a_writable_copy_of_the_default_workspace(tmp_path, monkeypatch):
    """`labelgen app` without -w: a copy of labelgen/default_teacher/workspace, made once, then reused."""
    from labelgen.app import cli as app_cli
    from labelgen.default_teacher import DEFAULT_WORKSPACE_DIR
    from labelgen.workspace import Workspace

    monkeypatch.setenv("LABELGEN_APP_HOME", str(tmp_path))
    served = []
    monkeypatch.setattr(app_cli.os, "execv", lambda path, cmd: served.append(cmd))  # not become Streamlit
    app_cli.app_cmd.main(args=[], standalone_mode=False)
    copy = tmp_path / "default-workspace"
    assert served[0][served[0].index("--workspace") + 1] == str(copy.resolve())
    ws, packaged = Workspace(copy), Workspace(DEFAULT_WORKSPACE_DIR)
    assert ws.annotated_ids() == packaged.annotated_ids() and ws.annotated_ids()
    assert Path(ws.config.checkpoint).is_absolute() and Path(ws.config.checkpoint).exists()
    marker = ws.annotations_dir / "edited-in-the-copy.txt"  # writable, and not the package's folder
    marker.write_text("x")
    assert not (packaged.annotations_dir / marker.name).exists()
    app_cli.app_cmd.main(args=[], standalone_mode=False)  # the second start reuses the copy (edits kept)
    assert marker.is_file() and served[1] == served[0]
