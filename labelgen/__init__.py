"""labelgen: a generator + a few annotated images -> a labelled synthetic dataset -> a student network.

Where things live (follow one image from generator to student checkpoint):

    labelgen/generators/   the teacher's generator backends (StyleGAN2, DDPM, Stable Diffusion, DCGAN)
                           -> images and their multi-scale internal features
    labelgen/heads/        task heads ("feature interpreters"): features -> per-pixel class logits
    labelgen/synthesis/    sample -> label -> uncertainty filter -> sharded tar output
    data/  (labelgen.data) dataset formats: folders, palette PNGs, CCP, WebDataset shards
    student/ (labelgen.student)  train a segmentation-models-pytorch student from the shards
    app/   (labelgen.app)  the Streamlit annotation app
"""
import os as _os
import sys as _sys


def _drop_working_folder_from_path() -> None:
    """``python -m labelgen.cli`` (also torchrun's ``-m labelgen.cli`` workers, ``-m labelgen.student.cli``)
    puts the working folder first on sys.path: run inside a workspace, a tqdm.py or safetensors.py lying
    there would be imported and run. Python imports this package before the -m module, while argv[0] is
    still "-m": the entry is dropped here, before anything else is imported, unless labelgen itself was
    found in that folder (a source checkout run from its root)."""
    if _sys.argv[:1] != ["-m"] or not _sys.path:
        return
    try:
        first, cwd = _os.path.realpath(_sys.path[0] or _os.curdir), _os.path.realpath(_os.getcwd())
    except OSError:  # the working folder was deleted: nothing can be imported from it either
        return
    if first == cwd and first != _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__))):
        del _sys.path[0]


_drop_working_folder_from_path()

# Offline hygiene: nothing phones home at import or run time (tested in tests/test_offline.py).
# albumentations asks PyPI for its latest version when imported unless this is set; the Hugging Face
# libraries (diffusers, transformers) send telemetry with downloads unless this is set. A user's own
# setting of either wins.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from labelgen import torchvision_compat as _torchvision_compat  # noqa: E402

_torchvision_compat.install()  # before anything imports torchvision (timm, smp, diffusers)

__version__ = "0.1.0"
