"""``labelgen train-generator --init PATH|default``: start a run from a generator that exists instead of from noise.

A generator trained for minutes from scratch gives weak features; one trained elsewhere, even on another domain,
gives better ones, and fine-tuning it on the user's photos keeps what it learnt. What each trainer starts from:

    ddpm       ``default``: the embedded CCP DDPM (labelgen/default_teacher/generator); a diffusers DDPM folder
               (DDPMPipeline layout: unet/ + scheduler/, what ``train-generator --backend ddpm`` exports); a
               guided-diffusion ADM checkpoint (.pt / .safetensors with its model flags beside it, or a saved adm
               folder), trained as the ADM network it is and exported as an adm generator folder
    stylegan2  an output folder of the stylegan2 trainer (or its train/checkpoint.pt): G and G_ema start from its
               G_ema, D from its D

The init's weights are the starting point of both the model and its EMA; the optimiser, step count and learning-
rate warm-up start afresh. The init decides the architecture (its channels, blocks, attention and noise schedule;
an explicitly given --channels etc. that differs is refused). A UNet is fully convolutional (its attention has no
positional table), so a DDPM trains at another resolution than the init's when the resolution is divisible by the
UNet's downsampling factor 2^(levels - 1): the config's sample_size (ADM: image_size, attention_resolutions kept at
the same downsampling) becomes the run's and the weights load by name. What cannot work is refused in one line naming
the file and the reason: a resolution not divisible, a non-square resolution for ADM, a UNet that does not map 3 to
3 channels, another backend's generator, a StyleGAN2 of another resolution.

The run records its init (``default`` or the absolute path) in its checkpoint's config, and a resumed run must agree
on it (:func:`labelgen.training.common.start_or_resume`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelgen.errors import LabelgenError

DEFAULT_INIT = "default"
BETA_NAMES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}  # diffusers' beta_schedule -> the trainer's name


def init_source(value: str | Path | None) -> str | None:
    """What a run records as its init: ``default``, or the absolute path (None: from noise)."""
    if value is None or str(value) == "":
        return None
    if str(value) == DEFAULT_INIT:
        return DEFAULT_INIT
    return str(Path(value).expanduser().resolve())


def init_path(source: str) -> Path:
    """The file or folder an init source names (``default``: the embedded generator); one line when missing."""
    from labelgen.default_teacher import DEFAULT_GENERATOR_DIR

    path = DEFAULT_GENERATOR_DIR if source == DEFAULT_INIT else Path(source)
    if not path.exists():
        raise LabelgenError(f"--init {path}: not found")
    return path


def _saved_backend(path: Path) -> str | None:
    """The backend a generator folder's generator_config.json names (None: none there)."""
    from labelgen.data.io import read_json
    from labelgen.generators.base import CONFIG_NAME

    if not (path.is_dir() and (path / CONFIG_NAME).is_file()):
        return None
    config = read_json(path / CONFIG_NAME)
    return str(config.get("backend")) if isinstance(config, dict) and config.get("backend") else None


# ---------------------------------------------------------------- what the DDPM trainer trains
def model_eps(output) -> torch.Tensor:
    """The predicted noise in a denoiser's output: a diffusers UNet's ``.sample``; an ADM UNet's first 3 channels
    (with learn_sigma it has 3 more, the variance DDIM does not use: they are not trained)."""
    return output.sample if hasattr(output, "sample") else output[:, :3]


class Denoiser:
    """The network the DDPM trainer trains (x_t, t -> eps) and what goes with it: its noise schedule, its export,
    its sample grids and the Generator (sharing the network) that computes its features. ``spec``: JSON-able, what
    rebuilds the architecture (kept in a run's checkpoint)."""

    kind = ""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> "Denoiser":
        kinds = {cls.kind: cls for cls in (DiffusersDenoiser, ADMDenoiser)}
        if not isinstance(spec, dict) or spec.get("kind") not in kinds:
            raise LabelgenError(f"unknown network in the run's checkpoint: {spec!r:.80}")
        return kinds[spec["kind"]](spec)

    def build(self) -> nn.Module:
        raise NotImplementedError

    def alphas_cumprod(self) -> torch.Tensor:
        raise NotImplementedError

    def arch(self) -> dict[str, Any]:
        """The trainer's architecture settings this network has (channels, layers_per_block, attention,
        beta_schedule, num_train_timesteps)."""
        raise NotImplementedError

    def at(self, resolution: tuple[int, int], path: Path) -> "Denoiser":
        """The same network at ``resolution`` (H, W); one line naming ``path`` where it cannot be."""
        raise NotImplementedError

    def generator(self, module: nn.Module, **options):
        """A Generator on ``module`` (shared, not copied; speed options off, so ``module`` stays as it is)."""
        raise NotImplementedError

    def export(self, module: nn.Module, out: Path, fp16: bool = False) -> None:
        raise NotImplementedError

    def exported(self, out: Path) -> bool:
        raise NotImplementedError

    def grid(self, module: nn.Module, n: int, steps: int, seed: int, device: torch.device) -> torch.Tensor:
        """``n`` DDIM samples [-1, 1] of ``module`` (the sample grids)."""
        return self.generator(module).sample(list(range(seed, seed + n)), ddim_steps=steps).images


def _divisible(path: Path, resolution: tuple[int, int], levels: int) -> None:
    h, w = resolution
    factor = 2 ** (levels - 1)
    if h % factor or w % factor:
        raise LabelgenError(f"--init {path}: its UNet downsamples {levels - 1} times, so the resolution must be "
                            f"divisible by {factor}; {h}x{w} (HxW) is not (pass --resolution, e.g. "
                            f"{max(factor, h // factor * factor)}x{max(factor, w // factor * factor)})")


class DiffusersDenoiser(Denoiser):
    """A diffusers UNet2DModel + DDPMScheduler (``spec``: {"kind", "unet": config, "scheduler": config})."""

    kind = "diffusers"

    def __init__(self, spec: dict[str, Any], scheduler=None):
        super().__init__(spec)
        self._scheduler = scheduler

    @classmethod
    def of(cls, unet, scheduler) -> "DiffusersDenoiser":
        from labelgen.generators.diffusion import plain_config

        return cls({"kind": cls.kind, "unet": plain_config(unet.config), "scheduler": plain_config(scheduler.config)},
                   scheduler)

    @property
    def scheduler(self):
        from diffusers import DDPMScheduler

        if self._scheduler is None:
            self._scheduler = DDPMScheduler.from_config(self.spec["scheduler"])
        return self._scheduler

    def build(self) -> nn.Module:
        from diffusers import UNet2DModel

        return UNet2DModel.from_config(dict(self.spec["unet"]))

    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    def arch(self) -> dict[str, Any]:
        unet, scheduler = self.spec["unet"], self.scheduler.config
        return {"channels": list(unet["block_out_channels"]), "layers_per_block": int(unet["layers_per_block"]),
                "attention": bool(unet.get("add_attention", True)),
                "beta_schedule": BETA_NAMES.get(scheduler.beta_schedule, scheduler.beta_schedule),
                "num_train_timesteps": int(scheduler.num_train_timesteps)}

    def at(self, resolution: tuple[int, int], path: Path) -> "DiffusersDenoiser":
        unet = self.spec["unet"]
        _divisible(path, resolution, len(unet["down_block_types"]))
        return DiffusersDenoiser({**self.spec, "unet": {**unet, "sample_size": [int(v) for v in resolution]}},
                                 self._scheduler)

    def generator(self, module: nn.Module, **options):
        from labelgen.generators.ddpm import DDPMGenerator
        from labelgen.generators.diffusion import plain_config

        return DDPMGenerator(unet_config=plain_config(module.config), scheduler_config=self.spec["scheduler"],
                             _unet=module, bf16=False, channels_last=False, compile=False, **options)

    def export(self, module: nn.Module, out: Path, fp16: bool = False) -> None:
        from labelgen.training.train_generator import export_pipeline

        export_pipeline(module, self.scheduler, out, fp16=fp16)

    def exported(self, out: Path) -> bool:
        return (out / "unet").is_dir()

    def grid(self, module: nn.Module, n: int, steps: int, seed: int, device: torch.device) -> torch.Tensor:
        from labelgen.training.train_generator import ddim_sample

        return ddim_sample(module, self.scheduler, n, steps, seed, device)


class ADMDenoiser(Denoiser):
    """guided-diffusion's ADM UNet (labelgen.generators.adm; ``spec``: {"kind", "flags": its model flags})."""

    kind = "adm"

    def build(self) -> nn.Module:
        from labelgen.generators.adm import ADMUNet

        return ADMUNet(self.spec["flags"])

    def alphas_cumprod(self) -> torch.Tensor:
        from labelgen.generators.adm import alphas_cumprod

        return torch.from_numpy(alphas_cumprod(self.spec["flags"])).float()

    def arch(self) -> dict[str, Any]:
        flags = self.spec["flags"]
        return {"channels": [int(m * flags["num_channels"]) for m in flags["channel_mult"]],
                "layers_per_block": int(flags["num_res_blocks"]), "attention": True,
                "beta_schedule": str(flags["noise_schedule"]), "num_train_timesteps": int(flags["diffusion_steps"])}

    def at(self, resolution: tuple[int, int], path: Path) -> "ADMDenoiser":
        from labelgen.generators.adm import normalize_flags

        flags = self.spec["flags"]
        h, w = (int(v) for v in resolution)
        if h != w:
            raise LabelgenError(f"--init {path}: an ADM UNet makes square images; {h}x{w} (HxW) is not (pass "
                                f"--resolution {min(h, w)}x{min(h, w)})")
        _divisible(path, (h, w), len(flags["channel_mult"]))
        old = int(flags["image_size"])
        # attention sits where the image is downsampled by old // r: the same downsampling at the new size
        downsampling = [old // int(r) for r in flags["attention_resolutions"]]
        return ADMDenoiser({**self.spec, "flags": normalize_flags(
            {**flags, "image_size": h, "channel_mult": list(flags["channel_mult"]),
             "attention_resolutions": [h // d for d in downsampling if h % d == 0]})})

    def generator(self, module: nn.Module, **options):
        from labelgen.generators.adm import ADMGenerator

        with torch.device("meta"):  # its own UNet is replaced by ``module``: nothing allocated for it
            generator = ADMGenerator(self.spec["flags"], fp16=False, bf16=False, channels_last=False, compile=False,
                                     **options)
        generator.unet = module
        return generator

    def export(self, module: nn.Module, out: Path, fp16: bool = False) -> None:
        """OUT/generator_config.json + generator.safetensors: an adm generator folder (labelgen init --generator adm
        --checkpoint OUT)."""
        cpu = copy.deepcopy(module).to("cpu", torch.float16 if fp16 else torch.float32)
        self.generator(cpu).save_pretrained(out)

    def exported(self, out: Path) -> bool:
        from labelgen.generators.base import WEIGHTS_NAME

        return (out / WEIGHTS_NAME).is_file()


def load_ddpm_init(source: str, resolution: tuple[int, int]) -> tuple[Denoiser, dict[str, torch.Tensor]]:
    """(the network at ``resolution``, its weights by name) of a DDPM trainer's init (module docstring)."""
    path = init_path(source)
    backend = _saved_backend(path)
    if backend not in (None, "ddpm", "adm"):
        raise LabelgenError(f"--init {path}: holds a {backend} generator; the ddpm trainer starts from a DDPM folder, "
                            f"`default` or an ADM checkpoint (a {backend} run: --backend {backend})")
    try:
        if backend == "adm" or path.is_file():
            denoiser, state = _adm_init(path)
        elif (path / "unet").is_dir():
            from labelgen.data.io import read_json
            from labelgen.generators.ddpm import DDPMGenerator
            from labelgen.generators.diffusion import plain_config

            unet = read_json(path / "unet" / "config.json")
            if isinstance(unet, dict) and (unet.get("in_channels"), unet.get("out_channels")) != (3, 3):
                raise LabelgenError(f"--init {path / 'unet' / 'config.json'}: a UNet of {unet.get('in_channels')} to "
                                    f"{unet.get('out_channels')} channels, not 3 to 3 (an RGB pixel-space DDPM)")
            generator = DDPMGenerator.from_pretrained(path)
            denoiser = DiffusersDenoiser({"kind": DiffusersDenoiser.kind, "unet": plain_config(generator.unet.config),
                                          "scheduler": dict(generator.scheduler_config)})
            state = generator.unet.state_dict()
        else:
            raise LabelgenError(f"--init {path}: not a generator the ddpm trainer starts from (a DDPM folder with "
                                "unet/ + scheduler/, `default`, or an ADM checkpoint with its model flags)")
    except LabelgenError as e:
        message = str(e)
        raise LabelgenError(message if message.startswith("--init") else f"--init: {message}") from None
    return denoiser.at(resolution, path), state


def _adm_init(path: Path) -> tuple[ADMDenoiser, dict[str, torch.Tensor]]:
    from labelgen.generators.adm import ADMGenerator, flags_beside

    if path.is_file() and flags_beside(path) is None:
        raise LabelgenError(f"--init {path}: an ADM checkpoint needs its model flags beside it ({path.stem}.json or "
                            "model_flags.json, guided-diffusion flag names)")
    generator = ADMGenerator.from_checkpoint(path)
    return ADMDenoiser({"kind": ADMDenoiser.kind, "flags": dict(generator.flags)}), generator.unet.state_dict()


def take_architecture(run: dict[str, Any], requested, arch: dict[str, Any]) -> None:
    """The init's architecture settings ``arch`` into a new run's settings ``run``; one that the trainer's config
    ``requested`` gives (not None) and that differs is refused in one line."""
    from labelgen.training.common import _norm

    for key, value in arch.items():
        given = getattr(requested, key)
        if given is not None and _norm(given) != _norm(value):
            raise LabelgenError(f"--{key.replace('_', '-')} {given}: the --init generator has {value}; leave it out "
                                "(the init decides the architecture)")
        run[key] = value


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """The init's weights into ``module`` by name (labelgen.pretrained's one line when they do not fit)."""
    from labelgen.pretrained import fit_weights

    fit_weights(module, state, f"--init {init_path(source)}", what)


# ---------------------------------------------------------------- stylegan2
SG2_ARCH = ("max_channels", "z_dim", "mapping_layers")


def load_stylegan2_init(source: str, resolution: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the init run's architecture settings, {"G": G_ema's weights, "D": D's weights}) of a stylegan2 trainer's
    output folder or its train/checkpoint.pt; another resolution is refused (a StyleGAN2 has one block per
    power of two of its side)."""
    from labelgen.run import load_resume
    from labelgen.training.common import CHECKPOINT_NAME, TRAIN_DIR

    path = init_path(source)
    checkpoint = path / TRAIN_DIR / CHECKPOINT_NAME if path.is_dir() else path
    if not checkpoint.is_file():
        backend = _saved_backend(path)
        what = f"holds a {backend} generator without" if backend else "has no"
        raise LabelgenError(f"--init {path}: {what} {TRAIN_DIR}/{CHECKPOINT_NAME}; the stylegan2 trainer starts from "
                            "an output folder of `train-generator --backend stylegan2` (G, G_ema and D)")
    try:
        saved = load_resume(checkpoint, "stylegan2")
    except LabelgenError as e:
        raise LabelgenError(f"--init: {e}") from None
    config = saved["config"]
    if tuple(config["resolution"]) != tuple(resolution):
        r = config["resolution"]
        raise LabelgenError(f"--init {checkpoint}: a {r[0]}x{r[1]} StyleGAN2 cannot train at {resolution[0]}x"
                            f"{resolution[1]} (its blocks are fixed by the resolution); pass --resolution {r[0]}x{r[1]}")
    return {k: config[k] for k in SG2_ARCH}, {"G": saved["G_ema"], "D": saved["D"], "path": checkpoint}
