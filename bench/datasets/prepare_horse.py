"""Build DS/horse (Weizmann Horse Database, horse vs background) from a fetched GitHub mirror.

    git clone --bare https://github.com/shenshutao/image_segmentation MIRROR.git
    .venv/bin/python bench/datasets/prepare_horse.py --git-dir MIRROR.git --out DS/horse

The mirror holds weizmann_horse_db/{rgb,gray,figure_ground}/horseNNN.jpg (328 each). The figure_ground
masks are at the size of the gray images; the rgb photos are the originals (same aspect ratio, larger),
so each rgb photo is resized straight to the target size derived from its mask.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dsprep_common import GitBlobs, Sample, SplitSpec, binarise, die, drop_duplicates, open_image, summary, target_size, write_dataset  # noqa: E402

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

## Splits (ids are global, as labelgen data import-ccp: train-full 0001.., then val, then test)
| split | images | masks |
|---|---|---|
| annotated-20 | $annotated_20 | yes (the first 20 of train-full) |
| unlabeled | $unlabeled | no (= the train-full images; disjoint from val and test) |
| train-full | $train_full | yes (all labelled training photos, for upper-bound runs) |
| val | $val | yes |
| test | $test | yes |

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

## Built with
```
{command}
```

## Summary (from the written files)
```
{summary}
```
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--git-dir", type=Path, required=True, help="bare git dir of the fetched mirror")
    ap.add_argument("--commit", default=COMMIT)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    git = GitBlobs(args.git_dir, args.commit)
    masks = [p for p in git.list("weizmann_horse_db/figure_ground") if p.endswith(".jpg")]
    if not masks:
        die(f"{args.git_dir}: no weizmann_horse_db/figure_ground/*.jpg at {git.commit}")
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

    samples, dups = drop_duplicates(samples)
    dropped += dups
    command = " ".join([".venv/bin/python", "bench/datasets/prepare_horse.py", "--git-dir", str(args.git_dir),
                        "--commit", git.commit, "--out", str(args.out)])
    card = CARD.format(repo=REPO, commit=git.commit, seed=SPEC.seed, n_val=SPEC.n_val, n_test=SPEC.n_test,
                       dropped="".join(f"\n  - {d}" for d in dropped) or " none", command=command, summary="{summary}")
    counts = write_dataset(args.out, samples, CLASSES, SPEC, card)
    text = summary(args.out)
    card_path = args.out / "DATACARD.md"
    card_path.write_text(card_path.read_text().replace("{summary}", text))
    print(f"wrote {args.out}: {counts}; dropped: {dropped or 'none'}")
    print(text)


if __name__ == "__main__":
    main()
