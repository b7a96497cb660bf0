"""Package layout (the rest of the metadata lives in pyproject.toml).

The repository keeps each pipeline stage in a top-level folder a reader finds by name:
``labelgen/`` (teacher + synthesis + CLI), ``student/``, ``app/`` and ``data/``.
Installed, they are all sub-packages of one import name, ``labelgen``:

    labelgen/  -> labelgen          student/ -> labelgen.student
    app/       -> labelgen.app      data/    -> labelgen.data

so ``pip install .`` (editable or not) never puts generic top-level modules such as ``app`` or
``data`` into site-packages.
"""
from setuptools import find_packages, setup

FOLDER_OF_PACKAGE = {
    "labelgen": "labelgen",
    "labelgen.student": "student",
    "labelgen.app": "app",
    "labelgen.data": "data",
}

packages: list[str] = []
for package, folder in FOLDER_OF_PACKAGE.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=FOLDER_OF_PACKAGE)
