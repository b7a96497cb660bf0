"""Is the generator good enough? Cheap measures of what its features are worth for the task, on the annotations.

    pixel_teacher(resolution)          the no-generator baseline: a Teacher whose "features" are the photo's own pixels
    annotated_photos(annotations, hw)  (image, mask) of every annotated item, at the resolution (the photo rule)
    kfold_miou(teacher, photos, ...)   k-fold mIoU of heads on a teacher's features (labelgen.feature_selection's
                                       scoring: one confusion matrix over every held-out fold)
    holdout_baseline(teacher, ...)     the baseline's held-out scores where ``train-heads --holdout K`` scores a teacher
    below_baseline(score, baseline)    the one-line warning when a teacher scores below the baseline
    Probe                              ``train-generator --annotations W``: the k-fold mIoU of W's head type on the
                                       current EMA generator's features, every --probe-every minutes and at the end

The baseline is the same heads (type, options, epochs, pixels per image, class balance, flip augmentation) trained
on the same annotations and scored on the same held-out images, reading the photo's RGB at strides 1, 4 and 16
(average-pooled: the pixel and its surroundings) instead of generator features. It is cheap next to heads on
generator features (9 input channels instead of hundreds), and the difference between a teacher and it is what the
generator's features add. It is a floor of what
a supervised student trained on the same labels gets (a U-Net learns more from them): a teacher below it has features
that add nothing yet, and its labels will not teach a student more than those labels alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from labelgen.errors import LabelgenError
from labelgen.generators.base import Generator

PIXEL_STRIDES = (1, 4, 16)  # the baseline's levels: the photo's RGB at these strides


class PixelFeatures(Generator):
    """The photo's own pixels as a generator's features would be: RGB in [-1, 1] at :data:`PIXEL_STRIDES`
    (average-pooled); it makes no images."""

    backend = "pixels"
    can_encode_images = True

    def __init__(self, resolution: tuple[int, int]):
        super().__init__({"resolution": [int(resolution[0]), int(resolution[1])]})
        self._resolution = (int(resolution[0]), int(resolution[1]))

    @property
    def resolution(self) -> tuple[int, int]:
        return self._resolution

    @property
    def feature_channels(self) -> list[int]:
        return [3] * len(PIXEL_STRIDES)

    @property
    def feature_strides(self) -> list[int]:
        return list(PIXEL_STRIDES)

    def features_of_images(self, images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
        x = images.float()
        h, w = x.shape[-2:]
        return [x if s == 1 else F.adaptive_avg_pool2d(x, (math.ceil(h / s), math.ceil(w / s))) for s in PIXEL_STRIDES]

    def sample(self, seeds: list[int], **options):
        raise LabelgenError("the pixel baseline makes no images (it reads the pixels of given photos)")

    def features_from_recipes(self, recipes: list[dict[str, Any]]):
        return self.sample([])

    @classmethod
    def from_checkpoint(cls, checkpoint, **options) -> "PixelFeatures":
        raise LabelgenError("the pixel baseline has no checkpoint")


def pixel_teacher(resolution: tuple[int, int], classes=None):
    """The no-generator baseline's Teacher at ``resolution`` (module docstring)."""
    from labelgen.teacher import Teacher

    return Teacher(PixelFeatures(resolution), generator_id="pixels", classes=classes)


def annotated_photos(annotations, resolution: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image uint8 [H, W, 3], mask uint8 [H, W]) of every annotated item of ``annotations`` (a workspace or
    labelgen.annotations.Annotations), stretched to ``resolution`` (labelgen.imaging.fit_photo)."""
    from labelgen.imaging import fit_photo

    photos = []
    for annotation_id in annotations.annotated_ids():
        image, _ = annotations.read_item(annotation_id)
        photos.append(fit_photo(image, tuple(resolution), annotations.read_mask(annotation_id, image.shape)))
    return photos


def kfold_miou(teacher, photos: list[tuple[np.ndarray, np.ndarray]], num_classes: int, head: dict[str, Any],
               config=None):
    """labelgen.metrics Scores of heads of ``head`` ({"type", options}) on ``teacher``'s features of ``photos``,
    k-fold (``config``: a feature_selection.SweepConfig: folds, epochs, pixels per image, class balance, seed)."""
    from labelgen.feature_selection import SweepConfig, _score_levels
    from labelgen.heads.train import TrainConfig
    from labelgen.losses import class_balance_weights, mask_class_frequencies

    config = config or SweepConfig()
    examples = [([f.to(torch.float16).cpu() for f in teacher.features(images=[image])],
                 torch.from_numpy(mask.astype(np.int64))[None]) for image, mask in photos]
    class_weights = None
    if config.class_balance > 0:
        frequencies = mask_class_frequencies([mask for _, mask in photos], num_classes)
        class_weights = class_balance_weights(torch.from_numpy(frequencies), config.class_balance)
    options = dict(head)
    head_type = options.pop("type")
    train = TrainConfig(epochs=config.epochs, pixels_per_image=config.pixels_per_image,
                        class_balance=config.class_balance, seed=config.seed)
    return _score_levels(examples, None, lambda ex: ([f.float() for f in ex[0]], ex[1]), teacher.channels, head_type,
                         options, num_classes, teacher.resolution, train, class_weights, config.folds)


def holdout_baseline(teacher, annotations, config, head: dict[str, Any] | None, holdout: int, device: str = "cpu"):
    """The pixel baseline's scores on the ``holdout`` images ``train_heads(teacher, annotations, config, ...,
    holdout=holdout)`` holds out: the same heads and training, on the photos' pixels (module docstring)."""
    from labelgen.heads.train import TrainConfig, resolve_augment, train_heads

    config = config or TrainConfig()
    config = replace(config, augment=resolve_augment(config.augment, teacher))  # the teacher's augmentation
    result = train_heads(pixel_teacher(teacher.resolution, annotations.classes), annotations, config, None, head,
                         device=device, log=lambda text: None, progress=False, holdout=holdout)
    return result.holdout


def below_baseline(score: float | None, baseline: float | None, scored: str = "held-out") -> str | None:
    """The warning when a teacher's mIoU ``score`` is below the pixel baseline's (None when it is not)."""
    if score is None or baseline is None or math.isnan(score) or math.isnan(baseline) or score >= baseline:
        return None
    return (f"the teacher's {scored} mIoU {score:.4f} is below the pixel baseline's {baseline:.4f} (the same heads "
            "on the photos' own pixels): the generator's features add nothing yet (train it longer, or start it "
            "from an existing generator: train-generator --init)")


class Probe:
    """``train-generator --annotations W``: the k-fold mIoU of W's head type on a generator's features of W's
    annotated photos (brought to the generator's ``resolution``), beside the pixel baseline's (scored once), each
    time :meth:`due` says ``every_min`` minutes have passed. Diffusion features at W's timesteps, every block."""

    def __init__(self, workspace: Path | str, resolution: tuple[int, int], every_min: float,
                 echo: Callable[[str], None] = print):
        from labelgen.feature_selection import SweepConfig
        from labelgen.workspace import Workspace

        ws = Workspace(workspace)
        count = len(ws.annotated_ids())
        if count < 2:
            raise LabelgenError(f"--annotations {ws.root}: the probe needs at least 2 annotated images (it has "
                                f"{count}; labelgen import -w W --images ... --masks ...)")
        self.echo, self.every_s, self.last = echo, float(every_min) * 60.0, 0.0
        self.classes, self.head, self.timesteps = ws.classes, {**ws.config.head, "type": ws.head_type}, \
            [int(t) for t in ws.config.timesteps]
        self.config = SweepConfig()
        self.photos = annotated_photos(ws, resolution)
        self.how = f"{self.head['type']} heads, {min(self.config.folds, count)}-fold over {count} annotated images"
        start = time.perf_counter()
        self.baseline = float(kfold_miou(pixel_teacher(resolution), self.photos, len(self.classes), self.head,
                                         self.config).miou)
        echo(f"probe: {self.how} of {ws.root} every {every_min:g} min and at the end; the pixel baseline (the same "
             f"heads on the photos' own pixels) scores mIoU {self.baseline:.4f} ({time.perf_counter() - start:.0f} s)")

    def due(self, elapsed_s: float) -> bool:
        return elapsed_s - self.last >= self.every_s

    def run(self, generator: Generator, step: int, elapsed_s: float) -> float:
        """The k-fold mIoU of ``generator``'s features (one line printed)."""
        from labelgen.teacher import Teacher

        start = time.perf_counter()
        miou = float(kfold_miou(Teacher(generator, generator_id=f"probe:{step}"), self.photos, len(self.classes),
                                self.head, self.config).miou)
        seconds = time.perf_counter() - start
        self.last = elapsed_s + seconds
        verdict = ("below it: the features add nothing yet" if below_baseline(miou, self.baseline, "")
                   else "above it")
        self.echo(f"probe at step {step}: mIoU {miou:.4f} ({self.how}); pixel baseline {self.baseline:.4f}, "
                  f"{verdict} ({seconds:.0f} s)")
        return miou
