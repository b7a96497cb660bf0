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
from labelgen import torchvision_compat as _torchvision_compat

_torchvision_compat.install()  # before anything imports torchvision (timm, smp, diffusers)

__version__ = "0.1.0"
