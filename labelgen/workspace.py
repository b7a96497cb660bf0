"""A workspace: one labelling project on disk, shared by the CLI and the app.

    W/workspace.json                 config: generator backend + checkpoint, resolution, classes,
                                     feature layers / timesteps, head type (see WorkspaceConfig)
    W/annotations/<id>.png           image to annotate (generated or real)
    W/annotations/<id>.json          what recomputes its generator features (seed / latent / noise,
                                     or {"source": "real"} for imported images)
    W/annotations/<id>.mask.png      index mask, absent until annotated (CVAT or any paint program may
                                     drop one in: 0..C-1, 255 = ignore, or the class colours)
    W/annotations/<id>.status.json   the app's "Mark done" of that mask (docs/app.md; not an annotation id)
    W/heads/                         trained task head (head_config.json + head.safetensors) + train_log.json,
                                     of the workspace's head type (config "head")
    W/heads/<type>/                  a second head type, trained by `labelgen train-heads --type <type>` (same
                                     files); the teacher ensembles every trained head (config "heads" selects)
    W/cache/features/annotations/<id>[.mirror].safetensors   native-resolution features of annotated images
                                     (.mirror: of the mirrored image, head training's flip augmentation;
                                     recomputed when the generator, layers or image change; safe to delete)
    W/synthetic/                     default synthesis output
    W/.lock                          held while a command adds to the workspace or changes its config (import,
                                     sample, init, tune-features): a second one meanwhile is refused (RunLock)
    W/annotations/.import.staging/   an import being written (removed when found: the import did not finish)
    W/annotations/.import.commit/    an import being moved into place (finished by the next command that writes)

Backends are the names in labelgen.generators.BACKENDS, or "module:Class" for a Generator subclass
importable from PYTHONPATH (plugins, test fakes).

The workspace stores the annotations (read as labelgen.annotations describes), the heads' folders and settings,
the feature store and the level choice, and builds the Teacher (``Workspace.teacher()``); the stages
(labelgen.heads.train.train_heads, labelgen.synthesis.synthesize, labelgen.feature_selection.tune_features,
labelgen.training.evaluate_teacher) take that Teacher, not the workspace.

All writes are atomic. Relative checkpoint paths in the config are relative to the workspace folder.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.io import (
    atomic_write_json, check_mask, read_image, read_json, read_mask_pixels, write_png,
)
from labelgen.errors import LabelgenError
from labelgen.heads.base import HEAD_CONFIG_NAME
from labelgen.imaging import tensor_to_uint8
from labelgen.teacher import Teacher, check_head, generator_identity, heads_identity, state_digest, weights_digest

WORKSPACE_ENV = "LABELGEN_WORKSPACE"
CONFIG_NAME = "workspace.json"
ANNOTATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WRITER = "labelgen process"  # what W/.lock's refusal names: "in use by pid N (another labelgen process writes there)"
IMPORT_STAGING = ".import.staging"  # W/annotations/<this>/: an import's files while written
IMPORT_COMMIT = ".import.commit"  # the same folder renamed once complete: its files are moved into place
ANNOTATION_FILES = (".mask.png", ".png", ".json")  # the order an import moves one item's files: recipe last


@dataclass
class WorkspaceConfig:
    backend: str  # generator backend name (labelgen.generators.BACKENDS)
    checkpoint: str | None  # path (absolute, or relative to the workspace); None = backend default
    classes: list[dict]  # [{"id", "name", "color"}]
    resolution: list[int] = field(default_factory=list)  # [H, W]; filled from the generator
    generator_options: dict[str, Any] = field(default_factory=dict)  # e.g. truncation, DDIM steps
    feature_layers: list[int] | None = None  # indices into the generator's feature levels; None = all
    timesteps: list[int] = field(default_factory=lambda: [50, 150, 250])  # diffusion feature timesteps
    head: dict[str, Any] = field(default_factory=lambda: {"type": "pixel-mlp", "ensemble": 3})
    heads: list[str] | None = None  # head types the teacher ensembles (W/heads/ + W/heads/<type>/); None = all trained
    feature_channels: list[int] = field(default_factory=list)  # C_i of every generator level (all, unselected too)
    can_encode_images: bool = False  # the generator computes features of given (real) images

    @property
    def class_list(self) -> ClassList:
        return ClassList.from_json({"classes": self.classes})


def default_workspace_path() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or os.getcwd())


class Workspace:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        config_path = self.root / CONFIG_NAME
        if not config_path.is_file():
            raise LabelgenError(f"{self.root}: not a labelgen workspace (no {CONFIG_NAME}; run `labelgen init`)")
        raw = read_json(config_path)
        try:
            self.config = WorkspaceConfig(**raw)
        except TypeError as e:
            raise LabelgenError(f"{config_path}: bad workspace config ({e})") from None
        self.classes = ClassList.from_json({"classes": self.config.classes}, str(config_path))
        self._generator = None
        self._generator_id: str | None = None
        self._teachers: dict[tuple, tuple] = {}  # (with head, levels) -> (head file stamp, Teacher)
        self._write_lock = threading.RLock()  # one writing thread of this object at a time (the app's sessions)
        self._held = None  # this object's RunLock of W while writing() runs (re-entrant)

    # ---- layout ----
    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    @property
    def heads_dir(self) -> Path:
        return self.root / "heads"

    @property
    def head_type(self) -> str:
        """The workspace's (primary) head type: the one W/heads/ holds."""
        return str(self.config.head.get("type", "pixel-mlp"))

    def head_dir(self, head_type: str | None = None) -> Path:
        """Where a head of ``head_type`` lives: W/heads/ for the workspace's head type (None), else W/heads/<type>/."""
        from labelgen.heads import head_class

        if head_type is None or head_type == self.head_type:
            return self.heads_dir
        head_class(head_type)  # a known type (one line otherwise)
        return self.heads_dir / head_type

    def head_settings(self, head_type: str | None = None) -> tuple[Path, dict[str, Any]]:
        """(folder, {"type", options}) of a head of ``head_type`` to train (labelgen.heads.train.train_heads): the
        workspace's type (None) in W/heads/ with the config's options, another in W/heads/<type>/ with its defaults."""
        folder = self.head_dir(head_type)
        if folder == self.heads_dir:
            return folder, {**self.config.head, "type": self.head_type}
        return folder, {"type": head_type}

    def trained_heads(self) -> dict[str, Path]:
        """{head type: folder} of every trained head, W/heads/ first (its type read from its head_config.json)
        then W/heads/<type>/ in registry order; a type W/heads/ already holds is not read twice."""
        from labelgen.heads import HEADS, read_head_config

        found: dict[str, Path] = {}
        if (self.heads_dir / HEAD_CONFIG_NAME).is_file():
            found[str(read_head_config(self.heads_dir).get("type", self.head_type))] = self.heads_dir
        for name in HEADS:
            folder = self.heads_dir / name
            if name not in found and (folder / HEAD_CONFIG_NAME).is_file():
                found[name] = folder
        return found

    def selected_heads(self, heads: list[str] | None = None) -> dict[str, Path]:
        """The trained heads the teacher combines: ``heads`` (types), else the config's "heads", else all trained."""
        trained = self.trained_heads()
        wanted = heads if heads is not None else self.config.heads
        if wanted is None:
            return trained
        missing = [t for t in wanted if t not in trained]
        if missing or not wanted:
            raise LabelgenError(f"heads {','.join(wanted) or '(none)'}: not trained in {self.heads_dir} ("
                                f"trained: {', '.join(trained) or 'none'}; `labelgen train-heads [--type TYPE]`)")
        return {t: trained[t] for t in wanted}

    @property
    def synthetic_dir(self) -> Path:
        return self.root / "synthetic"

    def save_config(self) -> None:
        atomic_write_json(self.root / CONFIG_NAME, asdict(self.config))

    def reload(self) -> None:
        """Read workspace.json again and forget the loaded generator, its id and teachers (after a config change)."""
        self.__init__(self.root)

    @classmethod
    def create(cls, root: Path | str, config: WorkspaceConfig) -> "Workspace":
        from labelgen.run import RunLock

        root = Path(root)
        with RunLock(root, WRITER):  # W/.lock, as writing(): of two inits meanwhile, one creates W
            if (root / CONFIG_NAME).exists():
                raise LabelgenError(f"{root}: already a workspace")
            (root / "annotations").mkdir(exist_ok=True)
            atomic_write_json(root / CONFIG_NAME, asdict(config))
        return cls(root)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold W's RunLock (re-entrant in this object) while adding to the workspace or changing its config, so
        two writers cannot pick the same ids or seeds: another process meanwhile is refused ("in use by pid N").
        Once held, a killed writer's leftovers go: temp files of atomic writes, an unfinished import's staging
        folder; an import killed while moving its files into place is finished."""
        from labelgen.run import RunLock

        with self._write_lock:
            if self._held is not None:
                yield
                return
            with RunLock(self.root, WRITER, clean=[self.annotations_dir]) as lock:
                self._held = lock
                try:
                    shutil.rmtree(self.annotations_dir / IMPORT_STAGING, ignore_errors=True)
                    self._commit_import()
                    yield
                finally:
                    self._held = None

    def _commit_import(self) -> None:
        """Move a complete import's files (W/annotations/.import.commit/) into place, each item's recipe last (an
        annotation exists once its recipe does, so no reader sees an image without its mask); a kill part way is
        finished by the next call."""
        commit = self.annotations_dir / IMPORT_COMMIT
        if not commit.is_dir():
            return
        ids = sorted({p.name.split(".")[0] for p in commit.iterdir()})
        for annotation_id in ids:
            for suffix in ANNOTATION_FILES:
                staged = commit / f"{annotation_id}{suffix}"
                if staged.is_file():
                    os.replace(staged, self.annotations_dir / staged.name)
        shutil.rmtree(commit)

    def checkpoint_path(self) -> Path | None:
        if self.config.checkpoint is None:
            return None
        p = Path(self.config.checkpoint)
        return p if p.is_absolute() else self.root / p

    # ---- generator and teacher ----
    def generator(self):
        """The workspace's generator (loaded once)."""
        if self._generator is None:
            self._generator = load_workspace_generator(self.config.backend, self.checkpoint_path(),
                                                       self.config.generator_options)
        return self._generator

    def generator_id(self) -> str:
        """What makes the features: backend, a content hash of the checkpoint's weights (with the files its loader
        reads beside a checkpoint file, e.g. ADM's model flags: ``Generator.side_files``; of the loaded weights
        when there is no checkpoint) and a hash of the feature-affecting options. Sampling-only options (DDIM
        steps, bf16, ...) do not change it, so heads stay valid; retraining the generator in place or editing
        its flags file does."""
        if self._generator_id is None:
            checkpoint = self.checkpoint_path()
            if checkpoint is None:
                weights = state_digest(self.generator())
            else:
                side = (generator_class_of(self.config.backend).side_files(checkpoint, self.config.generator_options)
                        if checkpoint.is_file() else [])
                weights = weights_digest(checkpoint, side)
            self._generator_id = generator_identity(self.config.backend, weights, self.config.generator_options,
                                                    self.config.timesteps)
        return self._generator_id

    @property
    def layer_indices(self) -> list[int]:
        """Indices of the generator feature levels the heads use."""
        if self.config.feature_layers is None:  # all (a hand-made config may not list the channels)
            return list(range(len(self.config.feature_channels or self.generator().feature_channels)))
        return list(self.config.feature_layers)

    @property
    def head_in_channels(self) -> list[int]:
        channels = self.config.feature_channels or self.generator().feature_channels
        return [int(channels[i]) for i in self.layer_indices]

    @property
    def resolution(self) -> tuple[int, int]:
        return (int(self.config.resolution[0]), int(self.config.resolution[1]))

    def has_head(self) -> bool:
        """Any trained head (W/heads/ or W/heads/<type>/)."""
        return bool(self.trained_heads())

    def teacher(self, head: bool = True, device: str | None = None, heads: list[str] | None = None) -> Teacher:
        """The workspace's :class:`~labelgen.teacher.Teacher`: its generator, selected levels and (``head``)
        the trained heads (``heads``: these types; default the config's "heads", else every trained one), each
        refused with one line when trained on other generator weights, options or levels, or for another class
        count. Reused while the head files stay the same."""
        from labelgen.heads import TaskHead, head_id, read_head_config

        stamp, folders = None, {}
        if head:
            folders = self.selected_heads(heads)
            if not folders:
                raise LabelgenError(f"{self.heads_dir}: no trained head ({HEAD_CONFIG_NAME} missing; run "
                                    "`labelgen train-heads`)")
            stamp = tuple((str(p.relative_to(self.heads_dir)), p.stat().st_mtime_ns, p.stat().st_size)
                          for folder in folders.values() for p in sorted(folder.glob("head*")) if p.is_file())
        key = (head, tuple(self.layer_indices), tuple(folders))  # the levels: config feature_layers (None: all)
        cached = self._teachers.get(key)
        if cached is None or cached[0] != stamp:
            task_heads, ids = [], []
            for folder in folders.values():
                check_head(read_head_config(folder).get("meta", {}), self.generator_id(), self.layer_indices, folder)
                task_head = TaskHead.from_pretrained(folder)
                if task_head.num_classes != len(self.classes):
                    raise LabelgenError(f"{folder}: the head predicts {task_head.num_classes} classes, the "
                                        f"workspace has {len(self.classes)}: run `labelgen train-heads` again")
                task_heads.append(task_head)
                ids.append(head_id(folder))
            cached = (stamp, Teacher(self.generator(), self.config.feature_layers, task_heads or None,
                                     self.generator_id(), heads_identity(ids) if ids else None, self.classes))
            self._teachers[key] = cached
        teacher = cached[1]
        return teacher.to(device) if device is not None else teacher

    def select_levels(self, blocks: list[int] | None, timesteps: list[int] | None = None) -> None:
        """Keep a choice of generator blocks (None: all) and diffusion timesteps (None: as they are) in workspace.json,
        where ``Teacher.level_settings`` says (generator options or the teacher's ``feature_layers``). The generator
        id changes with it: the heads must be trained again."""
        options, levels = Teacher.level_settings(generator_class_of(self.config.backend), blocks, timesteps)
        with self.writing():
            self.config.generator_options = {**self.config.generator_options, **options}
            self.config.feature_layers = levels
            if "timesteps" in options:
                self.config.timesteps = list(options["timesteps"])
            generator = load_workspace_generator(self.config.backend, self.checkpoint_path(),
                                                 self.config.generator_options)
            self.config.feature_channels = [int(c) for c in generator.feature_channels]
            self.save_config()
        self.reload()

    def keep_feature_sweep(self, report: dict[str, Any], apply: bool = True) -> dict[str, Any]:
        """Write a ``tune_features`` report to W/feature_sweep.json, with (``apply``) its choice kept
        (:meth:`select_levels`); returns it as written."""
        from labelgen.feature_selection import SWEEP_NAME

        with self.writing():  # W/.lock: the config and its report written by one process at a time
            if apply:
                self.select_levels(**report["choice"])
            report = {**report, "applied": bool(apply)}
            atomic_write_json(self.root / SWEEP_NAME, report)
        return report

    # ---- features of annotations ----
    @property
    def feature_cache_dir(self) -> Path:
        return self.root / "cache" / "features"

    @property
    def feature_store(self):
        """The teacher features of this workspace's items, kept in W/cache/features/ (labelgen.annotations.FeatureStore;
        recomputed when the generator, its levels or the item change)."""
        from labelgen.annotations import FeatureStore

        return FeatureStore(self.feature_cache_dir)

    def annotation_features(self, annotation_id: str, mirror: bool = False) -> list:
        """The workspace teacher's features of one annotation, [1, C_i, h_i, w_i] each, on the CPU, through its
        feature store (``FeatureStore.annotation``; ``mirror``: of the mirrored image)."""
        return self.feature_store.annotation(self.teacher(head=False), self, annotation_id, mirror)

    # ---- adding images ----
    def sample_annotations(self, n: int, seed_start: int | None = None, batch_size: int = 8, **options) -> list[str]:
        """Generate ``n`` images to annotate (seeds seed_start..; ``options``: the generator's sampling options,
        e.g. class_idx, truncation); returns their ids."""
        if n < 1:
            raise LabelgenError(f"--n must be at least 1, got {n}")
        with self.writing():  # the seeds after the largest used: no second sampler meanwhile
            if seed_start is None:
                used = [read_json(self.recipe_path(i)).get("seed") for i in self.annotation_ids()]
                seed_start = 1 + max((s for s in used if isinstance(s, int)), default=-1)
            teacher = self.teacher(head=False)
            ids = []
            for start in range(0, n, batch_size):
                seeds = list(range(seed_start + start, seed_start + min(n, start + batch_size)))
                out = teacher.sample(seeds, **options)
                images = tensor_to_uint8(out.images)  # [B, H, W, 3]
                for k, recipe in enumerate(out.recipes):
                    ids.append(self.add_annotation(images[k], {**recipe, "source": "generated",
                                                               "generator": self.generator_id()}))
        return ids

    def import_images(self, images_dir: Path, masks_dir: Path | None = None, inversion=None
                      ) -> tuple[list[str], int, int]:
        """Add a folder's real images (+ masks named <stem>.png or <stem>.mask.png) by :meth:`add_photos`. An image
        whose content is already in the workspace (sha256 of the file, kept as the recipe's "sha256") is skipped,
        so importing a folder again adds only its new images. Returns (ids added, how many of them were resized,
        how many were skipped)."""
        from labelgen.data.io import file_sha256, list_images
        from labelgen.inversion import INVERTERS

        if not self.config.can_encode_images and self.config.backend not in INVERTERS:
            raise LabelgenError(f"the {self.config.backend} generator needs an inversion method to use real images "
                                f"(there is one for {', '.join(INVERTERS)}); use a diffusion teacher (ddpm, "
                                "stable-diffusion) or `labelgen sample`")
        paths = list_images(Path(images_dir))
        if not paths:
            raise LabelgenError(f"{images_dir}: no images")
        skipped = 0

        def photos():
            nonlocal skipped
            known = {read_json(self.recipe_path(i)).get("sha256") for i in self.annotation_ids() if i.startswith("r")}
            for path in paths:
                digest = file_sha256(path)
                if digest in known:
                    skipped += 1
                    continue
                known.add(digest)
                image = read_image(path)
                yield image, self.import_mask(path, masks_dir, image.shape), {"source": "real", "file": path.name,
                                                                               "sha256": digest}

        with self.writing():  # no second import meanwhile: it would take the same ids and miss these contents
            ids, resized = self.add_photos(photos(), inversion)
        return ids, resized, skipped

    def add_photos(self, photos, inversion=None) -> tuple[list[str], int]:
        """Store real photos, ``photos`` (image uint8 [H, W, 3], its checked index mask or None, recipe) one at a
        time, as annotations brought to the generator resolution by the one photo rule
        (labelgen.imaging.fit_photo: the whole photo, stretched). `labelgen import` and the app's import both come
        here. All or nothing: every photo is fitted (GAN teachers: projected into the latent space,
        labelgen.inversion with ``inversion`` its InversionConfig; the recipe stores the latent and
        ``"inversion": {"steps", "psnr"}``) before the first is written, then all are written as one transaction
        (:meth:`_write_import`: a failed write or a kill leaves none or, once committed, every image with its mask).
        Returns (ids added, how many of them were resized)."""
        from labelgen.imaging import fit_photo
        from labelgen.inversion import invert_photo

        with self.writing():  # the ids stay free until written
            entries, resized = [], 0  # entries: (image, mask or None, recipe), checked, not yet written
            for image, mask, recipe in photos:
                resized += image.shape[:2] != self.resolution
                image, mask = fit_photo(image, self.resolution, mask)
                if not self.config.can_encode_images:  # a GAN teacher: the photo's latent (labelgen/inversion.py)
                    recipe = {**recipe, **invert_photo(self.generator(), image, inversion)}
                entries.append((image, mask, recipe))
            ids = [self.next_id("r", k) for k in range(len(entries))]
            if entries:
                self._write_import(ids, entries)
        return ids, resized

    def _write_import(self, ids: list[str], entries: list[tuple[np.ndarray, np.ndarray | None, dict]]) -> None:
        """Write an import as one transaction: every file into W/annotations/.import.staging/ (removed again when a
        write fails; a killed run's is removed by the next writer), then that folder renamed to .import.commit/
        (the commit point) and its files moved into place (:meth:`_commit_import`; a kill meanwhile is finished by
        the next writer)."""
        stage = self.annotations_dir / IMPORT_STAGING
        try:
            stage.mkdir(parents=True)
            for annotation_id, (image, mask, recipe) in zip(ids, entries):
                write_png(stage / f"{annotation_id}.png", image)
                if mask is not None:
                    write_png(stage / f"{annotation_id}.mask.png", mask, self.classes.palette)
                atomic_write_json(stage / f"{annotation_id}.json", recipe)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        os.replace(stage, self.annotations_dir / IMPORT_COMMIT)
        self._commit_import()

    def import_mask(self, image_path: Path, masks_dir: Path | None, image_shape: tuple[int, ...]) -> np.ndarray | None:
        """The checked index mask uint8 [H, W] of an image to import (<stem>.png or <stem>.mask.png in ``masks_dir``;
        `labelgen import --masks` and the app's import)."""
        if masks_dir is None:
            return None
        for candidate in (Path(masks_dir) / f"{image_path.stem}.png", Path(masks_dir) / f"{image_path.stem}.mask.png"):
            if candidate.is_file() and candidate != image_path:
                pixels = read_mask_pixels(candidate)
                mask = pixels if pixels.ndim == 2 else self.classes.colour_to_index(pixels, candidate)
                return check_mask(mask, image_shape, len(self.classes), candidate)
        return None

    # ---- annotation store ----
    def check_id(self, annotation_id: str) -> str:
        """Ids come from the browser too: only [A-Za-z0-9_-], so a path never leaves the workspace."""
        if not ANNOTATION_ID.match(annotation_id or ""):
            raise LabelgenError(f"bad annotation id {annotation_id!r}")
        return annotation_id

    def image_path(self, annotation_id: str) -> Path:
        return self.annotations_dir / f"{self.check_id(annotation_id)}.png"

    def recipe_path(self, annotation_id: str) -> Path:
        return self.annotations_dir / f"{self.check_id(annotation_id)}.json"

    def mask_path(self, annotation_id: str) -> Path:
        return self.annotations_dir / f"{self.check_id(annotation_id)}.mask.png"

    def annotation_ids(self) -> list[str]:
        if not self.annotations_dir.is_dir():
            return []
        return sorted(p.stem for p in self.annotations_dir.glob("*.json") if (p.with_suffix(".png")).is_file())

    def annotated_ids(self) -> list[str]:
        return [i for i in self.annotation_ids() if self.mask_path(i).is_file()]

    def read_annotation(self, annotation_id: str) -> tuple[np.ndarray, dict, np.ndarray | None]:
        """(image uint8 [H, W, 3], recipe, mask uint8 [H, W] or None)."""
        image, recipe = self.read_item(annotation_id)
        return image, recipe, self.read_mask(annotation_id, image.shape)

    def read_item(self, annotation_id: str) -> tuple[np.ndarray, dict]:
        """(image uint8 [H, W, 3], recipe) of an annotation: what its teacher features are computed from."""
        return read_image(self.image_path(annotation_id)), read_json(self.recipe_path(annotation_id))

    def read_mask(self, annotation_id: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        path = self.mask_path(annotation_id)
        if not path.is_file():
            return None
        pixels = read_mask_pixels(path)
        mask = pixels if pixels.ndim == 2 else self.classes.colour_to_index(pixels, path)
        if image_shape is not None:
            check_mask(mask, image_shape, len(self.classes), path)
        return mask

    def save_mask(self, annotation_id: str, mask: np.ndarray) -> Path:
        """Atomically write an index mask uint8 [H, W] (validated against the image and classes)."""
        image = read_image(self.image_path(annotation_id))
        check_mask(np.asarray(mask, dtype=np.uint8), image.shape, len(self.classes), self.mask_path(annotation_id))
        write_png(self.mask_path(annotation_id), np.asarray(mask, dtype=np.uint8), self.classes.palette)
        return self.mask_path(annotation_id)

    def next_id(self, prefix: str, offset: int = 0) -> str:
        """The next free annotation id with ``prefix`` ("g": generated, "r": real): g000001, g000002, ...
        (``offset``: the one that many after it, for a batch written at once)."""
        taken = {i for i in self.annotation_ids() if i.startswith(prefix)}
        n = 1 + max((int(i[1:]) for i in taken if i[1:].isdigit()), default=0)
        return f"{prefix}{n + offset:06d}"

    def add_annotation(self, image: np.ndarray, recipe: dict, annotation_id: str | None = None) -> str:
        """Store a new image + recipe; returns its id (``g000001`` for generated, ``r000001`` for real)."""
        with self.writing():  # the next free id stays free until written
            if annotation_id is None:
                annotation_id = self.next_id("r" if recipe.get("source") == "real" else "g")
            self.check_id(annotation_id)
            write_png(self.image_path(annotation_id), image)
            atomic_write_json(self.recipe_path(annotation_id), recipe)  # written last: marks the entry complete
        return annotation_id


# ---- generator loading ----
def generator_class_of(backend: str):
    """Backend name or opted-in plug-in -> the Generator subclass (labelgen.generators.generator_class)."""
    from labelgen.generators import generator_class

    return generator_class(backend)


def load_workspace_generator(backend: str, checkpoint: Path | None, options: dict[str, Any]):
    from labelgen.generators import from_checkpoint  # checks what every backend loaded (size, finite weights)

    try:
        generator = from_checkpoint(backend, checkpoint, **options)
    except LabelgenError:
        raise
    except Exception as e:  # a backend that let a loader error through: still one line
        raise LabelgenError(f"{checkpoint or backend}: cannot load the {backend} generator "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return generator.eval()


def create_workspace(root: Path | str, backend: str, class_names: list[str], checkpoint: Path | str | None = None,
                     head: dict[str, Any] | None = None, timesteps: list[int] | None = None,
                     feature_layers: list[int] | None = None,
                     generator_options: dict[str, Any] | None = None) -> Workspace:
    """``labelgen init``: load the generator once (a bad checkpoint is refused before anything is
    written), record its resolution and feature channels, write workspace.json. Where the chosen levels are kept
    (generator options, or the teacher's ``feature_layers``): ``Teacher.level_settings``."""
    from labelgen.generators.base import check_feature_layers

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise LabelgenError(f"{root}: exists and is not a folder")
    if (root / CONFIG_NAME).exists():
        raise LabelgenError(f"{root}: already a workspace")
    classes = ClassList.from_names([c for c in class_names if c.strip()])
    checkpoint_path = None if checkpoint is None else Path(checkpoint).resolve()
    if checkpoint_path is not None and not checkpoint_path.exists():
        raise LabelgenError(f"{checkpoint}: checkpoint not found")
    level_options, feature_layers = Teacher.level_settings(generator_class_of(backend), feature_layers, timesteps)
    generator_options = {**(generator_options or {}), **{k: v for k, v in level_options.items() if v is not None}}
    generator = load_workspace_generator(backend, checkpoint_path, generator_options)
    channels = [int(c) for c in generator.feature_channels]
    if feature_layers is not None:  # the teacher's levels (a generator without feature_layers): the one range check
        feature_layers = check_feature_layers(feature_layers, len(channels), backend)
    config = WorkspaceConfig(
        backend=backend, checkpoint=None if checkpoint_path is None else str(checkpoint_path),
        classes=classes.to_json()["classes"], resolution=[int(v) for v in generator.resolution],
        generator_options=generator_options, feature_layers=feature_layers,
        timesteps=list(timesteps) if timesteps else [50, 150, 250],
        head=dict(head or {"type": "pixel-mlp", "ensemble": 3}), feature_channels=channels,
        can_encode_images=bool(generator.can_encode_images))
    workspace = Workspace.create(root, config)
    workspace._generator = generator
    return workspace
