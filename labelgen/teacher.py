"""The teacher: the one way from an item to generator features and to a head's prediction.

    teacher = workspace.teacher()                       # generator + selected levels + trained head
    feats = teacher.features(recipes=[...], images=[...])   # selected levels, [N, C_i, h_i, w_i] each
    pred = teacher.predict(feats)                       # probabilities, mask, uncertainty, image scores
    out = teacher.sample(seeds)                         # new images + their features + recipes

An *item* is an image the teacher labels: a generated sample (its *recipe*: seed, truncation, latent, ...
plus its stored image) or a real photo (an image alone). Its features are, for every caller
(annotation features, synthesis, the app's predictions, distillation targets):

* teachers that encode images (diffusion: noise to t, one UNet pass): features of the stored image
  (uint8, resized to the generator resolution by the one resize rule, labelgen.imaging); a fresh
  sample's features are computed from its uint8-quantised pixels, so they equal those of its saved PNG;
* GAN teachers: recomputed from the recipe; a real photo from the latent its import stored
  (labelgen/inversion.py), one without a latent is refused.

Recipes reach the teacher in several dresses (an annotation's ``<id>.json`` with workspace keys, a
shard's meta with a ``recipe`` entry, a bare backend recipe); :func:`recipe_of` is the one place that
normalises them.

Heads: one trained head, or several (both head types trained, ``labelgen train-heads --type``): the teacher is
the one place where they are combined: ``predict`` averages the probabilities of every member of every head
(:func:`predict_heads`), and the uncertainty is the JS divergence over all those members.

Levels: the teacher owns their selection. A generator whose constructor takes ``feature_layers`` (and
``timesteps``: diffusion) computes only the chosen levels (:func:`level_options`; every built-in backend, and a
plug-in that takes them); of any other the teacher picks ``levels`` from all it computes. One mechanism for both
(:meth:`Teacher.level_settings`, :meth:`Teacher.with_levels`), one range check
(labelgen.generators.base.check_feature_layers). ``feature_info``: channels and stride of each selected level, from
the generator's declared ``feature_channels`` / ``feature_strides`` (no forward pass), as timm's FeatureInfo.

Capability: teachers that encode images (``can_encode_images``) compute features of real photos; anything that
needs it calls :meth:`Teacher.require_image_encoding` (:func:`require_image_encoding`: the one refusal).

Identities: ``generator_id`` = backend + a content hash of the checkpoint's weights (cached per file by
size and mtime) + a hash of the feature-affecting options; ``head_id`` = content hash of the saved head
(several heads: :func:`heads_identity` of their ids).
A head records the generator id and levels it was trained on; :func:`check_head` refuses a head trained
on other weights or levels (the command stops, telling the user to run ``labelgen train-heads``).

This module imports neither the workspace nor synthesis.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from labelgen.errors import LabelgenError
from labelgen.heads.uncertainty import TOP_FRACTION, image_scores, pixel_uncertainty, uncertainty_measure
from labelgen.imaging import fit_photo, images_to_tensor, mirror_image, quantize, resize_image

# keys the workspace / synthesis add around a backend recipe (provenance, not generator input)
PROVENANCE_KEYS = ("source", "generator", "file", "original_name", "from_synthetic", "inversion")
# recipe keys holding a latent (GAN inversion, labelgen/inversion.py): such a recipe needs no seed, and a real
# photo that carries one has a recipe
LATENT_KEYS = ("w", "z")
# generator options that change how new images are sampled or how fast, not the features of a given image (class,
# truncation and z-sampler defaults of new samples: every recipe carries its own)
SAMPLING_ONLY_OPTIONS = frozenset({"ddim_steps", "bf16", "fp16", "channels_last", "compile", "max_batch", "truncation",
                                   "truncation_psi", "truncation_cutoff", "noise_mode", "class_id", "class_idx",
                                   "z_sampler"})
HASH_CACHE_ENV = "LABELGEN_CACHE"


# ---------------------------------------------------------------- recipes
def recipe_of(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The backend recipe of an item, or None for a real image without a latent.

    Accepts an annotation recipe (``{"seed": 3, "source": "generated", "generator": ...}``; a real photo
    inverted into a GAN's latent space, ``{"source": "real", "w": ..., ...}``, keeps its latent), a shard
    sample's meta (``{"seed": ..., "recipe": {...}, "head": ...}``, or ``{"source_image": ...}`` for a
    pseudo-labelled photo) or a bare backend recipe."""
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("recipe"), dict):  # a shard sample's meta
        return recipe_of(item["recipe"])
    has_latent = any(item.get(k) is not None for k in LATENT_KEYS)
    if "source_image" in item or not (has_latent or ("seed" in item and item.get("source") != "real")):
        return None
    return {k: v for k, v in item.items() if k not in PROVENANCE_KEYS}


# ---------------------------------------------------------------- identities
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def _digest_cache_path() -> Path:
    root = os.environ.get(HASH_CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "labelgen")
    return Path(root) / "file_digests.json"


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes, cached by (absolute path, size, mtime): in memory and in a small JSON file
    under $LABELGEN_CACHE (default ~/.cache/labelgen), so a 300 MB checkpoint is hashed once, not per command."""
    from labelgen.data.io import atomic_write_json

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    cache_path = _digest_cache_path()
    disk: dict[str, Any] = {}
    try:
        disk = json.loads(cache_path.read_text())
        entry = disk.get(key[0])
        if isinstance(entry, dict) and entry.get("size") == key[1] and entry.get("mtime_ns") == key[2]:
            _DIGESTS[key] = str(entry["sha256"])
            return _DIGESTS[key]
    except (OSError, ValueError, KeyError):
        disk = {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _DIGEST_LOCK:
        _DIGESTS[key] = value
    disk = disk if isinstance(disk, dict) else {}
    disk[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": value}
    try:
        atomic_write_json(cache_path, disk)
    except (OSError, LabelgenError):  # a read-only home: the in-memory cache still serves this process
        pass
    return value


# files of a checkpoint folder that define the model (weights and configs); READMEs, sample grids, logs do not
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npz", ".json", ".yaml", ".yml")


def weights_digest(checkpoint: Path | str, side_files: Sequence[Path] = ()) -> str:
    """Content hash of a checkpoint: a file (with ``side_files``, what its loader reads beside it:
    ``Generator.side_files``), or a folder's model files (``MODEL_FILE_SUFFIXES``, by relative path, sorted; a
    training run's ``train/`` state is left out: it is not what the generator loads)."""
    path = Path(checkpoint)
    if path.is_file() and side_files:
        digest = hashlib.sha256(_file_digest(path).encode())
        for side in side_files:  # small files, hashed each time (no size/mtime cache to be fooled by an edit)
            digest.update(f"\0{Path(side).name}\0".encode() + hashlib.sha256(Path(side).read_bytes()).digest())
        return digest.hexdigest()
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        raise LabelgenError(f"{checkpoint}: checkpoint not found")
    digest = hashlib.sha256()
    files = (p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in MODEL_FILE_SUFFIXES and p.relative_to(path).parts[0] != "train")
    for file in sorted(files):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_digest(file)}\0".encode())
    return digest.hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """Content hash of a module's weights (for generators without a checkpoint file: built-in defaults)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 1-d: 0-dim tensors (counters) too
        digest.update(f"{flat.dtype}{list(tensor.shape)}".encode() + flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def generator_identity(backend: str, weights: str, options: dict[str, Any], timesteps: Sequence[int] | None = None
                       ) -> str:
    """``backend:<weights hash 12>:<feature options hash 8>``. Sampling-only options (DDIM steps, bf16, ...)
    are left out: they do not change the features of a given image, so heads stay valid."""
    feature_options = {k: v for k, v in options.items() if k not in SAMPLING_ONLY_OPTIONS}
    opts = json.dumps([feature_options, list(timesteps or [])], sort_keys=True)
    return f"{backend}:{weights[:12]}:{hashlib.sha256(opts.encode()).hexdigest()[:8]}"


def heads_identity(head_ids: Sequence[str]) -> str:
    """The identity of the heads a teacher combines: one head's own id; several: 12 hex digits of a hash of
    their ids in order (so a synthesis made with both heads is not taken for one made with either alone)."""
    ids = [str(i) for i in head_ids]
    if len(ids) == 1:
        return ids[0]
    return hashlib.sha256("+".join(ids).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- predictions
@dataclass
class ImagePrediction:
    """One image's prediction, as numpy arrays (what a review screen or a script shows)."""

    mask: np.ndarray  # uint8 [H, W]: argmax of the ensemble-mean probabilities
    probs: np.ndarray  # float32 [C, H, W]: ensemble-mean probabilities
    uncertainty: np.ndarray  # float32 [H, W]: JS divergence (K > 1) or entropy (K = 1), nats
    score: float  # image score: mean of the top 10 % pixel uncertainties


@dataclass
class Prediction:
    """A batch's prediction (tensors on the teacher's device); ``prediction[k]`` is image k as numpy."""

    member_probs: torch.Tensor  # [N, K, C, H, W] per ensemble member
    probs: torch.Tensor  # [N, C, H, W] ensemble mean
    mask: torch.Tensor  # uint8 [N, H, W]
    uncertainty: torch.Tensor  # [N, H, W] nats
    scores: torch.Tensor  # [N]
    measure: str  # "js-divergence" | "entropy"

    def __len__(self) -> int:
        return self.probs.shape[0]

    def __getitem__(self, k: int) -> ImagePrediction:
        return ImagePrediction(self.mask[k].cpu().numpy(), self.probs[k].float().cpu().numpy(),
                               self.uncertainty[k].float().cpu().numpy(), float(self.scores[k]))


@dataclass(frozen=True)
class FeatureLevel:
    """One selected feature level (timm's FeatureInfo entry): ``num_chs`` channels at ``reduction`` image pixels per
    feature pixel, so ``size`` = the generator resolution / reduction; ``index`` into the generator's levels."""

    index: int
    num_chs: int
    reduction: int | float
    size: tuple[int, int]  # (h, w) at the teacher's resolution

    @property
    def module(self) -> str:
        return f"level{self.index}"


# ---------------------------------------------------------------- capabilities and level selection
LEVEL_OPTIONS = ("feature_layers", "timesteps")  # constructor options by which a generator computes only chosen levels


def require_image_encoding(generator, what: str) -> None:
    """Refuse ``what`` (an option or a step, e.g. "--from-images") unless ``generator`` (a Generator or its class)
    computes features of given images (diffusion teachers): the one refusal of a teacher that cannot."""
    if not generator.can_encode_images:
        raise LabelgenError(f"{what} needs features of real images, which the {generator.backend} teacher cannot "
                            "compute (it computes features from generator recipes); use a diffusion teacher (ddpm, "
                            "adm, stable-diffusion)")


def level_options(generator_class) -> tuple[str, ...]:
    """Which of LEVEL_OPTIONS a generator class's constructor takes: with ``feature_layers`` it computes only the
    chosen blocks (with ``timesteps`` only those timesteps); without, it computes all its levels and the teacher
    picks. The same question for built-in backends and plug-ins."""
    import inspect

    parameters = inspect.signature(generator_class.__init__).parameters
    return tuple(name for name in LEVEL_OPTIONS if name in parameters)


@dataclass
class Sample:
    images: torch.Tensor  # [N, 3, H, W] in [-1, 1], uint8-exact for teachers that encode images
    features: list[torch.Tensor]  # selected levels [N, C_i, h_i, w_i]
    recipes: list[dict[str, Any]]  # per image: what recomputes it


# ---------------------------------------------------------------- the teacher
class Teacher:
    """A generator, the feature levels a head reads, and (optionally) the trained head.

    ``levels``: indices into the generator's feature list (None = all; checked by the generators' one range check).
    ``head``: a TaskHead whose ``in_channels`` are the selected levels' channels, or a list of them (several head
    types, combined by ``predict``); None: features only, e.g. feature distillation. ``classes``: the ClassList the
    heads predict (names in what the stages write; default class0, class1, ...). Built without a workspace as
    ``Teacher(generator, levels, head)``; a workspace builds its own with ``Workspace.teacher()``."""

    def __init__(self, generator, levels: Sequence[int] | None = None, head=None, generator_id: str | None = None,
                 head_id: str | None = None, classes=None):
        from labelgen.generators.base import check_feature_layers

        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.levels = check_feature_layers(levels, len(generator.feature_channels), generator.backend)
        heads = [] if head is None else list(head) if isinstance(head, (list, tuple)) else [head]
        self.heads = [h.eval() for h in heads]
        for h in self.heads:
            if list(h.in_channels) != self.channels:
                raise LabelgenError(f"the {h.head_type} head reads channels {list(h.in_channels)}, the selected "
                                    f"generator levels have {self.channels}: run `labelgen train-heads` again")
        if len({(h.num_classes, tuple(h.output_size)) for h in self.heads}) > 1:
            raise LabelgenError("the heads predict different class counts or sizes: "
                                + ", ".join(f"{h.head_type} {h.num_classes} classes at {h.output_size}" for h in self.heads))
        self.generator_id = generator_id or f"{generator.backend}:{state_digest(generator)[:12]}"
        self.head_id = head_id
        self._classes = classes

    # ---- description ----
    @property
    def channels(self) -> list[int]:
        """C_i of each selected level."""
        return [int(self.generator.feature_channels[i]) for i in self.levels]

    @property
    def resolution(self) -> tuple[int, int]:
        h, w = self.generator.resolution
        return int(h), int(w)

    @property
    def feature_info(self) -> list[FeatureLevel]:
        """Channels, stride and size of each selected level, from the generator's declared ``feature_channels`` and
        ``feature_strides`` (its architecture; nothing is run), as timm's FeatureInfo."""
        strides = list(self.generator.feature_strides)
        h, w = self.resolution
        info = []
        for i in self.levels:
            stride = strides[i]
            info.append(FeatureLevel(i, int(self.generator.feature_channels[i]), stride,
                                     (math.ceil(h / stride), math.ceil(w / stride))))
        return info

    @property
    def classes(self):
        """The ClassList the heads predict (the workspace's; without one: class0, class1, ...)."""
        if self._classes is None:
            from labelgen.data.classes import ClassList

            self._classes = ClassList.from_names([f"class{i}" for i in range(self.num_classes)])
        return self._classes

    @property
    def can_encode_images(self) -> bool:
        return bool(self.generator.can_encode_images)

    def require_image_encoding(self, what: str) -> None:
        """Refuse ``what`` unless this teacher computes features of real images (:func:`require_image_encoding`)."""
        require_image_encoding(self.generator, what)

    def require_recipes(self, items: Sequence[dict | None], what: str) -> None:
        """Refuse ``what`` when one of ``items`` (recipes, shard metas) has no generator recipe and this teacher
        computes features from recipes (checked before any work, not at the item)."""
        if any(recipe_of(item) is None for item in items):
            self.require_image_encoding(what)

    # ---- level selection (module docstring) ----
    @property
    def timesteps(self) -> tuple[int, ...]:
        """The diffusion timesteps the generator computes features at (() for a generator without that option)."""
        if "timesteps" not in level_options(type(self.generator)):
            return ()
        chosen = getattr(self.generator, "timesteps", None) or self.generator.config.get("timesteps") or ()
        return tuple(int(t) for t in chosen)

    @property
    def blocks(self) -> list[int] | None:
        """The generator blocks this teacher reads: the generator's ``feature_layers`` option where it takes one
        (None: the backend's default), else the teacher's levels."""
        if "feature_layers" in level_options(type(self.generator)):
            chosen = self.generator.config.get("feature_layers")
            return None if chosen is None else [int(b) for b in chosen]
        return list(self.levels)

    @staticmethod
    def level_settings(generator_class, blocks: Sequence[int] | None, timesteps: Sequence[int] | None = None
                       ) -> tuple[dict[str, Any], list[int] | None]:
        """Where a choice of blocks (None: all) and timesteps (None: the generator's) is kept: (generator options,
        teacher levels). A generator that takes ``feature_layers`` gets the blocks as that option (it then computes
        only those; teacher levels None = all it computes), any other computes all and the teacher picks."""
        takes = level_options(generator_class)
        options: dict[str, Any] = {}
        if "feature_layers" in takes:
            options["feature_layers"] = None if blocks is None else [int(b) for b in blocks]
            blocks = None
        if "timesteps" in takes and timesteps:
            options["timesteps"] = [int(t) for t in timesteps]
        return options, None if blocks is None else [int(b) for b in blocks]

    def with_levels(self, blocks: Sequence[int] | None = None, timesteps: Sequence[int] | None = None) -> "Teacher":
        """A features-only teacher on the same weights reading ``blocks`` (None: all) at ``timesteps`` (None: these)
        (:meth:`level_settings`), e.g. every candidate level of a feature sweep."""
        options, levels = self.level_settings(type(self.generator), blocks, timesteps)
        generator = self.generator.with_options(**options) if options else self.generator
        return Teacher(generator, levels, classes=self._classes)

    @property
    def device(self) -> torch.device:
        from labelgen.generators.base import module_device

        return module_device(self.generator)

    @property
    def head(self):
        """The first (primary) head, None without heads."""
        return self.heads[0] if self.heads else None

    @property
    def head_type(self) -> str:
        """The head type, or the types combined: ``pixel-mlp+conv``."""
        self._need_head()
        return "+".join(h.head_type for h in self.heads)

    @property
    def ensemble(self) -> int:
        """Members K over all heads (what the ensemble mean and the uncertainty run over)."""
        self._need_head()
        return sum(int(h.ensemble) for h in self.heads)

    @property
    def num_classes(self) -> int:
        self._need_head()
        return int(self.heads[0].num_classes)

    @property
    def uncertainty_measure(self) -> str:
        return uncertainty_measure(self.ensemble)

    def to(self, device) -> "Teacher":
        self.generator.to(device)
        for h in self.heads:
            h.to(device)
        return self

    # ---- items -> features ----
    def select(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The selected levels of a full generator feature list."""
        return [features[i] for i in self.levels]

    @torch.no_grad()
    def features(self, recipes: Sequence[dict | None] | None = None, images=None, seed: int | None = None
                 ) -> list[torch.Tensor]:
        """Selected features of N items, float32 on the teacher's device, [N, C_i, h_i, w_i] per level.

        ``recipes``: per item an annotation recipe / shard meta / backend recipe (None or a real-image
        entry for photos); ``images``: per item the image, uint8 [H, W, 3] arrays (any size: resized to
        the generator resolution) or a float tensor [N, 3, H, W] in [-1, 1]. Teachers that encode images
        use the images; GAN teachers the recipes (see the module docstring). ``seed``: the noise seed of
        image-encoding teachers (default: the generator's own)."""
        if images is not None and self.can_encode_images:
            x = self._image_batch(images)  # [N, 3, H, W] in [-1, 1]
            kwargs = {} if seed is None else {"seed": seed}
            return self._place(self.select(self.generator.features_of_images(x, **kwargs)))
        if recipes is None:
            self.require_image_encoding("features of images without their generator recipes")
            raise LabelgenError("Teacher.features: give the items' recipes or images")
        backend_recipes = [recipe_of(r) for r in recipes]
        if any(r is None for r in backend_recipes):
            self.require_image_encoding("a real photo without a latent (`labelgen import` stores one for dcgan, "
                                        "stylegan2)")
            raise LabelgenError("Teacher.features: a real photo needs its image (images=...)")
        return self._place(self.select(self.generator.features_from_recipes(backend_recipes).features))

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], **options) -> Sample:
        """New images for ``seeds`` with their selected features and recipes (deterministic per seed)."""
        out = self.generator.sample(list(seeds), **options)
        recipes = [dict(out.recipes[k]) if k < len(out.recipes) else {} for k in range(len(seeds))]
        for recipe, seed in zip(recipes, seeds):
            recipe.setdefault("seed", int(seed))
        images, features = out.images.float(), out.features
        if self.can_encode_images and not torch.equal(quantize(images), images):
            images = quantize(images)  # the pixels a saved PNG holds (built-in diffusion backends already are)
            features = self.generator.features_of_images(images)
        return Sample(images, self._place(self.select(features)), recipes)

    def _image_batch(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            assert images.ndim == 4 and images.shape[1] == 3, tuple(images.shape)
            x = images.float()
            if tuple(x.shape[-2:]) != self.resolution:
                x = resize_image(x, self.resolution)
            return x.to(self.device)
        arrays = [np.asarray(a, dtype=np.uint8) for a in images]
        for a in arrays:
            if a.ndim != 3 or a.shape[2] != 3:
                raise LabelgenError(f"images must be RGB uint8 [H, W, 3], got shape {list(a.shape)}")
        arrays = [fit_photo(a, self.resolution)[0] for a in arrays]  # the photo rule
        return images_to_tensor(np.stack(arrays)).to(self.device)

    def _place(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        device = self.device
        return [f.detach().to(device=device, dtype=torch.float32) for f in features]

    # ---- features -> prediction ----
    def _need_head(self) -> None:
        if not self.heads:
            raise LabelgenError("this teacher has no trained head (run `labelgen train-heads`)")

    def predict(self, features: list[torch.Tensor], top_fraction: float = TOP_FRACTION,
                flipped: list[torch.Tensor] | None = None) -> Prediction:
        """The heads' prediction for a batch of selected features (``features`` output): :func:`predict_heads`.
        ``flipped``: the features of the horizontally flipped images (test-time augmentation)."""
        self._need_head()
        return predict_heads(self.heads, features, top_fraction, flipped)

    def flipped_features(self, images, seed: int | None = None) -> list[torch.Tensor]:
        """Features of the horizontally mirrored images (image-encoding teachers: flip test-time augmentation);
        ``seed``: as in :meth:`features`."""
        self.require_image_encoding("flip (test-time augmentation, --tta, --augment flip)")
        if isinstance(images, torch.Tensor):
            return self.features(images=images.flip(-1), seed=seed)
        return self.features(images=[mirror_image(a) for a in images], seed=seed)

    def label(self, recipes: Sequence[dict | None] | None = None, images=None, flip: bool = False,
              top_fraction: float = TOP_FRACTION) -> Prediction:
        """``predict(features(recipes, images))``; ``flip``: with horizontal-flip test-time augmentation."""
        return self.predict(self.features(recipes, images), top_fraction,
                            self.flipped_features(images) if flip else None)


@torch.no_grad()
def predict_heads(heads: Sequence, features: list[torch.Tensor], top_fraction: float = TOP_FRACTION,
                  flipped: list[torch.Tensor] | None = None) -> Prediction:
    """The one way from features to a prediction (``Teacher.predict``; head validation in heads.train too).

    Each head's members are averaged, then the heads with equal weight (a 1-member conv head counts as much
    as a 3-member pixel MLP); the uncertainty is the JS divergence over every member of every head, stacked
    [N, sum K, C, H, W] (entropy for a single member). ``flipped``: each
    member's probabilities are the mean of its prediction and the flipped-back prediction of the mirror image."""
    members = []
    for head in heads:
        probs = head.predict_proba(features)  # [N, K, C, H, W]
        if flipped is not None:
            probs = (probs + head.predict_proba(flipped).flip(-1)) / 2
        members.append(probs)
    member_probs = members[0] if len(members) == 1 else torch.cat(members, dim=1)  # [N, K_total, C, H, W]
    probs = torch.stack([m.mean(dim=1) for m in members]).mean(dim=0)  # [N, C, H, W], heads weighted equally
    uncertainty = pixel_uncertainty(member_probs)  # [N, H, W]
    return Prediction(member_probs, probs, probs.argmax(dim=1).to(torch.uint8), uncertainty,
                      image_scores(uncertainty, top_fraction), uncertainty_measure(member_probs.shape[1]))


def check_head(head_meta: dict[str, Any], generator_id: str, levels: list[int], heads_dir: Path | str) -> None:
    """Refuse a head trained on other generator weights/options or other feature levels (one line)."""
    trained_on = head_meta.get("generator")
    if trained_on != generator_id:
        raise LabelgenError(f"{heads_dir}: the head was trained on generator {trained_on}, the workspace's generator "
                            f"is now {generator_id} (its weights or feature options changed): run `labelgen "
                            "train-heads` again")
    trained_levels = head_meta.get("feature_layers")
    if trained_levels is not None and list(trained_levels) != list(levels):
        raise LabelgenError(f"{heads_dir}: the head was trained on feature levels {trained_levels}, the workspace "
                            f"selects {list(levels)}: run `labelgen train-heads` again")
