"""Generator backends: one shared contract test run over every backend (tiny configs), plus
backend-specific tests (DCGAN default weights, NVIDIA pickle loading, diffusers folder layout)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import labelgen  # noqa: F401  (installs the torchvision shim before diffusers)
from labelgen.errors import LabelgenError
from labelgen.generators import Generator, create_generator, from_checkpoint

# ------------------------------------------------------------------------------------------------
# tiny configurations of every backend: name -> (constructor kwargs, sample options)
# ------------------------------------------------------------------------------------------------
DDPM_UNET = {"sample_size": [16, 24], "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
             "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
SD_UNET = {"sample_size": [8, 12], "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
           "layers_per_block": 1, "norm_num_groups": 4, "cross_attention_dim": 16, "attention_head_dim": 4,
           "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 16],
          "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 16,
          "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
          "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}
SG2_TINY = {"img_resolution": 32, "z_dim": 32, "w_dim": 32, "mapping_kwargs": {"num_layers": 2},
            "synthesis_kwargs": {"channel_base": 256, "channel_max": 32}}
# ADM (guided-diffusion layout): 32x32, 32 channels, 1 res block, attention at 16x16, learned sigma, res-block
# up/down-sampling, scale-shift norm -- the published flags at toy size
ADM_TINY = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
            "attention_resolutions": "16", "num_head_channels": 16, "learn_sigma": True, "resblock_updown": True,
            "use_scale_shift_norm": True}
# BigGAN-deep layout at 32x32: stage multipliers 4, 2, 1, 1 (x channel_width 8), attention before block 4
BIGGAN_TINY = {"resolution": 32, "channel_width": 8, "z_dim": 8, "num_classes": 5, "multipliers": [4, 2, 1, 1],
               "attention_layer_position": 4, "n_stats": 11}
TINY = {
    "dcgan": ({"ngf": 8, "nz": 16}, {}),
    "adm": ({"flags": ADM_TINY, "timesteps": [50, 400]}, {"ddim_steps": 2}),
    "biggan": (BIGGAN_TINY, {"truncation": 0.5, "class_id": 3}),
    "stylegan2": (SG2_TINY, {"truncation_psi": 0.7}),
    "ddpm": ({"unet_config": DDPM_UNET, "timesteps": [50, 400]}, {"ddim_steps": 2}),
    "stable-diffusion": ({"unet_config": SD_UNET, "vae_config": SD_VAE, "prompt_length": 5, "timesteps": [100]},
                         {"ddim_steps": 2}),
}


def _make(backend: str, **extra) -> "labelgen.generators.Generator":
    kwargs, _ = TINY[backend]
    torch.manual_seed(0)
    g = create_generator(backend, **{**kwargs, **extra}).eval()
    if backend == "stable-diffusion":
        g.empty_prompt_embeds.normal_()  # stands in for the CLIP embedding of ""
    if backend == "biggan":
        randomize_biggan_statistics(g)
    return g


def randomize_biggan_statistics(g) -> None:
    """Measured-looking batch-norm statistics (a new model has means 0, variances 1 at every truncation)."""
    with torch.no_grad():
        for name, t in g.state_dict().items():
            if name.endswith("running_means"):
                t.normal_(0, 0.1)
            elif name.endswith("running_vars"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("gamma"):
                t.fill_(0.5)


@pytest.fixture(scope="module", params=sorted(TINY))
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def gen(backend):
    return _make(backend)


def _options(backend):
    return TINY[backend][1]


def _assert_same(a, b, atol=1e-5):
    assert a.images.shape == b.images.shape
    torch.testing.assert_close(a.images, b.images, atol=atol, rtol=0)
    assert len(a.features) == len(b.features)
    for fa, fb in zip(a.features, b.features):
        torch.testing.assert_close(fa, fb, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------
# the contract every backend meets
# ------------------------------------------------------------------------------------------------
class TestGeneratorContract:
    def test_shapes_match_feature_channels(self, gen, backend):
        out = gen.sample([3, 4], **_options(backend))
        H, W = gen.resolution
        assert out.images.shape == (2, 3, H, W) and out.images.dtype == torch.float32
        assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1
        assert out.images.std() > 0  # not a constant image
        assert [f.shape[1] for f in out.features] == gen.feature_channels
        for f in out.features:
            assert f.ndim == 4 and f.shape[0] == 2 and f.dtype == torch.float32
            # each level is a whole-number downsampling of the image, same stride in y and x
            assert H % f.shape[2] == 0 and W % f.shape[3] == 0 and H // f.shape[2] == W // f.shape[3]
            assert torch.isfinite(f).all()
        assert not out.images.is_inference()  # usable as input to modules that train

    def test_deterministic_per_seed_in_any_batch(self, gen, backend):
        alone = gen.sample([11], **_options(backend))
        batch = gen.sample([5, 11], **_options(backend))
        torch.testing.assert_close(batch.images[1:2], alone.images, atol=1e-5, rtol=0)
        for fb, fa in zip(batch.features, alone.features):
            torch.testing.assert_close(fb[1:2], fa, atol=1e-5, rtol=0)
        assert (batch.images[0] - batch.images[1]).abs().max() > 1e-3  # different seeds differ

    def test_recipes_reproduce_sample(self, gen, backend):
        out = gen.sample([7, 8], **_options(backend))
        assert len(out.recipes) == 2 and [r["seed"] for r in out.recipes] == [7, 8]
        recipes = json.loads(json.dumps(out.recipes))  # JSON-able
        again = gen.features_from_recipes(recipes[::-1])
        torch.testing.assert_close(again.images, out.images.flip(0), atol=1e-5, rtol=0)
        for fa, fo in zip(again.features, out.features):
            torch.testing.assert_close(fa, fo.flip(0), atol=1e-5, rtol=0)

    def test_save_pretrained_round_trip(self, gen, backend, tmp_path):
        gen.save_pretrained(tmp_path / "g")
        loaded = Generator.from_pretrained(tmp_path / "g")
        assert type(loaded) is type(gen) and loaded.resolution == gen.resolution
        assert loaded.feature_channels == gen.feature_channels
        reference = gen.sample([1], **_options(backend))
        _assert_same(loaded.sample([1], **_options(backend)), reference)
        # the workspace path: from_checkpoint on a saved folder works too
        again = from_checkpoint(backend, tmp_path / "g")
        _assert_same(again.sample([1], **_options(backend)), reference)

    def test_feature_layers_select_levels(self, gen, backend):
        T = len(getattr(gen, "timesteps", [None]))  # diffusion: levels x timesteps, level-major
        levels = len(gen.feature_channels) // T
        sub = _make(backend, feature_layers=[-1])
        assert sub.feature_channels == gen.feature_channels[(levels - 1) * T:]
        full, part = gen.sample([4], **_options(backend)), sub.sample([4], **_options(backend))
        assert len(part.features) == T
        for ti in range(T):
            torch.testing.assert_close(part.features[ti], full.features[(levels - 1) * T + ti], atol=1e-5, rtol=0)
        with pytest.raises(LabelgenError, match="out of range"):
            _make(backend, feature_layers=[99])

    def test_features_of_images(self, gen, backend):
        H, W = gen.resolution
        images = torch.rand(2, 3, H, W) * 2 - 1
        if not gen.can_encode_images:
            with pytest.raises(LabelgenError, match="^features_of_images needs features of real images"):
                gen.features_of_images(images)
            return
        feats = gen.features_of_images(images, seed=3)
        assert [f.shape[1] for f in feats] == gen.feature_channels and all(f.shape[0] == 2 for f in feats)
        again = gen.features_of_images(images[1:], seed=3)  # per-image, batch independent
        for fa, fb in zip(again, feats):
            torch.testing.assert_close(fa, fb[1:], atol=1e-4, rtol=0)
        other = gen.features_of_images(images[:1].flip(-1), seed=3)
        assert any((fo - fb[:1]).abs().max() > 1e-4 for fo, fb in zip(other, feats))  # depends on the image


# ------------------------------------------------------------------------------------------------
# DCGAN
# ------------------------------------------------------------------------------------------------
def _mean_image_symmetry(images: torch.Tensor) -> float:
    """Correlation of the mean grey image with its left-right mirror (faces: high; noise: not)."""
    m = images.mean(0).mean(0).flatten(0)  # [H*W]
    mirrored = images.mean(0).mean(0).flip(-1).flatten(0)
    return float(torch.corrcoef(torch.stack([m, mirrored]))[0, 1])


def test_dcgan_default_weights_make_faces():
    from labelgen.generators.dcgan import DCGANGenerator

    g = from_checkpoint("dcgan", None)
    assert g.resolution == (64, 64) and g.feature_channels == [512, 256, 128, 64]
    out = g.sample(list(range(64)))
    assert [tuple(f.shape[2:]) for f in out.features] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    torch.manual_seed(0)
    random = DCGANGenerator().eval().sample(list(range(64)))
    # trained: centred, mirror-symmetric faces and real image contrast; measured 0.90 (trained) vs
    # -0.47..-0.14 (4 random inits), per-pixel std over samples 0.42 vs 0.0007
    assert _mean_image_symmetry(out.images) > 0.75
    assert _mean_image_symmetry(random.images) < 0.5
    assert out.images.std(0).mean() > 0.2 > random.images.std(0).mean() * 10


def test_dcgan_state_dict_checkpoint_and_bad_ones(tmp_path):
    g = _make("dcgan")
    torch.save({"netG_state_dict": g.state_dict()}, tmp_path / "g.pth")
    loaded = from_checkpoint("dcgan", tmp_path / "g.pth")
    assert (loaded.nz, loaded.ngf) == (16, 8)
    _assert_same(loaded.sample([0, 1]), g.sample([0, 1]))
    shrunk = from_checkpoint("dcgan", tmp_path / "g.pth", truncation=0.5)  # workspace generator_options
    assert shrunk.sample([0]).recipes == [{"seed": 0, "truncation": 0.5}]
    _assert_same(shrunk.sample([0]), g.sample([0], truncation=0.5))
    with pytest.raises(LabelgenError, match="unknown options"):
        from_checkpoint("dcgan", tmp_path / "g.pth", ddim_steps=3)

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LabelgenError, match="not a loadable DCGAN state dict"):
        from_checkpoint("dcgan", tmp_path / "junk.pt")
    state = g.state_dict()
    del state["main.3.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(LabelgenError, match="do not fit"):
        from_checkpoint("dcgan", tmp_path / "partial.pt")
    with pytest.raises(LabelgenError, match="no such checkpoint"):
        from_checkpoint("dcgan", tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------
# StyleGAN2
# ------------------------------------------------------------------------------------------------
def test_stylegan2_names_match_nvidia_g_ema():
    g = _make("stylegan2")
    names = set(g.state_dict())
    for name in ["mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.b4.const",
                 "synthesis.b4.resample_filter", "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.noise_const",
                 "synthesis.b4.conv1.noise_strength", "synthesis.b8.conv0.weight", "synthesis.b8.conv0.affine.bias",
                 "synthesis.b8.torgb.affine.weight", "synthesis.b32.torgb.bias", "synthesis.b32.conv1.resample_filter"]:
        assert name in names, name
    assert g.num_ws == 8  # b4: conv1; b8..b32: conv0 + conv1; + the last torgb
    assert g.feature_channels == [32, 32, 16, 8] and g.feature_resolutions == [4, 8, 16, 32]
    assert tuple(g.state_dict()["synthesis.b8.conv0.noise_const"].shape) == (8, 8)


def test_stylegan2_upsampling_keeps_constants_and_truncation():
    from labelgen.generators.stylegan2 import make_filter, upsample2x

    x = torch.full((1, 2, 8, 8), 3.0)
    up = upsample2x(x, make_filter())
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))  # unit DC gain inside
    g = _make("stylegan2")
    g.mapping.w_avg.normal_()
    flat = g.sample([1, 2, 3], truncation_psi=0.0)  # psi 0: every seed collapses to w_avg (const noise)
    torch.testing.assert_close(flat.images[0], flat.images[2])
    free = g.sample([1, 2], truncation_psi=1.0)
    assert (free.images[0] - free.images[1]).abs().max() > 1e-3


def test_stylegan2_w_plus_recipe_and_random_noise():
    g = _make("stylegan2")
    with torch.no_grad():
        g.synthesis.b8.conv0.noise_strength.fill_(0.5)
    out = g.sample([5, 6], noise_mode="random")
    again = g.features_from_recipes([{"seed": 6, "noise_mode": "random", "truncation_psi": 1.0}])
    torch.testing.assert_close(again.images[0], out.images[1], atol=1e-5, rtol=0)
    const = g.sample([6], noise_mode="const", truncation_psi=1.0)
    assert (const.images[0] - out.images[1]).abs().max() > 1e-4  # the noise mode matters
    # a W+ latent replaces the seed's mapping (what inversion produces)
    ws = g.mapped_ws([{"seed": 9, "truncation_psi": 1.0}])[0]
    via_w = g.features_from_recipes([{"seed": 0, "w": ws.tolist(), "truncation_psi": 1.0}])
    torch.testing.assert_close(via_w.images, g.sample([9], truncation_psi=1.0).images, atol=1e-5, rtol=0)
    with pytest.raises(LabelgenError, match="expected"):
        g.features_from_recipes([{"seed": 0, "w": [[0.0] * 5]}])


# -- NVIDIA pickles: built here with the structure of stylegan2-ada-pytorch's network-snapshot-*.pkl --
def _fake_torch_utils(monkeypatch):
    """Modules `torch_utils.persistence` and `dnnlib.util` as NVIDIA's pickles name them."""
    import sys
    import types

    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only referenced by name in the pickle
        raise AssertionError("must never be called by the loader")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    for name, module in {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                         "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return persistence, EasyDict


class _Persistent:
    """Pickles like a torch_utils.persistence object: a call carrying module source and state."""

    def __init__(self, fn, class_name, state):
        self.fn, self.class_name, self.state = fn, class_name, state

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "class_name": self.class_name, "state": self.state,
                "module_src": "import os\nos.system('touch /tmp/labelgen_embedded_src_ran')\nclass Generator: pass\n"}
        return (self.fn, (meta,))


def _as_persistent(module, fn, init_kwargs=None):
    import collections

    import numpy as np

    state = {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, (int, float, str))}
    state.update({
        "training": False,
        "_parameters": collections.OrderedDict((k, torch.nn.Parameter(v.detach().clone(), requires_grad=False))
                                               for k, v in module._parameters.items() if v is not None),
        "_buffers": collections.OrderedDict((k, v.clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(), "_forward_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict((k, _as_persistent(m, fn)) for k, m in module._modules.items()),
        "_init_args": (), "_init_kwargs": dict(init_kwargs or {}), "weight_gain": np.float64(0.125),
    })
    return _Persistent(fn, type(module).__name__, state)


def _write_nvidia_pickle(path, g, monkeypatch, extra=None):
    import pickle

    persistence, EasyDict = _fake_torch_utils(monkeypatch)
    fn = persistence._reconstruct_persistent_obj
    c = g.config
    init = {"z_dim": c["z_dim"], "c_dim": c["c_dim"], "w_dim": c["w_dim"], "img_resolution": c["img_resolution"],
            "img_channels": 3, "mapping_kwargs": EasyDict(c["mapping_kwargs"]),
            "synthesis_kwargs": EasyDict({**c["synthesis_kwargs"], "num_fp16_res": 4, "conv_clamp": 256})}
    top = _as_persistent(g, fn, init)
    top.class_name = "Generator"
    disc = _Persistent(fn, "Discriminator", {"_parameters": {"w": torch.randn(3)}, "_modules": {},
                                             "_init_kwargs": {"c_dim": 0}})
    snapshot = {"G": top, "D": disc, "G_ema": top, "augment_pipe": None,
                "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=32), **(extra or {})}
    path.write_bytes(pickle.dumps(snapshot, protocol=4))


def test_stylegan2_loads_nvidia_pickle_without_running_its_code(tmp_path, monkeypatch):
    g = create_generator("stylegan2", **{**SG2_TINY, "synthesis_kwargs": {**SG2_TINY["synthesis_kwargs"],
                                                                          "conv_clamp": 256}}).eval()
    with torch.no_grad():  # non-trivial values everywhere, so every tensor must land in the right place
        g.mapping.w_avg.normal_()
        for name, p in g.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    _write_nvidia_pickle(tmp_path / "snap.pkl", g, monkeypatch)
    monkeypatch.delitem(__import__("sys").modules, "torch_utils.persistence")  # the loader must not need it
    marker = Path("/tmp/labelgen_embedded_src_ran")
    marker.unlink(missing_ok=True)
    loaded = from_checkpoint("stylegan2", tmp_path / "snap.pkl", truncation_psi=0.5)
    assert not marker.exists()
    assert loaded.config["synthesis_kwargs"]["num_fp16_res"] == 4 and loaded.config["truncation_psi"] == 0.5
    for k, v in g.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=0, rtol=0)
    _assert_same(loaded.sample([0, 1, 2]), g.sample([0, 1, 2], truncation_psi=0.5), atol=0)


@pytest.mark.parametrize("evil", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_stylegan2_refuses_malicious_pickle(tmp_path, monkeypatch, evil):
    import importlib
    import pickle

    target = tmp_path / "pwned"
    module_name, fn_name = evil.rsplit(".", 1)
    fn = getattr(importlib.import_module(module_name), fn_name)
    args = {"os.system": (f"touch {target}",), "builtins.eval": (f"open({str(target)!r}, 'w')",),
            "subprocess.Popen": (["touch", str(target)],)}[evil]

    class Evil:
        def __reduce__(self):
            return (fn, args)

    g = _make("stylegan2")
    _write_nvidia_pickle(tmp_path / "evil.pkl", g, monkeypatch, extra={"training_set_kwargs": {"x": Evil()}})
    with pytest.raises(LabelgenError, match=r"refused: pickle asks for \w+\.(system|eval|Popen)") as err:
        from_checkpoint("stylegan2", tmp_path / "evil.pkl")
    assert "\n" not in str(err.value)
    assert not target.exists()


def test_stylegan2_bad_checkpoints(tmp_path):
    import pickle

    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps({"G_ema": 1})[:10])
    with pytest.raises(LabelgenError, match="not a readable StyleGAN pickle"):
        from_checkpoint("stylegan2", tmp_path / "trunc.pkl")
    (tmp_path / "nog.pkl").write_bytes(pickle.dumps({"D": 1}))
    with pytest.raises(LabelgenError, match="no generator network"):
        from_checkpoint("stylegan2", tmp_path / "nog.pkl")
    with pytest.raises(LabelgenError, match="no default weights"):
        from_checkpoint("stylegan2", None)


# ------------------------------------------------------------------------------------------------
# DDPM
# ------------------------------------------------------------------------------------------------
def test_ddpm_folder_is_a_diffusers_ddpm_pipeline(tmp_path):
    from diffusers import DDPMPipeline

    g = _make("ddpm")
    g.save_pretrained(tmp_path / "m")
    for name in ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "generator_config.json"]:
        assert (tmp_path / "m" / name).is_file(), name
    assert json.loads((tmp_path / "m/generator_config.json").read_text())["timesteps"] == [50, 400]
    pipe = DDPMPipeline.from_pretrained(str(tmp_path / "m"))  # plain diffusers reads it
    torch.testing.assert_close(pipe.unet.state_dict()["conv_in.weight"], g.unet.state_dict()["conv_in.weight"])
    # a plain diffusers folder (no labelgen json) loads with options given at load time
    (tmp_path / "m/generator_config.json").unlink()
    loaded = from_checkpoint("ddpm", tmp_path / "m", timesteps=[10], feature_layers=[1])
    assert loaded.feature_channels == [8] and loaded.timesteps == [10]
    with pytest.raises(LabelgenError, match="not a DDPM folder"):
        from_checkpoint("ddpm", tmp_path)
    with pytest.raises(LabelgenError, match="timesteps"):
        from_checkpoint("ddpm", tmp_path / "m", timesteps=[5000])


def test_ddpm_features_are_those_of_the_sampled_image_per_timestep():
    g = _make("ddpm")
    out = g.sample([3], ddim_steps=2)
    assert out.recipes == [{"seed": 3, "ddim_steps": 2}]
    again = g.features_of_images(out.images)
    for a, b in zip(again, out.features):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # same level at two timesteps differs (noise level matters); strides: level 0 is half resolution
    assert out.features[0].shape[2:] == (8, 12) and out.features[2].shape[2:] == (16, 24)
    assert (out.features[0] - out.features[1]).abs().max() > 1e-3
    other_noise = g.features_of_images(out.images, seed=1)
    assert (other_noise[0] - out.features[0]).abs().max() > 1e-4
    with pytest.raises(LabelgenError, match=r"images must be \[N, 3, 16, 24\]"):
        g.features_of_images(torch.zeros(1, 3, 16, 16))


# ------------------------------------------------------------------------------------------------
# Stable Diffusion
# ------------------------------------------------------------------------------------------------
def test_stable_diffusion_folder_embeds_and_errors(tmp_path):
    g = _make("stable-diffusion")
    assert g.resolution == (16, 24) and g.vae_factor == 2
    out = g.sample([1], ddim_steps=2)
    assert [tuple(f.shape[2:]) for f in out.features] == [(4, 6), (8, 12)]  # latent 8x12: level 0 pre-upsample at /2
    g.save_pretrained(tmp_path / "sd")
    for name in ["vae/config.json", "unet/config.json", "scheduler/scheduler_config.json",
                 "empty_prompt_embeds.safetensors", "model_index.json"]:
        assert (tmp_path / "sd" / name).is_file(), name
    loaded = from_checkpoint("stable-diffusion", tmp_path / "sd", timesteps=[100], ddim_steps=2)
    torch.testing.assert_close(loaded.empty_prompt_embeds, g.empty_prompt_embeds)
    for a, b in zip(loaded.features_of_images(out.images), out.features):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # the prompt embedding conditions the UNet: another embedding, other features
    other = loaded.with_options()
    other.empty_prompt_embeds.zero_()
    assert (other.features_of_images(out.images)[0] - out.features[0]).abs().max() > 1e-4
    (tmp_path / "sd/empty_prompt_embeds.safetensors").unlink()
    with pytest.raises(LabelgenError, match="empty-prompt embedding"):
        from_checkpoint("stable-diffusion", tmp_path / "sd")
    with pytest.raises(LabelgenError, match="not a Stable Diffusion folder"):
        from_checkpoint("stable-diffusion", tmp_path)
    with pytest.raises(LabelgenError, match="nothing is downloaded"):
        from_checkpoint("stable-diffusion", None)


def test_stable_diffusion_text_encoder_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    g = _make("stable-diffusion")
    g.save_pretrained(tmp_path / "sd")
    (tmp_path / "sd/empty_prompt_embeds.safetensors").unlink()
    config = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=5)
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).save_pretrained(tmp_path / "sd/text_encoder")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=5)
    tok.save_pretrained(tmp_path / "sd/tokenizer")
    loaded = from_checkpoint("stable-diffusion", tmp_path / "sd")
    assert loaded.empty_prompt_embeds.shape == (1, 5, 16)


# ------------------------------------------------------------------------------------------------
# plug-in backends: only an explicit opt-in loads one (labelgen.generators.resolve_backend)
# ------------------------------------------------------------------------------------------------
def test_plugin_backends_need_an_explicit_opt_in(tmp_path, monkeypatch):
    from labelgen.generators import PLUGINS_ENV, generator_class
    from labelgen.workspace import generator_class_of
    from teacher_fakes import EVIL_PLUGIN, FakeDiffusion, FakeGAN

    marker = tmp_path / "marker"
    (tmp_path / "evilplug.py").write_text(EVIL_PLUGIN.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, but nobody opted in to it
    monkeypatch.setenv(PLUGINS_ENV, "teacher_fakes")
    for resolve in (generator_class, generator_class_of):
        with pytest.raises(LabelgenError) as e:
            resolve("evilplug:Gen")
        assert str(e.value) == ("generator plug-in 'evilplug:Gen' is not enabled: install it as a "
                                "'labelgen.generators' entry point or opt in with LABELGEN_PLUGINS=evilplug")
    assert not marker.exists()
    # a listed module allows its classes; a listed module:Class only that class
    assert generator_class("teacher_fakes:FakeGAN") is FakeGAN
    monkeypatch.setenv(PLUGINS_ENV, " pathlib , teacher_fakes:FakeDiffusion")
    assert generator_class("teacher_fakes:FakeDiffusion") is FakeDiffusion
    with pytest.raises(LabelgenError, match="'teacher_fakes:FakeGAN' is not enabled"):
        generator_class("teacher_fakes:FakeGAN")
    with pytest.raises(LabelgenError, match="'pathlib:Path' is not a labelgen Generator subclass"):
        generator_class("pathlib:Path")
    monkeypatch.delenv(PLUGINS_ENV)
    with pytest.raises(LabelgenError, match="'teacher_fakes:FakeDiffusion' is not enabled"):
        generator_class("teacher_fakes:FakeDiffusion")
    with pytest.raises(LabelgenError, match=r"unknown generator backend 'nope' \(one of stylegan2, ddpm"):
        generator_class("nope")
    for malformed in (":Gen", ".evilplug:Gen", "evilplug:", "evil/plug:Gen"):
        with pytest.raises(LabelgenError, match="expected module:Class"):
            generator_class(malformed)
    assert generator_class("dcgan").__name__ == "DCGANGenerator"  # built-ins need no opt-in
    assert not marker.exists()


def test_installed_entry_point_plugin_loads_without_env(tmp_path, monkeypatch):
    """A distribution declaring [labelgen.generators] fake-gan = teacher_fakes:FakeGAN (a .dist-info on
    sys.path, as pip installs it): usable by its name or its target, with no $LABELGEN_PLUGINS."""
    from labelgen.generators import PLUGINS_ENV, generator_class, installed_plugins
    from teacher_fakes import FakeGAN

    dist = tmp_path / "fakeplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[labelgen.generators]\nfake-gan = teacher_fakes:FakeGAN\n")
    monkeypatch.delenv(PLUGINS_ENV)
    with pytest.raises(LabelgenError, match="unknown generator backend 'fake-gan'"):
        generator_class("fake-gan")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed_plugins() == {"fake-gan": "teacher_fakes:FakeGAN"}
    assert generator_class("fake-gan") is FakeGAN and generator_class("teacher_fakes:FakeGAN") is FakeGAN
    with pytest.raises(LabelgenError, match="'teacher_fakes:FakeDiffusion' is not enabled"):
        generator_class("teacher_fakes:FakeDiffusion")
