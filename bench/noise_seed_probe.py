"""The diffusion teacher's noise seed as a label-quality lever, probed on labelled photos (e.g. CCP `val`).

A diffusion teacher computes a real photo's features by noising it to each timestep t with noise drawn from one
fixed seed (the generator's ``noise_seed``) and running the UNet once (labelgen/generators/diffusion.py); the
heads are trained on the annotations' features at that seed. Two ways to use other seeds, both measured here
against the workspace's own heads, every score with flip test-time augmentation:

* **noise-seed TTA**: each head set's probabilities averaged over the features at seeds 0..k-1 (seed 0 = the
  generator's own) and their mirror images, for k = 1..K;
* **noise-seed augmentation of the heads' training set**: fresh heads of every trained type, rebuilt from each
  saved head's config and trained with its saved recipe (``train`` in its meta: epochs, class balance, seed,
  flip augmentation) on every annotation (and mirror image, where the recipe flips) at K noise seeds instead
  of one, then scored the same way.

Each head alone and the heads ensembled (``labelgen.teacher.predict_heads``, the teacher's one path) are
scored; the new heads are not saved (the workspace is only read; its feature cache is not used).

    .venv/bin/python bench/noise_seed_probe.py W VAL_FOLDER [--seeds 2] [--limit N] [--json out.json]

Measured on CCP (README, docs/teacher.md): neither helped, so neither is a `labelgen` option.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _features(teacher, image, mirrored: bool, seed: int) -> list:
    """The teacher's features of ``image`` [H, W, 3] (or of its mirror image) at noise seed ``seed``."""
    return (teacher.flipped_features if mirrored else teacher.features)(images=[image], seed=seed)


def train_noise_augmented(workspace, teacher, seeds: int, log=print) -> dict:
    """{head type: a fresh head trained on the annotations' features at noise seeds 0..seeds-1}, each with the
    saved head's architecture and training recipe (module docstring)."""
    import torch

    from labelgen.heads import head_class, read_head_config
    from labelgen.heads.train import TrainConfig, train_head
    from labelgen.imaging import mirror_image
    from labelgen.losses import class_balance_weights, mask_class_frequencies
    from labelgen.workspace import read_image

    shape = (*workspace.resolution, 3)
    num_classes = len(workspace.classes)
    heads = {}
    for head_type, folder in workspace.selected_heads().items():
        config = read_head_config(folder)
        meta = config.get("meta", {})
        recipe = TrainConfig(**meta.get("train", {}))
        ids = list(meta.get("annotations") or workspace.annotated_ids())
        views = (False, True) if recipe.augment == "flip" else (False,)
        examples = []  # (levels [1, C_i, h_i, w_i], mask [1, H, W]) per annotation x mirror x noise seed
        for annotation_id in ids:
            image = read_image(workspace.image_path(annotation_id))  # [H, W, 3] uint8
            mask = workspace.read_mask(annotation_id, shape)  # [H, W]
            for mirrored in views:
                labels = mirror_image(mask) if mirrored else mask
                for seed in range(seeds):
                    levels = [f.cpu() for f in _features(teacher, image, mirrored, seed)]
                    examples.append((levels, torch.from_numpy(labels.astype("int64"))[None]))
        class_weights = None
        if recipe.class_balance > 0:
            frequencies = mask_class_frequencies((workspace.read_mask(i, shape) for i in ids), num_classes)
            class_weights = class_balance_weights(torch.from_numpy(frequencies), recipe.class_balance)  # [C]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            head = head_class(head_type).from_config(config)  # same architecture, fresh weights
        start = time.time()
        result = train_head(head, lambda k: examples[k], len(examples), recipe, class_weights=class_weights)
        log(f"{head_type}: {len(examples)} examples ({len(ids)} annotations x {len(views)} x {seeds} noise seeds), "
            f"{result.steps} steps, final loss {result.losses[-1]:.4f}, {time.time() - start:.0f} s")
        heads[head_type] = head
    return heads


def probe(workspace_dir: Path, val: Path, seeds: int = 2, limit: int | None = None, log=print) -> dict:
    """{"rows": [{"heads", "trained_on_seeds", "tta_seeds", "miou"}], ...}: module docstring."""
    import torch

    from labelgen.heads import TaskHead
    from labelgen.heads.train import real_images
    from labelgen.metrics import ConfusionMatrix
    from labelgen.teacher import predict_heads
    from labelgen.workspace import Workspace

    if seeds < 1:
        raise SystemExit("--seeds: at least 1")
    started = time.time()
    workspace = Workspace(workspace_dir)
    teacher = workspace.teacher(head=False)
    teacher.require_image_encoding("the noise-seed probe")
    own = {t: TaskHead.from_pretrained(folder) for t, folder in workspace.selected_heads().items()}
    fresh = train_noise_augmented(workspace, teacher, seeds, log) if seeds > 1 else {}
    sets = {}  # (head types, seeds trained on) -> heads
    for trained_on, heads in ((1, own), (seeds, fresh)):
        if not heads:
            continue
        for head_type, head in heads.items():
            sets[(head_type, trained_on)] = [head]
        if len(heads) > 1:
            sets[("+".join(heads), trained_on)] = list(heads.values())
    probs = {key: [] for key in sets}  # per image: [seeds, 2 (plain, mirror), C, H, W]
    masks = []
    for _, image, mask in real_images(teacher, val, len(workspace.classes), limit):
        masks.append(mask)
        views = {key: [] for key in sets}
        for seed in range(seeds):
            for mirrored in (False, True):
                levels = _features(teacher, image, mirrored, seed)
                for key, heads in sets.items():
                    p = predict_heads(heads, levels).probs[0]  # [C, H, W]
                    views[key].append(p.flip(-1) if mirrored else p)
        for key in sets:
            probs[key].append(torch.stack(views[key]).view(seeds, 2, *views[key][0].shape))
    rows = []
    for (names, trained_on), per_image in probs.items():
        for k in range(1, seeds + 1):
            matrix = ConfusionMatrix(len(workspace.classes))
            for p, mask in zip(per_image, masks):
                matrix.update(p[:k].mean(dim=(0, 1)).argmax(dim=0).numpy(), mask)
            rows.append({"heads": names, "trained_on_seeds": trained_on, "tta_seeds": k,
                         "miou": matrix.compute().miou})
    report = {"workspace": str(workspace_dir), "val": str(val), "images": len(masks), "seeds": seeds,
              "flip_tta": True, "seconds": round(time.time() - started, 1), "rows": rows}
    log(f"{'heads':<22} {'trained on seeds':>16} {'TTA seeds':>9} {'mIoU':>7}")
    for row in rows:
        log(f"{row['heads']:<22} {row['trained_on_seeds']:>16} {row['tta_seeds']:>9} {row['miou']:>7.4f}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path, help="a diffusion workspace with trained heads")
    parser.add_argument("val", type=Path, help="labelled photos (project folder format), e.g. CCP96/val")
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds K (TTA over 1..K; heads trained on K)")
    parser.add_argument("--limit", type=int, default=None, help="score the first N photos only")
    parser.add_argument("--json", type=Path, default=None, help="write the report here (atomic)")
    args = parser.parse_args()
    report = probe(args.workspace, args.val, args.seeds, args.limit)
    if args.json is not None:
        from labelgen.data.io import atomic_write_json

        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
