"""Round 2 of label distillation: a trained student relabels a folder of (unlabelled) photos into a shard set
with soft labels, so that a fresh student can distil from them (``student pseudo-label``).

Per photo: resized to the student's training size by the one resize rule (labelgen.imaging), student
probabilities = softmax(logits) (``flip``: mean with the mirrored photo's flipped-back probabilities), optionally
mixed with the teacher's soft labels for the same photo (``teacher_shards``: a ``labelgen synthesize
--from-images`` set of the same folder, matched by ``source_image``; p = (1 - w) p_student + w p_teacher).
Written through the shard codec (data/shards.py) like the teacher's pseudo-labels: ``<key>.png`` (the resized
photo), ``<key>.mask.png`` (argmax), ``<key>.soft.npz`` (uint8 probabilities), ``<key>.json`` (``source_image``,
``relabelled_by``). The set is built under ``OUT.partial`` (locked: a second run into OUT meanwhile is refused)
and renamed at the end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from labelgen.data.io import list_images, read_image
from labelgen.data.shards import ShardReader, ShardSample, ShardWriter, soft_probabilities
from labelgen.errors import LabelgenError
from labelgen.imaging import fit_photo, resize_image
from labelgen.student.evaluate import student_scores
from labelgen.student.models import StudentConfig


def student_probabilities(model, config: StudentConfig, image: np.ndarray, flip: bool = False,
                          device="cpu") -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [C, h, w] class probabilities at the training size (h, w)."""
    return torch.softmax(student_scores(model, config, image, flip, device), dim=1)[0].cpu().numpy()


def _teacher_soft(teacher_shards: Path) -> dict[str, np.ndarray]:
    """source_image -> the teacher's probabilities [C, H, W] of a --from-images shard set."""
    out = {}
    for sample in ShardReader(teacher_shards):
        name = (sample.meta or {}).get("source_image")
        if name is None or sample.soft is None:
            raise LabelgenError(f"{teacher_shards}: sample {sample.key} is not a pseudo-labelled photo with soft labels "
                                "(made by `labelgen synthesize --from-images --soft-labels uint8`)")
        out[name] = soft_probabilities(sample.soft)
    return out


def pseudo_label_folder(model, config: StudentConfig, images: Path, out: Path, run_name: str, flip: bool = True,
                        teacher_shards: Path | None = None, teacher_weight: float = 0.0, shard_size: int = 500,
                        device="cpu", progress: bool = True) -> int:
    """Relabel every image of ``images`` into the shard set ``out`` (module docstring); returns the count."""
    from labelgen.run import new_folder, progress as progress_bar

    out = Path(out)
    if out.exists():
        raise LabelgenError(f"{out}: already exists; choose a new output folder")
    if not 0 <= teacher_weight <= 1:
        raise LabelgenError(f"--teacher-weight must be in [0, 1], got {teacher_weight}")
    paths = list_images(Path(images))
    if not paths:
        raise LabelgenError(f"{images}: no images")
    classes = config.class_list
    teacher = {} if teacher_shards is None or teacher_weight == 0 else _teacher_soft(Path(teacher_shards))
    missing = [p.name for p in paths if teacher and p.name not in teacher]
    if missing:
        raise LabelgenError(f"{teacher_shards}: no teacher labels for {len(missing)} image(s), e.g. {missing[0]}")
    size = tuple(config.image_size)
    model.eval().to(device)
    with new_folder(out, "student pseudo-label") as partial:  # OUT absent or complete; a second run refused
        writer = ShardWriter(partial, classes)
        batch: list[ShardSample] = []
        shard_id = 0
        for j, path in enumerate(progress_bar(len(paths), desc="pseudo-label", unit="image", disable=not progress,
                                              iterable=paths)):
            image = read_image(path)
            probs = student_probabilities(model, config, image, flip, device)  # [C, h, w]
            if teacher:
                probs = (1 - teacher_weight) * probs + teacher_weight * resize_image(
                    np.moveaxis(teacher[path.name], 0, 2), size).transpose(2, 0, 1)
            soft = np.round(np.clip(probs, 0, 1) * 255).astype(np.uint8)  # [C, h, w]
            meta = {"source_image": path.name, "source_size": list(image.shape[:2]), "relabelled_by": run_name,
                    "flip_tta": flip, "teacher_weight": teacher_weight}
            image, _ = fit_photo(image, size, notice=False)  # the photo rule (noticed once by the student's preprocess)
            batch.append(ShardSample(f"{j:09d}", image, probs.argmax(0).astype(np.uint8), meta,
                                     soft=soft))
            if len(batch) == shard_size:
                writer.write_shard(shard_id, batch)
                shard_id, batch = shard_id + 1, []
        if batch:
            writer.write_shard(shard_id, batch)
        writer.write_manifest({"relabelled_by": run_name, "images": str(Path(images).resolve()), "flip_tta": flip,
                               "teacher_shards": None if not teacher else str(Path(teacher_shards).resolve()),
                               "teacher_weight": teacher_weight})
    return len(paths)
