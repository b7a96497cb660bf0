"""Build DS/kvasir (Kvasir-SEG colonoscopy polyps, polyp vs background) from a fetched GitHub mirror.

    git clone --bare https://github.com/ViniciusSimm/Colo-Retal-Induscon2023 MIRROR.git
    .venv/bin/python bench/datasets/prepare_kvasir.py --git-dir MIRROR.git --out DS/kvasir

At the pinned commit ("database with original sizes") the mirror holds the 1000 Kvasir-SEG photos and
masks at their original resolution in datasets/Kvasir-SEG/{images,masks}/<id>.jpg (the repository's later
commits replaced them with 256x256 squashed copies, so the commit matters).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dsprep_common import GitBlobs, Sample, SplitSpec, binarise, die, main_for, open_image, target_size  # noqa: E402

REPO = "ViniciusSimm/Colo-Retal-Induscon2023"
COMMIT = "c5846892339ad5295f05c4dbec123f7b6bbbf3e6"
FOLDER = "datasets/Kvasir-SEG"
CLASSES = [{"id": 0, "name": "background", "color": [0, 0, 0]},
           {"id": 1, "name": "polyp", "color": [60, 220, 60]}]
SPEC = SplitSpec(n_val=50, n_test=300, n_annotated=20, seed=0)

CARD = """# kvasir: Kvasir-SEG (colonoscopy polyp segmentation), prepared for labelgen

## Source
- Data set: Kvasir-SEG (Simula / Vestre Viken), 1000 colonoscopy photos of polyps with pixel masks
  annotated by a medical doctor and verified by an expert gastroenterologist; official home
  https://datasets.simula.no/kvasir-seg/ .
- Files taken from the public GitHub repository `{repo}`, commit `{commit}`
  ("database with original sizes"), folder `{folder}/` (`images/*.jpg`, `masks/*.jpg`; the
  `kavsir_bboxes.json` boxes are not used). All 1000 pairs present, file names as in the official release.
  Later commits of that repository hold 256x256 aspect-squashed copies: do not use them.
- Licence / terms (official README, DebeshJha/Kvasir-SEG): free for academic and research purposes
  without prior permission; commercial use needs prior permission from the authors. Cite the paper.
- Citation: D. Jha, P. H. Smedsrud, M. A. Riegler, P. Halvorsen, T. de Lange, D. Johansen, H. D. Johansen,
  "Kvasir-SEG: A Segmented Polyp Dataset", International Conference on Multimedia Modeling (MMM) 2020,
  pp. 451-462, Springer.

## Classes
`classes.json`: 0 background, 1 polyp. No ignore (255) pixels.

{splits_table}
Split: the pairs left after dropping (below), in file-name order, shuffled with `random.Random({seed})`; first train-full,
then {n_val} val, then {n_test} test. `sources.csv` maps every id to its original file name.

## Processing
- Masks: `masks/*.jpg` (JPEG, 0/255) thresholded at >= 128 on the gray value -> class 1.
- Size: short side scaled to <= 96 px, aspect ratio kept (photo LANCZOS, mask NEAREST); originals are
  332..1920 px wide (median about 620x530). Images RGB PNG, masks palette PNG (index = class id).
- Dropped before splitting (unusable files; exact or near-exact duplicate photos, found by correlation
  >= 0.95 of 32x32 gray thumbnails of the central 70 %, the first file name kept):{dropped}

## Caveats
- The split is random over photos, as is usual for Kvasir-SEG; some polyps appear in more than one
  photo (several views from one examination), so train and test are not patient-disjoint.
- The source has 4 duplicated or near-identical photo pairs (one of each dropped, see above); their two
  masks differ noticeably (IoU about 0.65-0.96), a rough measure of the annotation noise.
- Many photos have a black border with burnt-in text (examination details), and some a green ScopeGuide
  thumbnail in the lower-left corner; these are background in the masks.
- Polyp size varies a lot (foreground fraction from under 1 % to about 80 % of the photo); at 96 px the
  smallest polyps are only a few pixels across.
"""


def read_samples(git: GitBlobs) -> tuple[list[Sample], list[str]]:
    """Photos and their masks, resized; pairs with an empty mask dropped. (samples, dropped notes)."""
    photos = [p for p in git.list(f"{FOLDER}/images") if p.endswith(".jpg")]
    if not photos:
        die(f"{git.git_dir}: no {FOLDER}/images/*.jpg at {git.commit}")
    samples, dropped = [], []
    for ppath in photos:
        name = Path(ppath).name
        photo = open_image(git.read(ppath), ppath).convert("RGB")
        mask = open_image(git.read(f"{FOLDER}/masks/{name}"), name)
        if photo.size != mask.size:
            die(f"{name}: photo {photo.size} and mask {mask.size} differ in size")
        size = target_size(*photo.size)
        m = binarise(mask).astype("uint8")
        m_small = Image.fromarray(m).resize(size, Image.NEAREST)
        if not m.any():
            dropped.append(f"{name} (empty mask)")
            continue
        samples.append(Sample(name, photo.resize(size, Image.LANCZOS), np.asarray(m_small)))
    return samples, dropped


def main() -> None:
    main_for(__doc__, __file__, REPO, COMMIT, read_samples, CLASSES, SPEC, CARD, folder=FOLDER)


if __name__ == "__main__":
    main()
