"""Build DS/horse (Weizmann Horse Database, horse vs background) from a fetched GitHub mirror.

    git clone --bare https://github.com/shenshutao/image_segmentation MIRROR.git
    .venv/bin/python bench/datasets/prepare_horse.py --git-dir MIRROR.git --out DS/horse

The mirror holds weizmann_horse_db/{rgb,gray,figure_ground}/horseNNN.jpg (328 each). The figure_ground
masks are at the size of the gray images; the rgb photos are the originals (same aspect ratio, larger),
so each rgb photo is resized straight to the target size derived from its mask.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dsprep_common import GitBlobs, Sample, SplitSpec, binarise, die, main_for, open_image, target_size  # noqa: E402

REPO = "shenshutao/image_segmentation"
COMMIT = "2653401d6ea617026895aac17059eb57e017abcb"
CLASSES = [{"id": 0, "name": "background", "color": [0, 0, 0]},
           {"id": 1, "name": "horse", "color": [200, 120, 40]}]
SPEC = SplitSpec(n_val=30, n_test=120, n_annotated=20, seed=0)

CARD = """# horse: Weizmann Horse Database (figure/ground), prepared for labelgen

## Source
- Data set: Weizmann Horse Database (E. Borenstein, S. Ullman), 328 side-view horse photos with
  hand-made figure/ground masks.
- Files taken from the public GitHub repository `{repo}`, commit `{commit}`, folder
  `weizmann_horse_db/` (`rgb/` photos, `figure_ground/` masks; `gray/` not used). That repository says the
  data came from http://www.msri.org/people/members/eranb/ (the authors' page).
- Licence: none stated, neither by the authors' page (as quoted by redistributors) nor by the GitHub
  repository (it has no LICENSE file). Treat as research-use only; cite the paper.
- Citation: E. Borenstein and S. Ullman, "Class-specific, top-down segmentation", ECCV 2002.
  Also: E. Borenstein, E. Sharon, S. Ullman, "Combining top-down and bottom-up segmentation", CVPR
  Workshop on Perceptual Organization, 2004.

## Classes
`classes.json`: 0 background, 1 horse. No ignore (255) pixels.

{splits_table}
Split: the photos left after dropping (below), in file-name order, shuffled with `random.Random({seed})`; first train-full,
then {n_val} val, then {n_test} test. `sources.csv` maps every id to its original file name.

## Processing
- Masks: `figure_ground/*.jpg` (JPEG, near-binary 0..255) thresholded at >= 128 -> class 1.
- Size: short side scaled to <= 96 px, aspect ratio kept (target computed from the mask's size; the rgb
  photo, which has the same aspect ratio within 2 %, is resized straight to it with LANCZOS, the mask
  with NEAREST). Images RGB PNG, masks palette PNG (index = class id).
- Dropped before splitting (unusable files; exact or near-exact duplicate photos, found by correlation
  >= 0.95 of 32x32 gray thumbnails of the central 70 %, the first file name kept):{dropped}

## Caveats
- Masks were drawn on the downscaled gray images (typically ~300 px wide) and stored as JPEG, so edges
  are coarse at the 1-2 px level; at 96 px this is negligible.
- The source has 9 duplicated photos (dropped, see above) whose two masks differ (IoU about 0.89-0.97):
  a rough measure of the annotation noise.
- Photos: one horse per image, mostly side view, varied backgrounds; photo sizes vary (81..1280 px).
"""


def read_samples(git: GitBlobs) -> tuple[list[Sample], list[str]]:
    """figure_ground masks and their rgb photos, resized; (samples, dropped notes)."""
    masks = [p for p in git.list("weizmann_horse_db/figure_ground") if p.endswith(".jpg")]
    if not masks:
        die(f"{git.git_dir}: no weizmann_horse_db/figure_ground/*.jpg at {git.commit}")
    samples, dropped = [], []
    for mpath in masks:
        name = Path(mpath).name
        mask = open_image(git.read(mpath), mpath)
        photo = open_image(git.read(f"weizmann_horse_db/rgb/{name}"), name).convert("RGB")
        if np.asarray(photo).std() < 5:  # horse318.jpg's rgb file is an all-black image in this copy
            dropped.append(f"{name} (rgb photo is blank)")
            continue
        pw, ph = photo.size
        mw, mh = mask.size
        if abs(pw / ph - mw / mh) > 0.03 * (mw / mh):
            die(f"{name}: photo {pw}x{ph} and mask {mw}x{mh} differ in aspect ratio")
        size = target_size(mw, mh)
        img = photo.resize(size, Image.LANCZOS)
        m = binarise(mask.resize(size, Image.NEAREST))
        samples.append(Sample(name, img, m))
    return samples, dropped


def main() -> None:
    main_for(__doc__, __file__, REPO, COMMIT, read_samples, CLASSES, SPEC, CARD)


if __name__ == "__main__":
    main()
