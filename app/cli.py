"""``labelgen app``: start the Streamlit app on a workspace (registered in labelgen/cli.py)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from labelgen.errors import LabelgenError

APP_FILE = Path(__file__).parent / "streamlit_app.py"
MAX_UPLOAD_MB = 20
# `python -P` (3.11+): the working directory (often a workspace) is not put on sys.path, so no file in it can
# shadow a module the app or its jobs import (3.10 has no -P)
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def default_workspace_copy() -> Path:
    """A writable copy of the embedded default workspace (made once, then reused)."""
    target = Path(os.environ.get("LABELGEN_APP_HOME", Path.home() / ".cache" / "labelgen")) / "default-workspace"
    try:
        from labelgen.default_teacher import copy_default_workspace  # type: ignore[import-not-found]
    except ImportError:
        copy_default_workspace = None
    if copy_default_workspace is not None:
        if (target / "workspace.json").is_file():
            return target
        return Path(copy_default_workspace(target).root)
    try:
        from labelgen import defaults  # type: ignore[attr-defined]  (lands with the embedded workspace)
    except ImportError:
        defaults = None
    source = None
    if defaults is not None:
        for name in ("default_workspace_path", "embedded_workspace", "default_workspace"):
            fn = getattr(defaults, name, None)
            if callable(fn):
                source = Path(fn())
                break
    if source is None:
        embedded = Path(__file__).resolve().parents[1] / "labelgen" / "default_workspace"
        source = embedded if (embedded / "workspace.json").is_file() else None
    if source is None or not (source / "workspace.json").is_file():
        raise LabelgenError("no --workspace given and no embedded default workspace in this build; "
                            "create one with `labelgen init W` and run `labelgen app --workspace W`")
    if not (target / "workspace.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def streamlit_command(workspace: Path, host: str, port: int, import_roots: tuple[Path, ...] = ()) -> list[str]:
    cmd = [sys.executable, *SAFE_PATH, "-m", "streamlit", "run", str(APP_FILE),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
           "--server.fileWatcherType", "none", "--", "--workspace", str(workspace)]
    for root in import_roots:
        cmd += ["--import-root", str(root)]
    return cmd


@click.command("app")
@click.option("--workspace", "-w", type=click.Path(path_type=Path), default=None,
              help="Workspace folder (default: a writable copy of the embedded default workspace).")
@click.option("--port", type=int, default=8501, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", help="Address to bind (127.0.0.1 = this machine only).")
@click.option("--import-root", type=click.Path(path_type=Path, file_okay=False), multiple=True,
              help="Extra folder the app may import real images from (the workspace always is).")
def app_cmd(workspace: Path | None, port: int, host: str, import_root: tuple[Path, ...]):
    """Open the annotation app (annotate, train heads, review synthetic samples) in the browser."""
    from labelgen.workspace import Workspace

    if workspace is None:
        workspace = default_workspace_copy()
        click.echo(f"using the default workspace copy at {workspace}")
    Workspace(workspace)  # a clear error now, not in the browser
    click.echo(f"labelgen app on http://{host}:{port}  (workspace {Path(workspace).resolve()})")
    cmd = streamlit_command(Path(workspace).resolve(), host, port, import_root)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # become the server: signals (Ctrl+C, kill) reach Streamlit directly
