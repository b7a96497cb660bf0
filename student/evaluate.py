"""Evaluate and predict with a trained student (run folder: see labelgen.student.models; ONNX export:
labelgen.student.onnx_export).

Inference: the image is resized to the training size, normalised, and the logits are resized
(bilinear) back to the image's own size before the argmax, so masks and metrics are at full size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from labelgen.data.io import atomic_write_json, list_images, read_image, staged_folder, write_png
from labelgen.errors import LabelgenError
from labelgen.imaging import fit_photo, resize_image, resize_mask
from labelgen.metrics import ConfusionMatrix, Scores
from labelgen.student.models import StudentConfig
from labelgen.visualize import grid, overlay


def preprocess(image: np.ndarray, config: StudentConfig) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, h, w] at the training size, normalised."""
    image, _ = fit_photo(image, tuple(config.image_size))  # uint8, as the training images (student/data.py)
    x = torch.tensor(image).permute(2, 0, 1)[None].float()  # [1, 3, h, w]
    mean = torch.tensor(config.mean)[None, :, None, None] * 255
    std = torch.tensor(config.std)[None, :, None, None] * 255
    return (x - mean) / std


@torch.no_grad()
def student_scores(model, config: StudentConfig, image: np.ndarray, flip: bool = False, device="cpu") -> torch.Tensor:
    """uint8 [H, W, 3] -> class scores float [1, C, h, w] at the training size: the logits, or with ``flip``
    (horizontal-flip test-time augmentation) the log of the mean of the photo's and the mirrored photo's
    (flipped-back) probabilities. softmax(scores) is the probabilities either way."""
    x = preprocess(image, config).to(device)  # [1, 3, h, w]
    logits = model(x).float()  # [1, C, h, w]
    if not flip:
        return logits
    probs = (torch.softmax(logits, dim=1) + torch.softmax(model(x.flip(-1)).float(), dim=1).flip(-1)) / 2
    return probs.clamp_min(1e-12).log()


@torch.no_grad()
def predict_image(model, config: StudentConfig, image: np.ndarray, device="cpu", flip: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] -> class ids uint8 [H, W] (``flip``: with flip test-time augmentation)."""
    scores = student_scores(model, config, image, flip, device)  # [1, C, h, w]
    scores = resize_image(scores, image.shape[:2])  # back to the image's own size
    return scores.argmax(1)[0].cpu().numpy().astype(np.uint8)


def evaluate_folder(model, config: StudentConfig, folder, device="cpu", keep: int = 0, flip: bool = False
                    ) -> tuple[Scores, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Scores over a labelled folder, and the first ``keep`` (image, target, prediction) triples (``flip``: the
    predictions with flip test-time augmentation)."""
    from labelgen.data.folder import open_labelled

    data = open_labelled(folder, require_masks=True)
    names = list(data.classes.names)
    if names != [c["name"] for c in config.classes]:
        raise LabelgenError(f"{folder}: classes {names} differ from the student's {[c['name'] for c in config.classes]}")
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(len(names))
    kept = []
    try:
        for item in data:
            pred = predict_image(model, config, item.image, device, flip)
            cm.update(pred, item.mask)
            if len(kept) < keep:
                kept.append((item.image, item.mask, pred))
    finally:
        model.train(was_training)
    return cm.compute(), kept


def overlay_grid(triples, palette, alpha: float = 0.5) -> np.ndarray:
    """Rows of [image | ground truth over image | prediction over image] -> uint8 [rows*H, 3*W, 3]."""
    h, w = triples[0][0].shape[:2]
    tiles = []
    for image, target, pred in triples:
        image, target, pred = resize_image(image, (h, w)), resize_mask(target, (h, w)), resize_mask(pred, (h, w))
        tiles += [image, overlay(image, target, palette, alpha), overlay(image, pred, palette, alpha)]
    return grid(tiles, cols=3, gap=0)


def confusion_image(confusion: np.ndarray, names, cell: int = 28) -> np.ndarray:
    """Row-normalised confusion matrix (rows = ground truth, cols = prediction) as an RGB heat map with
    class names and per-cell percentages. uint8 [H, W, 3]."""
    c = len(names)
    rows = confusion.sum(1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    label_w = 8 + 7 * max(len(n) for n in names)
    top = 20
    im = Image.new("RGB", (label_w + c * cell + 4, top + c * cell + 4), "white")
    draw = ImageDraw.Draw(im)
    draw.text((label_w, 4), "prediction ->  (rows: ground truth)", fill=(0, 0, 0))
    for i, name in enumerate(names):
        draw.text((4, top + i * cell + cell // 3), name, fill=(0, 0, 0))
        for j in range(c):
            v = norm[i, j]
            shade = int(255 * (1 - v))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((x0 + 2, y0 + cell // 3), f"{100 * v:.0f}", fill=(0, 0, 0) if v < 0.5 else (255, 255, 255))
    return np.asarray(im)


def write_eval_outputs(out: Path, scores: Scores, kept, config: StudentConfig, extra: dict | None = None
                       ) -> tuple[Path, Path]:
    """OUT/confusion.png, OUT/overlays.png and OUT/scores.json (scores + ``extra``), all or none."""
    names = [c["name"] for c in config.classes]
    with staged_folder(out) as stage:
        write_png(stage / "confusion.png", confusion_image(scores.confusion, names))
        write_png(stage / "overlays.png", overlay_grid(kept, config.class_list.palette))
        atomic_write_json(stage / "scores.json", {**scores.to_json(names), **(extra or {})})
    return out / "confusion.png", out / "overlays.png"


def predict_folder(model, config: StudentConfig, images: Path, out: Path, device="cpu", flip: bool = False) -> int:
    """OUT/<stem>.png index mask per image of IMAGES, all or none (a bad image or a full disk leaves OUT as
    it was); ``flip``: with flip test-time augmentation."""
    paths = list_images(Path(images))
    if not paths:
        raise LabelgenError(f"{images}: no images")
    palette = config.class_list.palette
    with staged_folder(out) as stage:
        for p in paths:
            write_png(stage / f"{p.stem}.png", predict_image(model, config, read_image(p), device, flip),
                      palette)
    return len(paths)
