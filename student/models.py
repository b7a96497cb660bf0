"""Student networks (segmentation-models-pytorch) and the run-folder checkpoint format.

    RUN_DIR/student_config.json   arch, encoder, classes (names + colours), image size [H, W],
                                  normalisation, mode, training options (see :class:`StudentConfig`)
    RUN_DIR/model.safetensors     the student's weights (smp state dict; eval/predict/export read this)
                                  -- these two are :class:`Student`'s save_pretrained / from_pretrained pair
    RUN_DIR/regressor.safetensors feature-distillation regressor (feature modes only; not needed later)
    RUN_DIR/last.pt               training state for resume (see labelgen.student.train)
    RUN_DIR/best.safetensors      the weights that scored best on --val (metadata: step, miou)
    RUN_DIR/best.json             {"step", "miou", "val", "per_class"} of those weights

eval / predict / export / --init take ``best`` when it exists, else ``model`` (the last step);
``weights="best"|"last"`` picks explicitly.

Every file is written atomically (temp name beside it, then rename), so a kill never leaves a
half-written checkpoint behind.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import labelgen  # noqa: F401  (installs the torchvision shim before smp/timm import torchvision)
import torch
from torch import nn

from labelgen.data.classes import ClassList
from labelgen.errors import LabelgenError
from labelgen.pretrained import Pretrained

CONFIG_NAME = "student_config.json"
WEIGHTS_NAME = "model.safetensors"
REGRESSOR_NAME = "regressor.safetensors"
STATE_NAME = "last.pt"
BEST_NAME = "best.safetensors"
BEST_JSON = "best.json"
WEIGHT_CHOICES = ("best", "last")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What some smp architectures need beyond (encoder_name, encoder_weights, classes). The architectures
# themselves come from smp's own registry (:func:`architectures`), so every one it has is a student.
ARCH_OPTIONS: dict[str, dict[str, Any]] = {
    "dpt": {"dynamic_img_size": True},  # the ViT takes any size divisible by its patch, not only 224x224
}
ARCH_ENCODER_HINT = {"dpt": "a timm ViT encoder, e.g. --encoder tu-vit_tiny_patch16_224"}
# PAN's feature pyramid attention halves its stride-16 features three times: each side needs >= 8 cells
ARCH_MIN_SIZE = {"pan": 16 * 8}
# one-stride ViT encoders: no stride 4..32 pyramid for the feature regressor (feature-distill, dreamteacher)
NO_FEATURE_PYRAMID = ("dpt",)
# DreamTeacher's student family, a ConvNeXt encoder with UPerNet, as smp builds it (--arch upernet --encoder ...):
# timm's smallest ConvNeXt with LayerNorm through smp's universal timm encoder ("tu-"), random init unless
# --encoder-weights (nothing is downloaded); it has no stride-2 stage (a 0-channel placeholder, see feature_pyramid)
CONVNEXT_STUDENT = ("upernet", "tu-convnext_atto")


def architectures() -> dict[str, type[nn.Module]]:
    """smp's registry of architectures: name (unet, fpn, ..., segformer, dpt) -> model class."""
    import segmentation_models_pytorch as smp

    return dict(smp.MODEL_ARCHITECTURES_MAPPING)


def create_student(arch: str, encoder: str, num_classes: int, encoder_weights: str | None = None) -> nn.Module:
    """A smp segmentation network: images [N, 3, H, W] -> logits [N, num_classes, H, W].

    Random init by default (``encoder_weights=None``: nothing is downloaded)."""
    registry = architectures()
    key = arch.lower()
    if key not in registry:
        raise LabelgenError(f"unknown student architecture {arch!r} (one of {', '.join(registry)})")
    weights = None if encoder_weights in (None, "none", "") else encoder_weights
    try:
        return registry[key](encoder_name=encoder, encoder_weights=weights, classes=num_classes,
                             **ARCH_OPTIONS.get(key, {}))
    except (OSError, RuntimeError) as e:
        if weights is not None:  # a weights download that cannot happen here
            raise LabelgenError(f"encoder weights {encoder_weights!r} for {encoder!r} unavailable "
                                f"({type(e).__name__}); use --encoder-weights none") from None
        raise _build_error(key, encoder, e) from None  # timm: "Unknown model ..."
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # smp/timm on a name that does not fit
        raise _build_error(key, encoder, e) from None


def _build_error(arch: str, encoder: str, e: Exception) -> LabelgenError:
    hint = f" ({arch} needs {ARCH_ENCODER_HINT[arch]})" if arch in ARCH_ENCODER_HINT else ""
    return LabelgenError(f"cannot build {arch} with encoder {encoder!r}: {str(e).strip().splitlines()[0][:200]}{hint}")


def size_divisor(model: nn.Module) -> int:
    """The multiple a side must be: the encoder's output stride where smp's model says it needs that, else 1."""
    return model.encoder.output_stride if getattr(model, "requires_divisible_input_shape", True) else 1


def check_image_size(model: nn.Module, arch: str, image_size: tuple[int, int]) -> None:
    """Refuse, in one line, an input size ``arch`` cannot take: sides divisible by the encoder's
    output stride (where smp's model says it needs that) and at least ARCH_MIN_SIZE."""
    h, w = image_size
    divisor = size_divisor(model)
    smallest = ARCH_MIN_SIZE.get(arch.lower(), 1)
    if h % divisor or w % divisor or min(h, w) < smallest:
        need = [f"divisible by {divisor}"] if divisor > 1 else []
        need += [f"at least {smallest}"] if smallest > 1 else []
        raise LabelgenError(f"--image-size {h}x{w}: {arch} with this encoder needs sides {' and '.join(need)}")


def encoder_channels(model: nn.Module) -> list[int]:
    """Channels of each encoder output (smp: index 0 is the input itself, then strides 2, 4, ... 32)."""
    return list(model.encoder.out_channels)


@torch.no_grad()
def feature_pyramid(model: nn.Module, arch: str, image_size: tuple[int, int]) -> list[tuple[int, tuple[int, int]]]:
    """(channels, (h, w)) of the encoder outputs at strides 4, 8, 16, 32 for an input of ``image_size``: what the
    feature regressor reads, measured by one forward of a blank image (a timm encoder through smp, e.g. ConvNeXt,
    has no stride-2 stage: a 0-channel placeholder there). An encoder without that pyramid is one line."""
    h, w = image_size
    was_training = model.training
    model.eval()
    try:
        outputs = model.encoder(torch.zeros(1, 3, h, w, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    pyramid = [(int(f.shape[1]), (int(f.shape[-2]), int(f.shape[-1]))) for f in outputs[2:]]
    expected = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
    if [size for _, size in pyramid] != expected or any(c == 0 for c, _ in pyramid):
        raise LabelgenError(f"--arch {arch}: its encoder's outputs past the first two ({pyramid}) are not a stride "
                            f"4, 8, 16, 32 pyramid {expected}, which feature distillation regresses from")
    return pyramid


@dataclass
class StudentConfig:
    arch: str
    encoder: str
    classes: list[dict]  # [{"id", "name", "color"}] (ClassList.to_json()["classes"])
    image_size: list[int]  # [H, W] the network is trained at
    mode: str = "supervised"
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    train: dict[str, Any] = field(default_factory=dict)  # the training options (for the record)

    @property
    def class_list(self) -> ClassList:
        return ClassList.from_json({"classes": self.classes})

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Student(Pretrained):
    """A student network (``net``, an smp model) with what its run folder records (:class:`StudentConfig`'s
    fields): ``save_pretrained(run_dir)`` writes student_config.json + model.safetensors (the network's own smp
    state dict), ``Student.from_pretrained(run_dir, weights=...)`` reads them back."""

    config_name, weights_name, noun = CONFIG_NAME, WEIGHTS_NAME, "student"

    def __init__(self, arch: str, encoder: str, classes: list[dict], image_size: list[int], mode: str = "supervised",
                 mean: list[float] = IMAGENET_MEAN, std: list[float] = IMAGENET_STD, train: dict | None = None,
                 _net: nn.Module | None = None):
        """``_net``: the trained network (else a new one, random init)."""
        super().__init__()
        self.config["train"] = dict(train or {})
        self.net = _net if _net is not None else create_student(arch, encoder, len(classes))

    @property
    def student_config(self) -> StudentConfig:
        return StudentConfig(**self.config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def weights_owner(self) -> nn.Module:
        return self.net

    def describe(self) -> str:
        return f"{self.config['arch']}/{self.config['encoder']} {self.noun}"

    @classmethod
    def read_pretrained_config(cls, folder: Path) -> dict[str, Any]:
        return asdict(read_config(folder))

    @classmethod
    def build_pretrained(cls, folder: Path, weights: str | None = None) -> "Student":
        """The student of a run folder; ``weights``: which of its weights files (:func:`weights_file`)."""
        student = cls.from_config(cls.read_pretrained_config(folder), folder / CONFIG_NAME)
        student.load_weights(weights_file(folder, weights))
        return student.eval()


def read_config(run_dir: Path) -> StudentConfig:
    from labelgen.data.io import read_json

    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise LabelgenError(f"{run_dir}: not a student run folder (no {CONFIG_NAME})")
    try:
        config = StudentConfig(**read_json(path))
    except TypeError as e:
        raise LabelgenError(f"{path}: bad student config ({e})") from None
    from labelgen.imaging import size_problem

    size = config.image_size
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
        raise LabelgenError(f"{path}: image_size {size!r}: expected [height, width] in pixels")
    problem = size_problem((size[0], size[1]))  # eval, predict and export make images of this size
    if problem:
        raise LabelgenError(f"{path}: image_size {size[0]}x{size[1]}: {problem}")
    return config


def read_best(run_dir: Path | str) -> dict | None:
    """RUN_DIR/best.json ({"step", "miou", ...}) or None when absent or unreadable."""
    import json

    path = Path(run_dir) / BEST_JSON
    try:
        best = json.loads(path.read_text())
        return best if isinstance(best, dict) and {"step", "miou"} <= set(best) else None
    except (OSError, ValueError):
        return None


def weights_file(run_dir: Path | str, weights: str | None = None) -> Path:
    """The weights of a run folder: ``best`` (best.safetensors), ``last`` (model.safetensors) or
    None = best when it exists, else last."""
    run_dir = Path(run_dir)
    if weights not in (None, *WEIGHT_CHOICES):
        raise LabelgenError(f"--weights {weights!r}: one of {', '.join(WEIGHT_CHOICES)}")
    if weights == "best" and not (run_dir / BEST_NAME).is_file():
        raise LabelgenError(f"{run_dir}: no {BEST_NAME} (train with --val FOLDER to select one), or use --weights last")
    if weights == "best" or (weights is None and (run_dir / BEST_NAME).is_file()):
        return run_dir / BEST_NAME
    if not (run_dir / WEIGHTS_NAME).is_file():
        raise LabelgenError(f"{run_dir}: no {WEIGHTS_NAME} (training has not saved a checkpoint yet)")
    return run_dir / WEIGHTS_NAME


def describe_weights(path: Path) -> str:
    """'RUN/best.safetensors (step 40, val mIoU 0.8123)' or 'RUN/model.safetensors (last step)'."""
    if path.name != BEST_NAME:
        return f"{path} (last step)"
    best = read_best(path.parent)
    return f"{path} (step {best['step']}, val mIoU {best['miou']:.4f})" if best else str(path)


def load_matching(model: nn.Module, checkpoint: Path | str) -> dict[str, Any]:
    """Initialise ``model`` from a previous student (run folder: its best weights when it has them,
    else the last; or a .safetensors file): copy every tensor whose name and shape match.
    Returns {"loaded", "skipped" (shape differs), "missing", "path"}."""
    from labelgen.data.io import load_safetensors

    path = Path(checkpoint)
    if path.is_dir():
        path = path / (BEST_NAME if (path / BEST_NAME).is_file() else WEIGHTS_NAME)
    if not path.is_file():
        raise LabelgenError(f"{checkpoint}: no student checkpoint ({WEIGHTS_NAME}) to initialise from")
    source = load_safetensors(path)
    target = model.state_dict()
    loaded = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    skipped = sorted(k for k, v in source.items() if k in target and target[k].shape != v.shape)
    missing = sorted(k for k in target if k not in loaded)
    if not loaded:
        raise LabelgenError(f"{path}: no tensor matches the student's names and shapes (different encoder?)")
    model.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "skipped": skipped, "missing": missing, "path": str(path)}


def describe_init(report: dict[str, Any]) -> str:
    """'loaded 120 tensors (encoder 102, decoder 18); skipped 2 (shape), 0 left at random init'."""
    groups: dict[str, int] = {}
    for k in report["loaded"]:
        groups[k.split(".", 1)[0]] = groups.get(k.split(".", 1)[0], 0) + 1
    parts = ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
    return (f"loaded {len(report['loaded'])} tensors ({parts}); skipped {len(report['skipped'])} "
            f"(shape differs); {len(report['missing'])} left at random init")

