"""The published teachers: guided-diffusion ADM (``--generator adm``) and BigGAN-deep (``--generator biggan``).

No real checkpoint is downloaded here. Instead:
* the published architectures are built on the meta device and compared with the published checkpoints'
  key layout written down below (names, shapes, key and parameter counts: 552,814,086 parameters for the
  LSUN/FFHQ 256x256 ADM, 50.4M / 55.9M / 56.2M for BigGAN-deep 128 / 256 / 512 as their model cards say);
* tiny models with random weights are saved in exactly that layout (a plain ``torch.save`` of the state dict,
  as the published files are) and go through the whole CLI: init -> sample -> import -> train-heads ->
  synthesize -> student;
* pickled payloads in a checkpoint are refused before they run.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import labelgen  # noqa: F401  (torchvision shim before diffusers)
from labelgen.errors import LabelgenError
from labelgen.generators import create_generator, from_checkpoint
from test_generators import ADM_TINY, BIGGAN_TINY, DDPM_UNET, randomize_biggan_statistics

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------------------
# the published key layouts (lsun_bedroom.pt / lsun_cat.pt / lsun_horse.pt / DDPM-seg ffhq.pt all share it)
# ------------------------------------------------------------------------------------------------
ADM_256_KEYS = {
    "time_embed.0.weight": (1024, 256), "time_embed.2.weight": (1024, 1024),
    "input_blocks.0.0.weight": (256, 3, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (256,), "input_blocks.1.0.in_layers.2.weight": (256, 256, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (512, 1024),  # scale-shift: 2 x 256
    "input_blocks.1.0.out_layers.0.weight": (256,), "input_blocks.1.0.out_layers.3.weight": (256, 256, 3, 3),
    "input_blocks.3.0.in_layers.2.weight": (256, 256, 3, 3),  # res-block down-sampler (no op weights)
    "input_blocks.7.0.skip_connection.weight": (512, 256, 1, 1),
    "input_blocks.10.1.norm.weight": (512,), "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # attention at 32x32
    "input_blocks.10.1.proj_out.weight": (512, 512, 1),
    "input_blocks.13.0.skip_connection.weight": (1024, 512, 1, 1), "input_blocks.16.1.qkv.bias": (3072,),
    "input_blocks.17.1.proj_out.weight": (1024, 1024, 1),
    "middle_block.0.emb_layers.1.weight": (2048, 1024), "middle_block.1.qkv.weight": (3072, 1024, 1),
    "middle_block.2.out_layers.3.weight": (1024, 1024, 3, 3),
    "output_blocks.0.0.in_layers.0.weight": (2048,), "output_blocks.0.0.skip_connection.weight": (1024, 2048, 1, 1),
    "output_blocks.2.2.in_layers.2.weight": (1024, 1024, 3, 3),  # res-block up-sampler after the attention
    "output_blocks.5.0.skip_connection.weight": (1024, 1536, 1, 1), "output_blocks.5.1.qkv.weight": (3072, 1024, 1),
    "output_blocks.8.0.in_layers.0.weight": (1024,), "output_blocks.8.1.qkv.weight": (1536, 512, 1),
    "output_blocks.8.2.emb_layers.1.weight": (1024, 1024),
    "output_blocks.11.0.skip_connection.weight": (512, 768, 1, 1),
    "output_blocks.12.0.skip_connection.weight": (256, 768, 1, 1), "output_blocks.14.1.out_layers.3.weight": (256, 256, 3, 3),  # no attention at 128x128: up-sampler is .1
    "output_blocks.17.0.skip_connection.weight": (256, 512, 1, 1),
    "out.0.weight": (256,), "out.2.weight": (6, 256, 3, 3), "out.2.bias": (6,),  # learned sigma: eps + variance
}
ADM_256_ABSENT = ["input_blocks.3.0.h_upd.op.weight", "output_blocks.2.2.conv.weight", "input_blocks.3.0.op.weight",
                  "output_blocks.2.1.qkv_proj.weight", "label_emb.weight", "input_blocks.1.1.qkv.weight",
                  "output_blocks.14.2.in_layers.0.weight"]

BIGGAN_KEYS = {  # biggan-deep-{128,256,512} pytorch_model.bin (HF port of the TF-Hub modules)
    "embeddings.weight": (128, 1000),
    "generator.gen_z.weight_orig": (32768, 256), "generator.gen_z.weight_u": (32768,),
    "generator.gen_z.weight_v": (256,), "generator.gen_z.bias": (32768,),
    "generator.layers.0.bn_0.running_means": (51, 2048), "generator.layers.0.bn_0.running_vars": (51, 2048),
    "generator.layers.0.bn_0.scale.weight_orig": (2048, 256), "generator.layers.0.bn_0.offset.weight_u": (2048,),
    "generator.layers.0.conv_0.weight_orig": (512, 2048, 1, 1), "generator.layers.0.conv_1.weight_orig": (512, 512, 3, 3),
    "generator.layers.0.conv_1.weight_v": (4608,), "generator.layers.0.conv_3.bias": (2048,),
    "generator.layers.3.conv_3.weight_orig": (1024, 512, 1, 1),
    "generator.bn.running_means": (51, 128), "generator.bn.weight": (128,), "generator.bn.bias": (128,),
    "generator.conv_to_rgb.weight_orig": (128, 128, 3, 3), "generator.conv_to_rgb.bias": (128,),
}
BIGGAN_PER_RESOLUTION = {  # parameters (model card), state-dict keys, attention layer, last module index
    128: (50_388_609, 506, {"generator.layers.8.gamma": (1,), "generator.layers.8.snconv1x1_theta.weight_orig": (32, 256, 1, 1),
                            "generator.layers.8.snconv1x1_g.weight_orig": (128, 256, 1, 1),
                            "generator.layers.8.snconv1x1_o_conv.weight_orig": (256, 128, 1, 1),
                            "generator.layers.10.conv_3.weight_orig": (128, 64, 1, 1)}),
    256: (55_880_833, 602, {"generator.layers.8.snconv1x1_phi.weight_orig": (64, 512, 1, 1),
                            "generator.layers.12.conv_3.weight_orig": (128, 64, 1, 1)}),
    512: (56_163_905, 698, {"generator.layers.8.snconv1x1_phi.weight_u": (64,),
                            "generator.layers.14.conv_3.weight_orig": (128, 32, 1, 1)}),
}


def _shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_adm_published_256_layout():
    from labelgen.generators.adm import ADM_PRESETS, ADMUNet, normalize_flags, resolve_flags

    for preset in ADM_PRESETS:
        assert resolve_flags(None, preset, None) == normalize_flags(ADM_PRESETS["lsun-256"])
    flags = resolve_flags(None, "lsun-256", None)
    assert flags["channel_mult"] == [1, 1, 2, 2, 4, 4] and flags["attention_resolutions"] == [32, 16, 8]
    with torch.device("meta"):
        unet = ADMUNet(flags)
    shapes = _shapes(unet)
    assert len(shapes) == 566 and sum(p.numel() for p in unet.parameters()) == 552_814_086
    for name, shape in ADM_256_KEYS.items():
        assert shapes.get(name) == shape, name
    for name in ADM_256_ABSENT:
        assert name not in shapes, name
    # DDPM-seg's default blocks 5, 6, 7, 8, 12: 1024 + 512 + 512 + 512 + 256 = 2,816 channels per timestep
    assert [unet.levels[i] for i in [5, 6, 7, 8, 12]] == [(1024, 8), (512, 8), (512, 8), (512, 4), (256, 2)]


@pytest.mark.parametrize("resolution", [128, 256, 512])
def test_biggan_published_layouts(resolution):
    from labelgen.generators.biggan import BigGANGenerator

    params, keys, specific = BIGGAN_PER_RESOLUTION[resolution]
    with torch.device("meta"):
        g = BigGANGenerator(resolution=resolution)
    shapes = _shapes(g)
    assert len(shapes) == keys and sum(p.numel() for p in g.parameters()) == params
    for name, shape in {**BIGGAN_KEYS, **specific}.items():
        assert shapes.get(name) == shape, name
    # the architecture is read back from names and shapes alone (what loading a published file does)
    config = BigGANGenerator.config_from_state(g.state_dict(), Path("x.bin"))
    assert config == {"resolution": resolution, "channel_width": 128, "z_dim": 128, "num_classes": 1000,
                      "multipliers": g.config["multipliers"], "attention_layer_position": 8, "n_stats": 51}


# ------------------------------------------------------------------------------------------------
# loading tiny checkpoints saved in the published layout
# ------------------------------------------------------------------------------------------------
def _tiny_adm_file(tmp_path: Path, flags_suffix: str | None = ".json") -> tuple[Path, "labelgen.generators.Generator"]:
    torch.manual_seed(0)
    g = create_generator("adm", flags=ADM_TINY, timesteps=[50, 400], ddim_steps=2).eval()
    with torch.no_grad():  # the published zero-initialised output convs are trained away: make them count
        for name, p in g.unet.named_parameters():
            if name.endswith(("out_layers.3.weight", "proj_out.weight", "out.2.weight")):
                p.normal_(0, 0.05)
    path = tmp_path / "tiny_adm.pt"
    torch.save(g.unet.state_dict(), path)  # what guided-diffusion's checkpoints are: a plain state dict
    if flags_suffix == ".json":
        (tmp_path / "tiny_adm.json").write_text(json.dumps(ADM_TINY))
    elif flags_suffix == ".yaml":
        (tmp_path / "model_flags.yaml").write_text("".join(f"{k}: {v}\n" for k, v in ADM_TINY.items()))
    return path, g


def _tiny_biggan_folder(tmp_path: Path) -> tuple[Path, "labelgen.generators.Generator"]:
    torch.manual_seed(0)
    g = create_generator("biggan", **BIGGAN_TINY).eval()
    randomize_biggan_statistics(g)
    folder = tmp_path / "tiny-biggan"
    folder.mkdir()
    torch.save(g.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"output_dim": 32, "eps": 1e-4, "n_stats": 11}))
    return folder, g


@pytest.mark.parametrize("flags_suffix", [".json", ".yaml"])
def test_adm_loads_by_name_with_flags_beside(tmp_path, flags_suffix):
    path, g = _tiny_adm_file(tmp_path, flags_suffix)
    loaded = from_checkpoint("adm", path, timesteps=[50, 400], ddim_steps=2)
    for k, v in g.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    a, b = loaded.sample([4]), g.sample([4])
    torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=0)
    assert loaded.feature_channels == [64, 64, 64, 64, 32, 32, 32, 32]  # all 4 output blocks x 2 timesteps
    # eps = the first 3 of the 6 learned-sigma channels
    x, t = torch.rand(1, 3, 32, 32) * 2 - 1, torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet_eps(x, t), loaded.unet(x, t)[:, :3])
        assert loaded.unet(x, t).shape[1] == 6


def test_adm_flags_and_layout_errors(tmp_path):
    from labelgen.generators.adm import normalize_flags, resolve_flags

    path, g = _tiny_adm_file(tmp_path, flags_suffix=None)
    with pytest.raises(LabelgenError, match="no model flags: pass --preset"):
        from_checkpoint("adm", path)
    with pytest.raises(LabelgenError, match="unknown preset 'lsun-512'"):
        from_checkpoint("adm", path, preset="lsun-512")
    with pytest.raises(LabelgenError, match=r"unknown \['num_chanels'\]"):
        normalize_flags({"num_chanels": 8})
    with pytest.raises(LabelgenError, match="class_cond=True is not supported"):
        normalize_flags({"class_cond": True})
    # flags over a preset; the preset's 256 channels do not fit the tiny file: named in one line
    assert resolve_flags(None, "lsun-256", {"image_size": 32, "channel_mult": "1,2"})["num_channels"] == 256
    with pytest.raises(LabelgenError, match=r"of another shape \(e\.g\. time_embed\.0\.weight") as e:
        from_checkpoint("adm", path, preset="lsun-256", flags={"image_size": 32, "channel_mult": "1,2"})
    assert "\n" not in str(e.value)
    state = torch.load(path, weights_only=True)
    state["input_blocks.0.0.kernel"] = state.pop("input_blocks.0.0.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(LabelgenError, match=r"1 missing \(e\.g\. input_blocks\.0\.0\.weight\); 1 unexpected"):
        from_checkpoint("adm", tmp_path / "renamed.pt", flags=ADM_TINY)
    with pytest.raises(LabelgenError, match="no default weights"):
        from_checkpoint("adm", None, preset="lsun-256")
    # a .safetensors copy loads too
    from safetensors.torch import save_file

    save_file(torch.load(path, weights_only=True), str(tmp_path / "tiny.safetensors"))
    loaded = from_checkpoint("adm", tmp_path / "tiny.safetensors", flags=ADM_TINY, timesteps=[50, 400])
    torch.testing.assert_close(loaded.features_of_images(torch.zeros(1, 3, 32, 32))[0],
                               g.features_of_images(torch.zeros(1, 3, 32, 32))[0], atol=1e-5, rtol=0)


def test_adm_attention_orders_differ_and_default_blocks():
    from labelgen.generators.adm import default_feature_blocks, normalize_flags

    legacy = create_generator("adm", flags=ADM_TINY, timesteps=[50])
    new = create_generator("adm", flags={**ADM_TINY, "use_new_attention_order": True}, timesteps=[50])
    new.load_state_dict(legacy.state_dict())  # same names and shapes, other split of the qkv channels
    with torch.no_grad():
        for name, p in legacy.unet.named_parameters():
            if "proj_out" in name:
                p.normal_(0, 0.2)
        new.load_state_dict(legacy.state_dict())
        x, t = torch.rand(1, 3, 32, 32), torch.tensor([100])
        assert (legacy.unet(x, t) - new.unet(x, t)).abs().max() > 1e-4
    assert default_feature_blocks(normalize_flags({"image_size": 256})) == [5, 6, 7, 8, 12]
    assert default_feature_blocks(normalize_flags(ADM_TINY)) is None


def test_adm_boolean_flags_are_parsed_strictly(tmp_path):
    """"False" written as a string is False (bool("False") is True: the new attention order, class-conditional)."""
    from labelgen.generators.adm import normalize_flags, read_flags_file

    flags = normalize_flags({**ADM_TINY, "use_new_attention_order": "False", "class_cond": "False",
                             "learn_sigma": "TRUE", "resblock_updown": "no", "use_scale_shift_norm": 1})
    assert flags["use_new_attention_order"] is False and flags["learn_sigma"] is True
    assert flags["resblock_updown"] is False and flags["use_scale_shift_norm"] is True
    assert normalize_flags({**ADM_TINY, "use_new_attention_order": "yes"})["use_new_attention_order"] is True
    assert normalize_flags({**ADM_TINY, "learn_sigma": "0"})["learn_sigma"] is False
    (tmp_path / "flags.json").write_text(json.dumps({**ADM_TINY, "use_new_attention_order": "False",
                                                     "class_cond": "false", "learn_sigma": True}))
    g = create_generator("adm", flags=read_flags_file(tmp_path / "flags.json"), timesteps=[50])
    assert g.unet.middle_block[1].new_order is False
    for key, value in (("use_new_attention_order", "maybe"), ("class_cond", "Falsch"), ("learn_sigma", 2)):
        with pytest.raises(LabelgenError, match=f"adm flags: {key} must be true or false.*{value!r}") as e:
            normalize_flags({**ADM_TINY, key: value})
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# fidelity to the published samplers: the expected values come from the formulas written here
# ------------------------------------------------------------------------------------------------
def _ddim_respacing(n: int, T: int = 1000) -> list[int] | None:
    """guided-diffusion's space_timesteps(T, "ddimN"): range(0, T, i) for the first stride i in 1..T-1 that gives
    exactly n steps; None where no stride does (guided-diffusion raises)."""
    for i in range(1, T):
        if len(range(0, T, i)) == n:
            return list(range(0, T, i))
    return None


def _record_unet_timesteps(unet) -> tuple[list[int], object]:
    seen: list[int] = []
    return seen, unet.register_forward_pre_hook(lambda m, args: seen.extend(args[1].tolist()))


def test_adm_ddim_is_guided_diffusions_and_ddpm_keeps_diffusers(tmp_path):
    """guided-diffusion's ddim_sample (eta 0, clip_denoised): x0 = sqrt(1 / a) x - sqrt(1 / a - 1) eps clipped to
    [-1, 1], eps re-derived from the clipped x0, x' = sqrt(a') x0 + sqrt(1 - a') eps, over the respaced schedule
    (betas rebuilt from abar at the kept steps: 1 - abar_t / abar_previous_kept), the model seeing the original
    timestep; the diffusers-trained DDPM keeps diffusers' DDIMScheduler.step."""
    from diffusers import DDIMScheduler

    from labelgen.generators.base import seeded_randn

    _, g = _tiny_adm_file(tmp_path, None)  # random output convs: x0 leaves [-1, 1] at high t, so clipping counts
    assert _ddim_respacing(30)[-2:] == [952, 986] and _ddim_respacing(50)[-1] == 980
    abar_full = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))  # linear betas, 1000 steps
    for n in (30, 50):
        kept = _ddim_respacing(n)
        last, betas = 1.0, []
        for t in kept:
            betas.append(1 - abar_full[t] / last)
            last = abar_full[t]
        abar = np.cumprod(1 - np.array(betas))
        abar_prev = np.append(1.0, abar[:-1])
        seen, hook = _record_unet_timesteps(g.unet)
        try:
            got = g._ddim([7], n)
        finally:
            hook.remove()
        assert seen == kept[::-1]
        # guided-diffusion's coefficients: float64 arrays, taken as float32 tensors; the arithmetic in float32
        recip, recipm1 = (torch.tensor(c, dtype=torch.float32) for c in (np.sqrt(1 / abar), np.sqrt(1 / abar - 1)))
        a_prev = torch.tensor(abar_prev, dtype=torch.float32)
        x = seeded_randn([7], (3, 32, 32))  # x_T of seed 7
        clipped = 0
        with torch.no_grad():
            for k in reversed(range(n)):
                eps = g.unet(x, torch.tensor([kept[k]]))[:, :3]  # learned sigma: eps = the first 3 channels
                x0 = recip[k] * x - recipm1[k] * eps
                clipped += int((x0.abs() > 1).sum())
                x0 = x0.clamp(-1, 1)
                eps = (recip[k] * x - x0) / recipm1[k]
                x = x0 * a_prev[k].sqrt() + (1 - a_prev[k]).sqrt() * eps
        assert clipped > 0
        torch.testing.assert_close(got, x, atol=1e-5, rtol=0)
    for n in (1, 700):  # no integer stride makes exactly 1 or 700 of 1000 steps: refused, as guided-diffusion does
        with pytest.raises(LabelgenError, match=f"ddim_steps {n} is refused: no integer stride") as e:
            g.sample([0], ddim_steps=n)
        assert "\n" not in str(e.value)

    torch.manual_seed(0)
    ddpm = create_generator("ddpm", unet_config=DDPM_UNET, timesteps=[50]).eval()
    scheduler = DDIMScheduler.from_config(ddpm.scheduler_config)
    scheduler.set_timesteps(30)
    x = seeded_randn([7], (3, 16, 24))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(ddpm.unet_eps(x, t.expand(1)), t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ddpm._ddim([7], 30), x, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast objects for a CUDA device, on a CPU machine
def test_adm_ddpm_seg_protocol_options(tmp_path):
    """share_noise: every timestep of the feature pass sees one noise tensor (DDPM-seg's share_noise), recovered here
    from the UNet's inputs as (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t); off (default): one per timestep. It
    changes the features, so it is part of the generator identity; fp16 (adm default auto) is fp16 autocast on
    CUDA only, a machine option like bf16."""
    from labelgen.cli import main
    from labelgen.teacher import generator_identity

    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    noises = {}
    for share in (True, False):
        g = create_generator("adm", flags=ADM_TINY, timesteps=[50, 150, 250], share_noise=share).eval()
        inputs = []
        hook = g.unet.register_forward_pre_hook(lambda m, args: inputs.append((args[0].clone(), args[1].clone())))
        try:
            g.features_of_images(x0)
        finally:
            hook.remove()
        x_all, t_all = torch.cat([x for x, _ in inputs]), torch.cat([t for _, t in inputs])
        a = torch.tensor(abar, dtype=torch.float32)[t_all][:, None, None, None]
        noise = (x_all - a.sqrt() * x0.repeat(3, 1, 1, 1)) / (1 - a).sqrt()  # [T*N, 3, 32, 32], t-major
        assert t_all.tolist() == [50, 50, 150, 150, 250, 250]
        noises[share] = noise
    shared, separate = noises[True], noises[False]
    for k in range(1, 6):  # shared: one tensor for every timestep and image
        torch.testing.assert_close(shared[k], shared[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(separate[1], separate[0], atol=1e-4, rtol=0)  # separate: per timestep, not per image
    assert (separate[2] - separate[0]).abs().max() > 1 and (separate[4] - separate[2]).abs().max() > 1
    assert generator_identity("adm", "w", {"share_noise": True}) != generator_identity("adm", "w", {})
    assert generator_identity("adm", "w", {"fp16": False}) == generator_identity("adm", "w", {})

    g = create_generator("adm", flags=ADM_TINY, timesteps=[50])
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert g.config["fp16"] == "auto" and g._autocast(cuda).fast_dtype == torch.float16
    assert not isinstance(g._autocast(cpu), torch.autocast)
    assert create_generator("adm", flags=ADM_TINY, timesteps=[50], fp16=False)._autocast(cuda).fast_dtype == torch.bfloat16
    with pytest.raises(LabelgenError, match="adm: share_noise must be true or false, got 'maybe'"):
        create_generator("adm", flags=ADM_TINY, share_noise="maybe")
    path, _ = _tiny_adm_file(tmp_path)
    main(["init", str(tmp_path / "ws"), "--generator", "adm", "--checkpoint", str(path), "--classes", "bg,fg",
          "--timesteps", "50", "--share-noise"])
    assert json.loads((tmp_path / "ws" / "workspace.json").read_text())["generator_options"]["share_noise"] is True


def test_biggan_loads_published_folder_and_samples_classes(tmp_path):
    folder, g = _tiny_biggan_folder(tmp_path)
    for checkpoint in (folder, folder / "pytorch_model.bin"):
        loaded = from_checkpoint("biggan", checkpoint, class_id=3, truncation=0.5)
        assert loaded.config["multipliers"] == [4, 2, 1, 1] and loaded.config["attention_layer_position"] == 4
        for k, v in g.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    out = loaded.sample([1, 2])
    assert out.recipes == [{"seed": 1, "class": 3, "truncation": 0.5, "z_sampler": "torch"},
                           {"seed": 2, "class": 3, "truncation": 0.5, "z_sampler": "torch"}]
    other_class = loaded.sample([1], class_id=4)
    assert (other_class.images[0] - out.images[0]).abs().max() > 1e-3
    # truncation scales z and picks the batch-norm statistics (between the 11 stored points, as the port does)
    bn = loaded.generator.bn
    mean, _ = bn.stats(0.25)  # half way between points 2 and 3 of 0, 0.1, ..., 1
    torch.testing.assert_close(mean, (bn.running_means[2] + bn.running_means[3]) / 2)
    mixed = loaded.features_from_recipes([{"seed": 1, "class": 3, "truncation": 0.9}, {"seed": 1, "class": 3,
                                                                                       "truncation": 0.5}])
    torch.testing.assert_close(mixed.images[1], out.images[0], atol=1e-5, rtol=0)
    assert (mixed.images[0] - out.images[0]).abs().max() > 1e-3
    with pytest.raises(LabelgenError, match="truncation must be in"):
        loaded.sample([1], truncation=1.5)
    with pytest.raises(LabelgenError, match="class 7 is not a class index 0..4"):
        loaded.sample([1], class_id=7)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["generator.layers.4.gamma"]
    torch.save(state, tmp_path / "noattn.bin")
    with pytest.raises(LabelgenError, match="expected pairs of GenBlocks and one attention layer"):
        from_checkpoint("biggan", tmp_path / "noattn.bin")
    with pytest.raises(LabelgenError, match="not a BigGAN-deep generator state dict"):
        from_checkpoint("biggan", _tiny_adm_file(tmp_path)[0])


def _port_statistics(table: torch.Tensor, truncation: float) -> torch.Tensor:
    """pytorch-pretrained-BigGAN's BigGANBatchNorm lookup: coef, start = math.modf(truncation / (1 / (n_stats - 1)));
    coef == 0: row start, else row start * coef + row start+1 * (1 - coef)."""
    coef, start = math.modf(truncation / (1.0 / (table.shape[0] - 1)))
    start = int(start)
    return table[start] if coef == 0.0 else table[start] * coef + table[start + 1] * (1 - coef)


def test_biggan_batch_norm_statistics_are_the_ports_lookup():
    """The port's lookup, bug for bug: neighbours weighted the other way round, float rounding of the division
    (0.14 / 0.02 = 7.000000000000001 takes point 8); the project's batch-norm outputs against it."""
    from labelgen.generators.biggan import TruncationBatchNorm

    k = torch.arange(51, dtype=torch.float32)[:, None]
    means = torch.sin(k / 3 + torch.arange(4.0))  # [51, 4]: a table of measured-looking statistics
    variances = 0.5 + k / 25 + torch.arange(4.0) / 10
    torch.manual_seed(0)
    plain, conditional = TruncationBatchNorm(4, 51, 1e-4, None), TruncationBatchNorm(4, 51, 1e-4, 6)
    with torch.no_grad():
        for bn in (plain, conditional):
            bn.running_means.copy_(means)
            bn.running_vars.copy_(variances)
        plain.weight.copy_(torch.tensor([1.0, 0.5, 2.0, -1.0]))
        plain.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3]))
        x, cond = torch.randn(2, 4, 3, 3), torch.randn(2, 6)
        for t in (0.14, 0.28, 0.4, 0.56, 0.58, 0.94, 0.95, 0.955, 1.0):
            mean, var = _port_statistics(means, t)[:, None, None], _port_statistics(variances, t)[:, None, None]
            normed = (x - mean) / torch.sqrt(var + 1e-4)
            expected_plain = normed * plain.weight[:, None, None] + plain.bias[:, None, None]
            expected_cond = (normed * (1 + conditional.scale(cond))[:, :, None, None]
                             + conditional.offset(cond)[:, :, None, None])
            torch.testing.assert_close(plain(x, t), expected_plain, atol=1e-6, rtol=0)
            torch.testing.assert_close(conditional(x, t, cond), expected_cond, atol=1e-6, rtol=0)


def test_biggan_port_file_names_and_z_sampler(tmp_path, capsys):
    """The port's download names load (weights by name, eps from the prefixed config); --z-sampler port draws z as
    its truncated_noise_sample(batch_size=1, seed=s): scipy truncnorm(-2, 2) with RandomState(s), times truncation."""
    from scipy.stats import truncnorm

    from labelgen.cli import main

    folder, g = _tiny_biggan_folder(tmp_path)
    port = tmp_path / "port"
    port.mkdir()
    (folder / "pytorch_model.bin").rename(port / "biggan-deep-32-pytorch_model.bin")
    (port / "biggan-deep-32-config.json").write_text(json.dumps({"output_dim": 32, "eps": 1e-3, "n_stats": 11}))
    for checkpoint in (port, port / "biggan-deep-32-pytorch_model.bin"):
        loaded = from_checkpoint("biggan", checkpoint, class_id=3, truncation=0.4, z_sampler="port")
        assert loaded.config["eps"] == 1e-3
        for name, v in g.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], v, atol=0, rtol=0)
    seen = []
    hook = loaded.generator.gen_z.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, :8].clone()))
    try:
        out = loaded.sample([5, 6])
    finally:
        hook.remove()
    expected = np.concatenate([0.4 * truncnorm.rvs(-2, 2, size=(1, 8), random_state=np.random.RandomState(s))
                               .astype(np.float32) for s in (5, 6)])
    torch.testing.assert_close(seen[0], torch.from_numpy(expected), atol=0, rtol=0)
    assert out.recipes[0] == {"seed": 5, "class": 3, "truncation": 0.4, "z_sampler": "port"}
    torch_z = from_checkpoint("biggan", port, class_id=3, truncation=0.4).sample([5])  # the default sampler
    assert torch_z.recipes[0]["z_sampler"] == "torch" and (torch_z.images[0] - out.images[0]).abs().max() > 1e-3
    again = loaded.features_from_recipes(out.recipes)  # a recipe replays its own sampler
    torch.testing.assert_close(again.images, out.images, atol=0, rtol=0)
    with pytest.raises(LabelgenError, match="z_sampler port takes seeds 0..4294967295"):
        loaded.sample([-1])
    with pytest.raises(LabelgenError, match="z_sampler must be one of torch, port, got 'scipy'"):
        from_checkpoint("biggan", port, z_sampler="scipy")
    (port / "biggan-deep-64-pytorch_model.bin").write_bytes(b"")
    with pytest.raises(LabelgenError, match="several \\*-pytorch_model.bin files"):
        from_checkpoint("biggan", port)
    (port / "biggan-deep-64-pytorch_model.bin").unlink()
    main(["init", str(tmp_path / "ws"), "--generator", "biggan", "--checkpoint", str(port), "--classes", "bg,dog",
          "--class", "3", "--z-sampler", "port"])
    config = json.loads((tmp_path / "ws" / "workspace.json").read_text())
    assert config["generator_options"]["z_sampler"] == "port"


class _Payload:
    """Pickles as a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("backend", ["adm", "biggan"])
def test_pickled_payload_in_checkpoint_is_refused(tmp_path, backend):
    import pickle

    marker = tmp_path / "pwned"
    if backend == "adm":
        path, g = _tiny_adm_file(tmp_path)
        state = dict(g.unet.state_dict())
    else:
        folder, g = _tiny_biggan_folder(tmp_path)
        path, state = folder / "pytorch_model.bin", dict(g.state_dict())
    torch.save({**state, "extra": _Payload(marker)}, path)  # the zip format torch writes
    with pytest.raises(LabelgenError, match="refused: the checkpoint needs more than tensors") as e:
        from_checkpoint(backend, path, **({"flags": ADM_TINY} if backend == "adm" else {}))
    assert "\n" not in str(e.value)
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))  # a bare (legacy) pickle
    with pytest.raises(LabelgenError, match="refused|not a loadable"):
        from_checkpoint(backend, path, **({"flags": ADM_TINY} if backend == "adm" else {}))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# the whole CLI on the tiny published-layout files
# ------------------------------------------------------------------------------------------------
def _photos(folder: Path, n: int, size: int = 48) -> None:
    """n 'real photos' (bright disc on dark ground, other sizes than the generator's) + index masks."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        r = size // 4 + k % 5
        disc = (yy - size / 2) ** 2 + (xx - size / 2 - k % 7) ** 2 < r * r
        image = np.where(disc[..., None], 200, 40).astype(np.uint8) + np.random.default_rng(k).integers(
            0, 30, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "images" / f"p{k:03d}.png")
        Image.fromarray(disc.astype(np.uint8)).save(folder / "masks" / f"p{k:03d}.png")


def _cli(main, *args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), e.code


@pytest.mark.parametrize("backend", ["adm", "biggan"])
def test_full_cli_run(tmp_path, backend, capsys, monkeypatch):
    """init -> sample -> import real photos -> train-heads -> synthesize -> student train (dreamteacher)."""
    from labelgen.cli import main
    from labelgen.data.shards import ShardReader
    from labelgen.student.cli import main as student_main
    from labelgen.workspace import Workspace

    monkeypatch.setenv("LABELGEN_WORKSPACE", "")
    w = tmp_path / "w"
    if backend == "adm":
        checkpoint, _ = _tiny_adm_file(tmp_path, flags_suffix=None)
        (tmp_path / "flags.yaml").write_text("".join(f"{k}: {v}\n" for k, v in ADM_TINY.items()))
        _cli(main, "init", w, "--generator", "adm", "--checkpoint", checkpoint, "--model-flags", tmp_path / "flags.yaml",
             "--classes", "ground,disc", "--head", "conv", "--timesteps", "50,400", "--feature-layers", "2,3")
    else:
        checkpoint, _ = _tiny_biggan_folder(tmp_path)
        _cli(main, "init", w, "--generator", "biggan", "--checkpoint", checkpoint, "--class", "3",
             "--truncation", "0.5", "--classes", "ground,disc", "--head", "conv")
    assert "32x32" in capsys.readouterr().out
    if backend == "adm":  # DDIM steps are sampling-only (the generator id stays): 2 keep the test fast
        config = json.loads((w / "workspace.json").read_text())
        config["generator_options"]["ddim_steps"] = 2
        (w / "workspace.json").write_text(json.dumps(config))
    ws = Workspace(w)
    if backend == "adm":
        assert ws.config.generator_options["flags"]["num_channels"] == 32
        assert ws.config.generator_options["timesteps"] == [50, 400] and len(ws.config.feature_channels) == 4
    else:
        assert ws.config.generator_options == {"class_idx": 3, "truncation": 0.5}  # --class: one option name for every backend
    _cli(main, "sample", "-w", w, "--n", "2")
    _photos(tmp_path / "photos", 3)
    if backend == "adm":
        _cli(main, "import", "-w", w, "--images", tmp_path / "photos/images", "--masks", tmp_path / "photos/masks")
        assert "imported 3 images (3 with masks); resized 3" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit) as e:
            main(["import", "-w", str(w), "--images", str(tmp_path / "photos/images")])
        assert e.value.code == 2 and "needs an inversion method" in capsys.readouterr().err
    ws = Workspace(w)
    for annotation_id in ws.annotation_ids():
        if not ws.mask_path(annotation_id).is_file():
            ws.save_mask(annotation_id, (ws.read_annotation(annotation_id)[0].mean(2) > 127).astype(np.uint8))
    _cli(main, "train-heads", "-w", w, "--epochs", "2")
    _cli(main, "synthesize", "-w", w, "--n", "4", "--shard-size", "2", "--out", tmp_path / "synth",
         "--soft-labels", "uint8")
    samples = list(ShardReader(tmp_path / "synth"))
    assert len(samples) == 4 and samples[0].image.shape[:2] == (32, 32)
    assert samples[0].meta["generator"] == ws.generator_id() and samples[0].meta["generator"].startswith(backend)
    if backend == "biggan":
        assert samples[0].meta["recipe"]["class"] == 3 and samples[0].meta["recipe"]["truncation"] == 0.5
    capsys.readouterr()
    _cli(student_main, "train", "--mode", "dreamteacher", "--data", tmp_path / "synth", "--out", tmp_path / "run",
         "--teacher", w, "--image-size", "32x32", "--batch-size", "2", "--max-steps", "2", "--no-progress")
    assert "trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run/model.safetensors").is_file()


def test_init_refuses_pickled_adm_checkpoint_and_creates_nothing(tmp_path):
    """The console program: one line on stderr, exit status 2, no workspace, the payload never ran."""
    from teacher_fakes import REPO, subprocess_env

    marker = tmp_path / "pwned"
    path, g = _tiny_adm_file(tmp_path)
    torch.save({**g.unet.state_dict(), "x": _Payload(marker)}, path)
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "init", str(tmp_path / "w"), "--generator", "adm",
                           "--checkpoint", str(path), "--classes", "a,b"], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "refused: the checkpoint needs more than tensors" in proc.stderr
    assert not (tmp_path / "w").exists() and not marker.exists()


def test_head_training_memory_flat_in_annotations(tmp_path, monkeypatch):
    """train-heads on an ADM workspace with 3 vs 12 annotated photos: the features (1.5 MiB an image at these
    sizes, 2.8 GB at 256x256 with DDPM-seg's blocks) come from the disk cache per step; the most feature
    tensors alive at any time does not grow with the number of annotations."""
    import weakref

    from labelgen.annotations import FeatureStore
    from labelgen.heads.train import TrainConfig
    from labelgen.workspace import create_workspace
    from teacher_fakes import train_workspace_heads

    checkpoint, _ = _tiny_adm_file(tmp_path)
    original = FeatureStore.annotation
    alive: weakref.WeakSet = weakref.WeakSet()
    most = {"alive": 0}

    def tracked(self, teacher, annotations, annotation_id, mirror=False):  # plain and mirrored (flip: on for ADM)
        features = original(self, teacher, annotations, annotation_id, mirror)
        alive.update(features)
        most["alive"] = max(most["alive"], len(alive))
        return features

    monkeypatch.setattr(FeatureStore, "annotation", tracked)
    peaks = {}
    for n in (3, 12):
        _photos(tmp_path / f"photos{n}", n, size=32)
        ws = create_workspace(tmp_path / f"w{n}", "adm", ["ground", "disc"], checkpoint,
                              {"type": "pixel-mlp", "ensemble": 1}, timesteps=[50, 400])
        ws.import_images(tmp_path / f"photos{n}/images", tmp_path / f"photos{n}/masks")
        most["alive"] = 0
        train_workspace_heads(ws, TrainConfig(epochs=2, images_per_step=2, pixels_per_image=64))
        peaks[n] = most["alive"]
    levels = 8  # 4 output blocks x 2 timesteps
    assert levels <= peaks[3] <= 3 * levels and peaks[12] == peaks[3], peaks
