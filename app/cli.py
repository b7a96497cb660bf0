"""``labelgen app``: start the Streamlit app on a workspace (registered in labelgen/cli.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

APP_FILE = Path(__file__).parent / "streamlit_app.py"
MAX_UPLOAD_MB = 20
# `python -P` (3.11+): the working directory (often a workspace) is not put on sys.path, so no file in it can
# shadow a module the app or its jobs import (3.10 has no -P)
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def default_workspace_copy() -> Path:
    """A writable copy of the embedded default workspace (labelgen/default_teacher/workspace) at
    $LABELGEN_APP_HOME/default-workspace (default ~/.cache/labelgen/): made once, then reused."""
    from labelgen.default_teacher import copy_default_workspace

    home = Path(os.environ.get("LABELGEN_APP_HOME", Path.home() / ".cache" / "labelgen"))
    return Path(copy_default_workspace(home / "default-workspace").root)


def streamlit_command(workspace: Path, host: str, port: int, import_roots: tuple[Path, ...] = ()) -> list[str]:
    cmd = [sys.executable, *SAFE_PATH, "-m", "streamlit", "run", str(APP_FILE),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
           "--server.fileWatcherType", "none",
           # a local tool: no "Deploy" button (nor rerun / clear cache) in the toolbar and menu
           "--client.toolbarMode", "viewer", "--", "--workspace", str(workspace)]
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
