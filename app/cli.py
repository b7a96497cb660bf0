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
# the working directory of the server and of its jobs: not a user folder, so no `.streamlit/config.toml` or
# `secrets.toml` lying in the folder `labelgen app` is started in is read (one could turn XSRF/CORS
# protection off or allow other origins), and nothing there is on sys.path (3.10 has no -P)
NEUTRAL_CWD = Path(os.path.abspath(os.sep))


def default_workspace_copy() -> Path:
    """A writable copy of the embedded default workspace (labelgen/default_teacher/workspace) at
    $LABELGEN_APP_HOME/default-workspace (default ~/.cache/labelgen/): made once, then reused."""
    from labelgen.default_teacher import copy_default_workspace

    home = Path(os.environ.get("LABELGEN_APP_HOME", Path.home() / ".cache" / "labelgen"))
    return Path(copy_default_workspace(home / "default-workspace").root)


def streamlit_command(workspace: Path, host: str, port: int, import_roots: tuple[Path, ...] = ()) -> list[str]:
    """The server's command line. Flags win over every config file (~/.streamlit/config.toml included), so
    the security-relevant settings are pinned here: XSRF and CORS protection on, no development mode
    (it allows every origin), the address bound."""
    cmd = [sys.executable, *SAFE_PATH, "-m", "streamlit", "run", str(APP_FILE),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
           "--global.developmentMode", "false",
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
    from labelgen.app.core import IMPORT_ROOTS_ENV
    from labelgen.workspace import Workspace

    if workspace is None:
        workspace = default_workspace_copy()
        click.echo(f"using the default workspace copy at {workspace}")
    Workspace(workspace)  # a clear error now, not in the browser
    click.echo(f"labelgen app on http://{host}:{port}  (workspace {Path(workspace).resolve()})")
    # the server runs in NEUTRAL_CWD: relative import roots (option or environment) are resolved here first
    cmd = streamlit_command(Path(workspace).resolve(), host, port, tuple(p.resolve() for p in import_root))
    if os.environ.get(IMPORT_ROOTS_ENV):
        os.environ[IMPORT_ROOTS_ENV] = os.pathsep.join(
            str(Path(p).expanduser().resolve()) for p in os.environ[IMPORT_ROOTS_ENV].split(os.pathsep) if p)
    os.chdir(NEUTRAL_CWD)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # become the server: signals (Ctrl+C, kill) reach Streamlit directly
