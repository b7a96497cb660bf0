"""The embedded default teacher: a generator trained on CCP's unlabeled photos (96x64) and task heads
trained on its `annotated-20` split, shipped inside the package (see README.md beside this file for
how it was made).

    labelgen/default_teacher/generator/    the generator (save_pretrained folder)
    labelgen/default_teacher/workspace/    a workspace using it: config, the 20 annotations, heads/

:func:`copy_default_workspace` gives a writable copy (the demo and the app start from it); the copy
refers to the packaged generator by absolute path instead of duplicating it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from labelgen.errors import LabelgenError

DEFAULT_TEACHER_DIR = Path(__file__).resolve().parent
DEFAULT_GENERATOR_DIR = DEFAULT_TEACHER_DIR / "generator"
DEFAULT_WORKSPACE_DIR = DEFAULT_TEACHER_DIR / "workspace"


def default_teacher_available() -> bool:
    return (DEFAULT_WORKSPACE_DIR / "workspace.json").is_file() and (DEFAULT_WORKSPACE_DIR / "heads").is_dir()


def copy_default_workspace(dest: Path | str):
    """A writable copy of the default workspace at ``dest`` (reused if it already exists)."""
    from labelgen.workspace import Workspace

    dest = Path(dest)
    if (dest / "workspace.json").is_file():
        return Workspace(dest)
    if not default_teacher_available():
        raise LabelgenError("no teacher trained yet: the embedded default teacher is missing from this install "
                            f"({DEFAULT_WORKSPACE_DIR}); create a workspace with `labelgen init` instead")
    from labelgen.run import new_folder

    with new_folder(dest, "labelgen demo") as partial:  # a second copy meanwhile is refused
        shutil.copytree(DEFAULT_WORKSPACE_DIR, partial, dirs_exist_ok=True)
        workspace = Workspace(partial)
        if workspace.config.checkpoint is not None and not Path(workspace.config.checkpoint).is_absolute():
            workspace.config.checkpoint = str((DEFAULT_WORKSPACE_DIR / workspace.config.checkpoint).resolve())
            workspace.save_config()
    return Workspace(dest)
