"""Latent-diffusion teacher: a local diffusers Stable Diffusion folder, used unconditionally.

Folder layout (read by ``from_checkpoint`` / ``from_pretrained``, written by ``save_pretrained``)::

    vae/        AutoencoderKL (config.json + diffusion_pytorch_model.safetensors)
    unet/       UNet2DConditionModel
    scheduler/  scheduler_config.json (any SD scheduler; DDIM is built from it)
    text_encoder/ + tokenizer/         used once to embed the empty prompt ("") when `transformers`
                                       is installed (pip install 'labelgen[stable-diffusion]'), or
    empty_prompt_embeds.safetensors    {"prompt_embeds": [1, L, D]}: the same, precomputed
                                       (written by save_pretrained; lets SD run without transformers)
    generator_config.json              labelgen feature options (optional)

Features: VAE-encode the image (latent mean x scaling_factor), noise it at each timestep, one UNet pass
conditioned on the empty-prompt embedding, decoder up-block outputs (see
:mod:`labelgen.generators.diffusion` for the flat level-major order). Feature strides are the UNet's
times the VAE factor (8 for SD). Sampling: DDIM in latent space with the empty prompt, then VAE decode.
Recipe: ``{"seed", "ddim_steps"}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from labelgen.errors import LabelgenError
from labelgen.generators.ddpm import (
    MODEL_INDEX, OPTION_KEYS, _read_json, load_diffusers_model, read_labelgen_options, write_labelgen_config,
)
from labelgen.generators.diffusion import DiffusionGenerator, plain_config

EMBEDS_FILE = "empty_prompt_embeds.safetensors"
EMBEDS_KEY = "prompt_embeds"


def _load_module(cls, folder: Path, what: str):
    if not (folder / "config.json").is_file():
        raise LabelgenError(f"{folder}: missing (a Stable Diffusion folder needs vae/, unet/ and scheduler/)")
    return load_diffusers_model(cls, folder, what)


def empty_prompt_embeds(folder: Path) -> torch.Tensor:
    """[1, L, D] embedding of the empty prompt: precomputed file, else the folder's CLIP text encoder."""
    from safetensors.torch import load_file

    if (folder / EMBEDS_FILE).is_file():
        tensors = load_file(str(folder / EMBEDS_FILE))
        if EMBEDS_KEY not in tensors or tensors[EMBEDS_KEY].ndim != 3:
            raise LabelgenError(f"{folder / EMBEDS_FILE}: expected a tensor {EMBEDS_KEY!r} of shape [1, L, D]")
        return tensors[EMBEDS_KEY][:1].float()
    if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise LabelgenError(f"{folder}: no {EMBEDS_FILE} and no text_encoder/ + tokenizer/ to compute the "
                            "empty-prompt embedding")
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise LabelgenError(f"{folder}: computing the empty-prompt embedding needs `transformers` "
                            "(pip install 'labelgen[stable-diffusion]'), or put a precomputed "
                            f"{EMBEDS_FILE} in the folder") from None
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder")).eval()
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.inference_mode():
        return encoder(ids)[0].float().clone()


class StableDiffusionGenerator(DiffusionGenerator):
    backend = "stable-diffusion"

    def __init__(self, unet_config: dict[str, Any], vae_config: dict[str, Any],
                 scheduler_config: dict[str, Any] | None = None, prompt_length: int = 77,
                 timesteps: list[int] | None = None, feature_layers: list[int] | None = None, ddim_steps: int = 50,
                 noise_seed: int = 0, bf16: bool | str = "auto", channels_last: bool | str = "auto",
                 compile: bool | str = "auto", max_batch: int = 8,
                 _unet=None, _vae=None, _prompt_embeds: torch.Tensor | None = None):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        unet = _unet if _unet is not None else UNet2DConditionModel.from_config(dict(unet_config))
        vae = _vae if _vae is not None else AutoencoderKL.from_config(dict(vae_config))
        scheduler_config = plain_config(scheduler_config or DDIMScheduler(beta_schedule="scaled_linear",
                                                                          beta_start=0.00085, beta_end=0.012).config)
        super().__init__({"unet_config": plain_config(unet.config), "vae_config": plain_config(vae.config),
                          "scheduler_config": scheduler_config})
        self.unet, self.vae = unet, vae
        if vae.config.latent_channels != unet.config.in_channels:
            raise LabelgenError(f"stable-diffusion: VAE latents have {vae.config.latent_channels} channels but the "
                                f"UNet takes {unet.config.in_channels}")
        dim = unet.config.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        embeds = torch.zeros(1, int(prompt_length), int(dim)) if _prompt_embeds is None else _prompt_embeds.float()
        if embeds.shape[0] != 1 or embeds.shape[2] != dim:
            raise LabelgenError(f"stable-diffusion: empty-prompt embedding has shape {list(embeds.shape)}, the UNet "
                                f"expects [1, L, {dim}]")
        self.config["prompt_length"] = int(embeds.shape[1])
        self.register_buffer("empty_prompt_embeds", embeds)  # [1, L, D]
        self.scheduler_config = scheduler_config
        self.noise_scheduler = DDIMScheduler.from_config(scheduler_config)
        self._setup_features(timesteps, feature_layers, self.noise_scheduler.config.num_train_timesteps)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return (int(self.unet.config.in_channels), h, w)

    @property
    def resolution(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return (h * self.vae_factor, w * self.vae_factor)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215) or 0.18215)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latents = torch.cat([self.vae.encode(images[s:s + self.max_batch]).latent_dist.mean
                             for s in range(0, images.shape[0], self.max_batch)])
        return latents.float() * self.scaling_factor  # [N, 4, H/8, W/8]

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(x0[s:s + self.max_batch] / self.scaling_factor).sample
                          for s in range(0, x0.shape[0], self.max_batch)]).float()

    def unet_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        context = self.empty_prompt_embeds.to(x.dtype).expand(x.shape[0], -1, -1)  # [B, L, D]
        return self.unet(x, t, encoder_hidden_states=context).sample

    # ---- diffusers folder layout ----
    def save_pretrained(self, folder: Path | str, extra: dict[str, Any] | None = None) -> None:
        import diffusers
        from diffusers import DDIMScheduler
        from labelgen.data.io import atomic_write_bytes, save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        save_safetensors(folder / EMBEDS_FILE, {EMBEDS_KEY: self.empty_prompt_embeds})
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"]}
        if not (folder / MODEL_INDEX).is_file():
            atomic_write_bytes(folder / MODEL_INDEX, json.dumps(index, indent=2).encode())
        write_labelgen_config(folder, self, ("unet_config", "vae_config", "scheduler_config", "prompt_length"), extra)

    @classmethod
    def build_pretrained(cls, folder: Path, **options) -> "StableDiffusionGenerator":
        """A diffusers Stable Diffusion folder (generator_config.json optional)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        if not (folder / "unet").is_dir() or not (folder / "vae").is_dir():
            raise LabelgenError(f"{folder}: not a Stable Diffusion folder (expected vae/, unet/, scheduler/)")
        scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json", "diffusers scheduler folder")
        unet = _load_module(UNet2DConditionModel, folder / "unet", "UNet")
        vae = _load_module(AutoencoderKL, folder / "vae", "VAE")
        embeds = empty_prompt_embeds(folder)
        kwargs = {**read_labelgen_options(folder, cls), **options}
        return cls(unet_config=plain_config(unet.config), vae_config=plain_config(vae.config),
                   scheduler_config=scheduler_config, prompt_length=embeds.shape[1], _unet=unet, _vae=vae,
                   _prompt_embeds=embeds, **kwargs).eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, **options) -> "StableDiffusionGenerator":
        """A local diffusers Stable Diffusion folder; options as the DDPM backend's."""
        unknown = set(options) - set(OPTION_KEYS)
        if unknown:
            raise LabelgenError(f"stable-diffusion: unknown options {sorted(unknown)} ({', '.join(OPTION_KEYS)})")
        if checkpoint is None or not Path(checkpoint).is_dir():
            raise LabelgenError("stable-diffusion: pass --checkpoint, a local diffusers Stable Diffusion folder "
                                "(vae/, unet/, scheduler/, text_encoder/ + tokenizer/ or "
                                f"{EMBEDS_FILE}); nothing is downloaded")
        return cls.build_pretrained(Path(checkpoint), **options)
