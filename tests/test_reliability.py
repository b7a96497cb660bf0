"""Nothing lost, nothing duplicated (issue 11): `labelgen import` all or nothing and idempotent (content
hash), `synthesize --from-images` resumed over a changed folder refused; the error boundary's --debug.
(Every bad input through the real CLIs: tests/test_bad_inputs.py.)"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelgen.cli import main
from labelgen.data.shards import ShardReader, ShardWriter
from labelgen.errors import DataError, LabelgenError
from labelgen.heads.train import TrainConfig
from labelgen.synthesis import SynthesisConfig, synthesize
from labelgen.workspace import Workspace, create_workspace
from teacher_fakes import CLASSES, REPO, annotated_workspace, render, subprocess_env, train_workspace_heads

torch.set_num_threads(1)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Files under ``root`` (the run lock's pid file aside) -> (size, mtime)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.name != ".lock"}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(seed, size)).save(path)
    return path


# ------------------------------------------------------------------ item 4: labelgen import
def test_import_is_all_or_nothing_and_skips_images_already_imported(tmp_path, monkeypatch, capsys):
    ws = create_workspace(tmp_path / "w", "teacher_fakes:FakeDiffusion", CLASSES.split(","))
    images = tmp_path / "real"
    for i, name in enumerate("abcd"):
        _image(images / f"{name}.png", 40 + i, 64)
    good_b = (images / "b.png").read_bytes()
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"b\.png: unreadable or corrupt image"):
        ws.import_images(images)
    assert ws.annotation_ids() == [] and not any(ws.annotations_dir.iterdir())  # a is not imported either

    (images / "b.png").write_bytes(good_b)
    ids, resized, skipped = ws.import_images(images)
    assert ids == ["r000001", "r000002", "r000003", "r000004"] and resized == 4 and skipped == 0
    recipes = [json.loads(ws.recipe_path(i).read_text()) for i in ids]
    assert [r["file"] for r in recipes] == ["a.png", "b.png", "c.png", "d.png"]
    assert [r["sha256"] for r in recipes] == [file_sha256(images / f"{n}.png") for n in "abcd"]

    # the same folder again: every image recognised by its content, nothing duplicated
    capsys.readouterr()
    main(["import", "-w", str(ws.root), "--images", str(images)])
    assert "imported 0 images (0 with masks); skipped 4 already in the workspace" in capsys.readouterr().out
    assert Workspace(ws.root).annotation_ids() == ids
    # a new image and a renamed copy of an imported one: only the new one is added
    _image(images / "e.png", 50, 64)
    shutil.copy(images / "a.png", images / "f.png")
    assert ws.import_images(images) == (["r000005"], 1, 5)

    # the disk fills up at the second new image: what this call wrote goes again
    _image(images / "g.png", 60, 64)
    _image(images / "h.png", 61, 64)
    before = _tree(ws.annotations_dir)
    real_replace, calls = os.replace, []

    def replace(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 3:  # g.png, g.json, then h.png fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DataError, match=r"r000007\.png: cannot write \(No space left on device\)"):
        ws.import_images(images)
    monkeypatch.undo()
    assert _tree(ws.annotations_dir) == before
    assert ws.import_images(images) == (["r000006", "r000007"], 2, 6)


# ------------------------------------------------------------------ item 5: synthesize --from-images resumed
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = annotated_workspace(tmp_path_factory.mktemp("reliability") / "w", backend="FakeDiffusion", count=2)
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=128), progress=False, log=lambda *a: None)
    return ws


class _Killed(BaseException):
    """Stands in for a kill after the first shard."""


def _sources(out: Path) -> list[str]:
    return [s.meta["source_image"] for s in ShardReader(out)]


def test_from_images_resume_over_a_changed_folder_is_refused(trained, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    for i in range(6):
        _image(folder / f"img{i}.png", 900 + i, 48)
    config = SynthesisConfig(n=None, shard_size=2, batch_size=2, from_images=str(folder), encode_workers=0)
    reference = synthesize(trained.teacher(), config, tmp_path / "reference", progress=False)
    assert reference.kept == 6 and sorted(_sources(tmp_path / "reference")) == [f"img{i}.png" for i in range(6)]

    out = tmp_path / "out"
    real_write = ShardWriter.write_shard

    def killed_after_first(self, shard_id, *a, **k):
        if shard_id > 0:
            raise _Killed
        return real_write(self, shard_id, *a, **k)

    monkeypatch.setattr(ShardWriter, "write_shard", killed_after_first)
    with pytest.raises(_Killed):
        synthesize(trained.teacher(), config, out, progress=False)
    monkeypatch.undo()
    plan = json.loads((out / "synthesis.json").read_text())
    assert plan["images"] == [[f"img{i}.png", file_sha256(folder / f"img{i}.png")] for i in range(6)]

    # the folder changes before the resume: img1 repaired (new content), img00 added (sorts first: every
    # later candidate index would shift to another file)
    kept = {p: p.read_bytes() for p in folder.iterdir()}
    _image(folder / "img1.png", 777, 48)
    _image(folder / "img00.png", 778, 48)
    before = _tree(out)
    with pytest.raises(LabelgenError, match=r"changed since this synthesis started \(changed: img1\.png; "
                                            r"added: img00\.png\); use a new --out"):
        synthesize(trained.teacher(), config, out, progress=False)
    assert _tree(out) == before

    # as one CLI line
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["synthesize", "-w", str(trained.root), "--from-images", str(folder), "--out", str(out),
              "--shard-size", "2", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1 and "removed" not in err and "img00.png" in err
    # ... and `data info` still counts the planned shards when the folder is gone
    shutil.move(folder, tmp_path / "moved")
    main_info = subprocess.run([sys.executable, "-m", "labelgen.cli", "data", "info", str(out)], capture_output=True,
                               text=True, env=subprocess_env(), cwd=REPO, timeout=120)
    assert "1 of 3 shards" in main_info.stdout, main_info.stdout + main_info.stderr
    shutil.move(tmp_path / "moved", folder)

    # the files restored: the resume labels each image exactly once, as one uninterrupted run does
    (folder / "img00.png").unlink()
    for path, payload in kept.items():
        path.write_bytes(payload)
    summary = synthesize(trained.teacher(), config, out, progress=False)
    assert summary.kept == 6 and summary.shards_written == 2
    assert _sources(out) == _sources(tmp_path / "reference")
    assert [(s.key, s.mask.tobytes()) for s in ShardReader(out)] == \
        [(s.key, s.mask.tobytes()) for s in ShardReader(tmp_path / "reference")]


# ------------------------------------------------------------------ the error boundary: --debug
def test_unexpected_errors_are_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    import labelgen.data.folder as folder

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setenv("LABELGEN_DEBUG", "")
    monkeypatch.setattr(folder, "open_labelled", bug)
    with pytest.raises(SystemExit) as exit_:
        main(["data", "info", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: internal error ZeroDivisionError: division by zero") and "--debug" in err

    monkeypatch.setenv("LABELGEN_DEBUG", "1")  # a bug is not hidden: its traceback comes out
    with pytest.raises(ZeroDivisionError):
        main(["data", "info", str(tmp_path)])
    monkeypatch.setenv("LABELGEN_DEBUG", "")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "data", "info", str(tmp_path)])


def test_debug_flag_shows_the_traceback_of_an_expected_error_too(tmp_path):
    env = {**subprocess_env(), "LABELGEN_DEBUG": ""}
    plain = subprocess.run([sys.executable, "-m", "labelgen.cli", "data", "info", str(tmp_path / "nope")],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    debug = subprocess.run([sys.executable, "-m", "labelgen.cli", "--debug", "data", "info", str(tmp_path / "nope")],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert plain.returncode == debug.returncode == 2
    assert plain.stderr == f"error: {tmp_path / 'nope'}: not found\n"
    assert "Traceback" in debug.stderr and "DataError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


# ------------------------------------------------------------------ issue 33 item 2: the -m entry and the cwd
MARKER_MODULES = ("tqdm", "safetensors", "click", "numpy")  # each reached by the commands below


def test_module_entry_never_imports_from_the_working_folder(trained, tmp_path):
    """`python -m labelgen.cli`, `-m labelgen.student.cli` and the README's `torchrun ... -m labelgen.cli --
    synthesize -w .` run inside a workspace holding tqdm.py, safetensors.py, click.py and numpy.py that
    write a marker when imported: none of them runs, and the commands work."""
    ws = tmp_path / "w"
    shutil.copytree(trained.root, ws)
    markers = tmp_path / "markers"
    markers.mkdir()
    for name in MARKER_MODULES:
        (ws / f"{name}.py").write_text(f"open({str(markers / name)!r}, 'w').close()\n")
    python = [sys.executable, "-m", "labelgen.cli"]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "1",
                "-m", "labelgen.cli", "--"]
    synth = ["synthesize", "-w", ".", "--n", "2", "--shard-size", "2", "--batch-size", "2"]
    for cmd in ([*python, "--help"], [sys.executable, "-m", "labelgen.student.cli", "--help"],
                [*python, *synth, "--out", "out1"], [*torchrun, *synth, "--out", "out2"]):
        run = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ws, timeout=300)
        assert sorted(p.name for p in markers.iterdir()) == [], cmd
        assert run.returncode == 0, (cmd, run.stderr[-2000:])
    assert len(list(ShardReader(ws / "out1"))) == len(list(ShardReader(ws / "out2"))) == 2


# ------------------------------------------------------------------ issue 33 item 5: one writer per folder
def _masked_photos(folder: Path, seeds: range, size: int) -> Path:
    """folder/images/p<seed>.png + folder/masks/p<seed>.png (their true index masks)."""
    from teacher_fakes import layout

    for seed in seeds:
        _image(folder / "images" / f"p{seed}.png", seed, size)
        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(layout(seed, size)).save(folder / "masks" / f"p{seed}.png")
    return folder


def _refused(capsys, *argv) -> None:
    """``labelgen ARGV`` in this process is refused in one line: the folder's lock is held (by this test)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and f"in use by pid {os.getpid()}" in err, err


def test_a_second_writer_of_a_workspace_or_output_folder_is_refused_in_one_line(tmp_path, capsys):
    from labelgen.run import RunLock

    ws = annotated_workspace(tmp_path / "w", backend="FakeDiffusion", count=2)
    photos = _masked_photos(tmp_path / "photos", range(3), ws.resolution[0])
    before = _tree(ws.root)
    with RunLock(ws.root, "labelgen process"):  # another process writes into W
        _refused(capsys, "import", "-w", ws.root, "--images", photos / "images", "--masks", photos / "masks")
        _refused(capsys, "sample", "-w", ws.root, "--n", "2")
        _refused(capsys, "tune-features", "-w", ws.root, "--epochs", "1")
    assert _tree(ws.root) == before
    with RunLock(tmp_path / "w2", "labelgen process"):
        _refused(capsys, "init", tmp_path / "w2", "--generator", "teacher_fakes:FakeDiffusion", "--classes", CLASSES)
    assert not (tmp_path / "w2").exists()

    main(["data", "export", str(ws.root), str(tmp_path / "project"), "--format", "folder"])
    with RunLock(tmp_path / "out", "labelgen data import"):
        _refused(capsys, "data", "import", tmp_path / "project", "--out", tmp_path / "out")
    with RunLock(tmp_path / "coco.partial", "labelgen data export"):
        _refused(capsys, "data", "export", ws.root, tmp_path / "coco", "--format", "coco")
    assert not (tmp_path / "out").exists() and not (tmp_path / "coco").exists()
    assert not (tmp_path / "coco.partial").exists()
    # the lock held by nobody: the same commands go through
    main(["import", "-w", str(ws.root), "--images", str(photos / "images"), "--masks", str(photos / "masks")])
    main(["data", "import", str(tmp_path / "project"), "--out", str(tmp_path / "out")])
    main(["data", "export", str(ws.root), str(tmp_path / "coco"), "--format", "coco"])
    assert len(Workspace(ws.root).annotated_ids()) == 5 and len(list((tmp_path / "out/train/masks").iterdir())) == 2
    assert not (tmp_path / "coco" / ".lock").exists() and not (tmp_path / "coco.partial").exists()


_AT_ONCE = (  # `labelgen ARGS` in a process that waits for the file GO after its imports: two of them overlap
    "import os, sys, time\n"
    "import labelgen.cli, labelgen.data.formats, labelgen.workspace\n"
    "print('ready', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.005)\n"
    "labelgen.cli.main(sys.argv[2:])\n")


def _at_once(go: Path, *commands: list) -> list[tuple[int, str]]:
    """(exit code, stderr) of each labelgen command, run in concurrent processes released together."""
    procs = [subprocess.Popen([sys.executable, "-c", _AT_ONCE, str(go), *map(str, command)], env=subprocess_env(),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command in commands]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=120)[1][-2000:]
    go.touch()
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    for code, err in results:  # done, or refused in one line
        assert code == 0 or (code == 2 and err.count("\n") == 1 and "error: " in err), (code, err[-2000:])
    return results


def test_two_imports_into_one_workspace_at_once_lose_nothing(tmp_path):
    from teacher_fakes import layout

    ws = create_workspace(tmp_path / "w", "teacher_fakes:FakeDiffusion", CLASSES.split(","))
    size = ws.resolution[0]
    folders = [_masked_photos(tmp_path / "a", range(0, 40), size), _masked_photos(tmp_path / "b", range(100, 140), size)]
    results = _at_once(tmp_path / "go", *[["import", "-w", ws.root, "--images", f / "images", "--masks", f / "masks"]
                                          for f in folders])
    assert [code for code, _ in results].count(0) >= 1
    assert all("in use by pid" in err for code, err in results if code)
    done = [f for f, (code, _) in zip(folders, results) if code == 0]
    ws = Workspace(ws.root)
    recipes = {i: ws.read_annotation(i)[1] for i in ws.annotation_ids()}
    # every image of each import that succeeded, exactly once, each with its own mask
    assert sorted(r["sha256"] for r in recipes.values()) == sorted(
        file_sha256(p) for f in done for p in (f / "images").iterdir())
    for annotation_id, recipe in recipes.items():
        assert (ws.read_mask(annotation_id) == layout(int(recipe["file"][1:-4]), size)).all(), annotation_id


def test_two_data_imports_into_one_output_at_once_write_one_complete_split(tmp_path):
    from labelgen.data.classes import ClassList
    from labelgen.data.folder import open_labelled

    src = tmp_path / "src"
    _masked_photos(src / "train", range(60), 32)
    ClassList.from_names(CLASSES.split(",")).save(src / "classes.json")
    out = tmp_path / "out"
    results = _at_once(tmp_path / "go", *[["data", "import", src, "--out", out]] * 2)
    assert sorted(code for code, _ in results) == [0, 2]  # one import of the split, the other refused
    refused = next(err for code, err in results if code)
    assert "in use by pid" in refused or "train: already exists" in refused, refused
    split = open_labelled(out / "train", require_masks=True)
    assert sorted(item.key for item in split) == sorted(f"p{i}" for i in range(60))
    assert sorted(p.name for p in (out / "train" / "masks").iterdir()) == sorted(
        p.name for p in (out / "train" / "images").iterdir())
    for item in split:
        assert (item.image == np.asarray(Image.open(src / "train" / "images" / f"{item.key}.png"))).all()


# ------------------------------------------------------------------ issue 33 item 6: labelgen import killed
def _import_killed_before_replace(root: Path, photos: Path, k: int) -> int:
    """``import_images`` in a forked child killed with SIGKILL just before its k-th ``os.replace`` (a file put in
    place: after its temp file is written); returns the signal that ended the child (0: it finished)."""
    pid = os.fork()
    if pid == 0:
        try:
            real_replace, calls = os.replace, []

            def replace(*args, **kwargs):
                calls.append(args)
                if len(calls) == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(*args, **kwargs)

            os.replace = replace
            Workspace(root).import_images(photos / "images", photos / "masks")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_import_killed_at_any_write_leaves_nothing_or_everything_and_the_rerun_completes(tmp_path, capsys):
    reference = create_workspace(tmp_path / "reference", "teacher_fakes:FakeDiffusion", CLASSES.split(","))
    photos = _masked_photos(tmp_path / "photos", range(3), reference.resolution[0])
    real_replace, calls = os.replace, []
    os.replace = lambda *a, **k: calls.append(a) or real_replace(*a, **k)
    try:
        reference.import_images(photos / "images", photos / "masks")
    finally:
        os.replace = real_replace
    expected = _files(reference.annotations_dir)
    assert len(expected) == 9  # 3 images, masks, recipes
    for k in range(1, len(calls) + 1):  # a kill before each file is put in place
        root = tmp_path / f"killed{k}"
        ws = create_workspace(root, "teacher_fakes:FakeDiffusion", CLASSES.split(","))
        assert _import_killed_before_replace(root, photos, k) == signal.SIGKILL, k
        # whatever the kill left, no annotation is an image without its mask
        assert all(ws.mask_path(i).is_file() for i in ws.annotation_ids()), k
        (ws.annotations_dir / ".r000004.png.x1y2z3.tmp").write_bytes(b"half a PNG")  # an older version's leftover
        capsys.readouterr()
        main(["import", "-w", str(root), "--images", str(photos / "images"), "--masks", str(photos / "masks")])
        out = capsys.readouterr().out  # the rest imported now, or the import the kill cut short finished first
        assert "imported 3 images (3 with masks)" in out or "imported 0 images (0 with masks); skipped 3" in out, k
        assert _files(ws.annotations_dir) == expected, k  # every image with its mask, once; no .tmp, no staging
        assert not list(root.rglob("*.tmp")) and not list(root.rglob(".import.*")), k


# ------------------------------------------------------------------ issue 33 item 9: the ADM flags beside the weights
def test_editing_the_adm_flags_beside_the_checkpoint_makes_the_trained_heads_stale(tmp_path, capsys):
    from test_published_teachers import _tiny_adm_file

    checkpoint, _ = _tiny_adm_file(tmp_path)  # tiny_adm.pt + tiny_adm.json (the model flags) beside it
    flags_file = checkpoint.with_suffix(".json")
    ws = create_workspace(tmp_path / "w", "adm", CLASSES.split(","), checkpoint,
                          head={"type": "pixel-mlp", "ensemble": 1}, timesteps=[50])
    photos = _masked_photos(tmp_path / "photos", range(2), ws.resolution[0])
    ws.import_images(photos / "images", photos / "masks")
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=64), progress=False, log=lambda *a: None)
    trained_on = ws.generator_id()
    assert Workspace(ws.root).teacher().generator_id == trained_on

    flags = json.loads(flags_file.read_text())
    flags_file.write_text(json.dumps({**flags, "num_head_channels": 32}))  # the same weights, another network
    edited = Workspace(ws.root)
    assert edited.generator_id() != trained_on
    with pytest.raises(LabelgenError, match=r"the head was trained on generator .*: run `labelgen train-heads` again"):
        edited.teacher()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["synthesize", "-w", str(ws.root), "--n", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1 and "labelgen train-heads" in err, err

    flags_file.write_text(json.dumps(flags))  # the flags the heads were trained with: valid again
    assert Workspace(ws.root).teacher().generator_id == trained_on
