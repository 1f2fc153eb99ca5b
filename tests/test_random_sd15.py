"""Tests of ``ptalk_harness.random_sd15``: random SD1.5 checkpoints that the real ComfyUI 0.3.75 loads as SD15.

* ``comfy.sd.load_checkpoint_guess_config`` detects the tiny checkpoint as ``supported_models.SD15``, builds
  the UNet with :data:`random_sd15.TINY_UNET`, a TAESD VAE and the CLIP-L text encoder, and the UNet has
  cross-attention layers of two widths in input, middle and output blocks (as ``transformer_options["block"]``
  names them);
* the core graph CheckpointLoaderSimple → CLIPTextEncode (pos/neg) → EmptyLatentImage → KSampler (euler,
  2 steps) → VAEDecode → VAEEncode runs through ComfyUI's PromptExecutor into a finite IMAGE [1, 64, 64, 3]
  (and a finite LATENT [1, 4, 8, 8]); the same sampler seed gives the same image, another seed another one;
* the builder is deterministic: the same seed gives bit-identical tensors (rebuilt == the written file),
  another seed other tensors; every tensor is finite and none of the weight matrices is constant.
* random SD1.5 ControlNets (fixture ``tiny_controlnets``) have the lllyasviel v1.1 key layout, load with core
  ControlNetLoader as ``comfy.cldm.cldm.ControlNet`` whose residuals fit the tiny UNet's skips, and in a
  ControlNetApplyAdvanced → KSampler graph a "trained" one changes the image (two of them, two images) while
  strength 0 or a zero_out (untrained) one leaves it bit-identical.
"""
from __future__ import annotations

import pytest
import torch

from ptalk_harness import random_sd15

CAPTURED: dict[str, dict] = {}


class _Capture:
    """Test-only output node: keeps the IMAGE (and LATENT) it receives in ``CAPTURED[tag]``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "tag": ("STRING", {"default": ""})},
                "optional": {"latent": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def capture(self, images, tag, latent=None):
        CAPTURED[tag] = {"images": images.clone(), "latent": None if latent is None else latent["samples"].clone()}
        return {}


def _sd_graph(ckpt_name: str, seeds: tuple[int, ...]) -> dict:
    """CheckpointLoaderSimple → CLIPTextEncode ×2 → EmptyLatentImage 64×64 → one KSampler (euler, 2 steps) per
    seed → VAEDecode → VAEEncode → capture (tag ``seed<N>``)."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait photo of a person", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    for i, seed in enumerate(seeds):
        k, d, e, c = (str(10 * (i + 1) + j) for j in range(4))
        g[k] = {"class_type": "KSampler",
                "inputs": {"model": ["1", 0], "seed": seed, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                           "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
                           "latent_image": ["4", 0], "denoise": 1.0}}
        g[d] = {"class_type": "VAEDecode", "inputs": {"samples": [k, 0], "vae": ["1", 2]}}
        g[e] = {"class_type": "VAEEncode", "inputs": {"pixels": [d, 0], "vae": ["1", 2]}}
        g[c] = {"class_type": "PTalkTestCapture", "inputs": {"images": [d, 0], "latent": [e, 0], "tag": f"seed{seed}"}}
    return g


@pytest.fixture
def run_sd(comfy, tiny_sd15, monkeypatch):
    """``run(seeds) -> {"seed<N>": {"images", "latent"}}``: the graph run by ComfyUI's PromptExecutor."""
    import ptalk_harness as harness

    monkeypatch.setitem(comfy.nodes.NODE_CLASS_MAPPINGS, "PTalkTestCapture", _Capture)

    def run(*seeds: int) -> dict:
        CAPTURED.clear()
        harness.run_prompt(_sd_graph(tiny_sd15.name, seeds))
        out = dict(CAPTURED)
        assert sorted(out) == sorted(f"seed{s}" for s in seeds)
        return out

    return run


def test_checkpoint_is_detected_as_sd15(comfy, tiny_sd15):
    import comfy.sd
    import comfy.supported_models
    import comfy.taesd.taesd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sd15.path))
    cfg = model.model.model_config
    assert type(cfg) is comfy.supported_models.SD15
    assert {k: cfg.unet_config[k] for k in random_sd15.TINY_UNET} == random_sd15.TINY_UNET
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD) and vae.latent_channels == 4
    assert vae.downscale_ratio == 8 and vae.first_stage_model.vae_scale.item() == pytest.approx(0.18215)
    assert clip is not None and clip.cond_stage_model.clip_l.transformer.num_layers == 12

    # the cross-attention layers, as transformer_options names them, with their key/value width
    dm = model.model.diffusion_model
    seen = []

    def attn2_patch(n, context, value, extra):
        seen.append((extra["block"][0], extra["block"][1], extra["block_index"], extra["transformer_index"],
                     extra["n_heads"] * extra["dim_head"]))
        return n, context, value

    cond = clip.encode_from_tokens(clip.tokenize("a cat"))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dm(x.to(dm.dtype), torch.tensor([999.0, 999.0]), context=cond.to(dm.dtype).repeat(2, 1, 1),
                 transformer_options={"patches": {"attn2_patch": [attn2_patch]}})
    assert seen == [("input", 1, 0, 0, 320), ("input", 3, 0, 1, 640), ("middle", 0, 0, 2, 640),
                    ("output", 0, 0, 3, 640), ("output", 1, 0, 4, 640), ("output", 2, 0, 5, 320),
                    ("output", 3, 0, 6, 320)]
    widths = sorted((name, m.to_k.weight.shape) for name, m in dm.named_modules() if name.endswith(".attn2"))
    assert len(widths) == 7 and {s[0] for _, s in widths} == {320, 640} and {s[1] for _, s in widths} == {768}
    # not degenerate: finite, unit-scale, and two inputs give two different outputs
    assert torch.isfinite(out).all() and 0.1 < out.float().std().item() < 10
    assert (out[0] - out[1]).abs().mean() > 0.05


def test_core_sd_graph_runs_and_is_seeded(run_sd):
    first = run_sd(1, 2)
    for r in first.values():
        img, lat = r["images"], r["latent"]
        assert img.shape == (1, 64, 64, 3) and img.dtype == torch.float32 and torch.isfinite(img).all()
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
        assert lat.shape == (1, 4, 8, 8) and torch.isfinite(lat).all()
    assert (first["seed2"]["images"] - first["seed1"]["images"]).abs().mean() > 1e-3  # another seed, another image

    again = run_sd(1)  # a fresh executor: checkpoint reloaded, nothing cached
    assert torch.equal(again["seed1"]["images"], first["seed1"]["images"])
    assert torch.equal(again["seed1"]["latent"], first["seed1"]["latent"])


def test_builder_is_deterministic(tiny_sd15):
    from safetensors.torch import load_file

    written = load_file(str(tiny_sd15.path))
    again = random_sd15.build_sd15_state_dict("tiny", seed=0)
    assert written.keys() == again.keys()
    assert all(torch.equal(written[k], again[k]) for k in written)
    scalars = {"first_stage_model.vae_scale", "first_stage_model.vae_shift"}  # fp32, like ComfyUI's VAELoader
    assert all(v.dtype == (torch.float32 if k in scalars else torch.float16) for k, v in again.items())
    assert all(torch.isfinite(v).all() for v in again.values())
    prefixes = {k.split(".")[0] for k in again}
    assert prefixes == {"model", "cond_stage_model", "first_stage_model"}
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.11.") for k in again)
    assert any(k.startswith("first_stage_model.taesd_decoder.") for k in again)
    for k, v in again.items():  # every weight matrix / kernel is random, not constant (checked on a slice)
        if v.ndim >= 2:
            assert v.reshape(-1)[:4096].float().std() > 0, k
    assert again["model.diffusion_model.out.2.weight"].abs().max() > 0

    other = random_sd15.build_sd15_state_dict("tiny", seed=1)
    assert not torch.equal(other["model.diffusion_model.out.2.weight"], again["model.diffusion_model.out.2.weight"])
    assert not torch.equal(other["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"],
                           again["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"])


def test_bad_size_rejected():
    with pytest.raises(ValueError, match="size"):
        random_sd15.build_sd15_state_dict("small")


# ----------------------------------------------------------------------------------------------------------
# random SD1.5 ControlNets (random_sd15.build_controlnet_state_dict / write_controlnet; fixture tiny_controlnets)
# ----------------------------------------------------------------------------------------------------------
def test_controlnet_builder_layout(tiny_controlnets):
    import math

    from safetensors import safe_open
    from safetensors.torch import load_file

    written = load_file(str(tiny_controlnets.dir / tiny_controlnets.landmarks))
    sd = random_sd15.build_controlnet_state_dict("tiny", seed=1)
    assert written.keys() == sd.keys() and all(torch.equal(written[k], sd[k]) for k in sd)  # deterministic
    # the lllyasviel v1.1 layout: no prefix, the UNet encoder + hint encoder + zero convs
    assert {k.split(".")[0] for k in sd} == {"time_embed", "input_blocks", "middle_block", "zero_convs",
                                             "middle_block_out", "input_hint_block"}
    zero_convs = sorted(k for k in sd if k.startswith(("zero_convs.", "middle_block_out.")) and k.endswith("weight"))
    assert zero_convs == ["middle_block_out.0.weight"] + [f"zero_convs.{i}.0.weight" for i in range(4)]
    assert [sd[k].shape[0] for k in zero_convs] == [640, 320, 320, 320, 640]
    assert sd["input_hint_block.0.weight"].shape == (16, 3, 3, 3) and sd["input_hint_block.14.weight"].shape[0] == 320
    assert all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in sd.values())
    assert sum(v.numel() for v in sd.values()) == 51_328_720
    for k in zero_convs:  # "trained": small random 1x1 convs, std 0.1 / sqrt(fan_in)
        std = random_sd15.CONTROLNET_ZERO_CONV_GAIN / math.sqrt(sd[k].shape[1])
        assert sd[k].float().std().item() == pytest.approx(std, rel=0.05), k
    with safe_open(str(tiny_controlnets.dir / tiny_controlnets.zero), "pt") as f:
        assert '"zero_out": true' in f.metadata()["ptalk.random_sd15"]
        zero = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in zero.items():  # untrained: zero convs and the hint encoder's last conv are exact zeros
        if k.startswith(random_sd15.CONTROLNET_ZERO_CONV_KEYS):
            assert not v.any(), k
        else:
            assert torch.equal(v, sd[k]), k
    other = load_file(str(tiny_controlnets.dir / tiny_controlnets.contour))
    assert not torch.equal(other["zero_convs.0.0.weight"], sd["zero_convs.0.0.weight"])
    assert not torch.equal(other["input_blocks.1.0.in_layers.2.weight"], sd["input_blocks.1.0.in_layers.2.weight"])
    with pytest.raises(ValueError, match="size"):
        random_sd15.build_controlnet_state_dict("small")


def test_core_controlnet_loader_loads_them(comfy, tiny_controlnets):
    import comfy.cldm.cldm as cldm  # "as": a plain "import comfy.x" would rebind the fixture name
    import comfy.controlnet as controlnet

    loader = comfy.nodes.NODE_CLASS_MAPPINGS["ControlNetLoader"]
    names = loader.INPUT_TYPES()["required"]["control_net_name"][0]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(2))
    for name in (tiny_controlnets.landmarks, tiny_controlnets.contour, tiny_controlnets.zero):
        assert name in names
        (cn,) = loader().load_controlnet(name)
        assert type(cn) is controlnet.ControlNet
        cm = cn.control_model
        assert isinstance(cm, cldm.ControlNet) and cm.model_channels == 320 and len(cm.zero_convs) == 4
        if name == tiny_controlnets.contour:
            continue  # same shapes as landmarks (the graph test runs it); ~1 s a forward pass on CPU
        with torch.no_grad():
            out = cm(x.to(cm.dtype), hint.to(cm.dtype), torch.tensor([500.0]), context.to(cm.dtype))
        # one residual per skip connection of the tiny UNet (input_blocks 0..3) + the middle block
        assert [tuple(o.shape) for o in out["output"]] == [(1, 320, 8, 8), (1, 320, 8, 8), (1, 320, 4, 4),
                                                         (1, 640, 4, 4)]
        assert [tuple(o.shape) for o in out["middle"]] == [(1, 640, 4, 4)]
        residuals = out["output"] + out["middle"]
        assert all(torch.isfinite(o).all() for o in residuals)
        if name == tiny_controlnets.zero:
            assert not any(o.any() for o in residuals)
        else:
            assert all(0.01 < o.float().std().item() < 2 for o in residuals)


def _hint_nodes(comfy) -> dict:
    """Nodes "h1" (LoadImage photos/astronaut.png, copied into ComfyUI's input dir) → "h2" (ImageScale 64×64, the
    hint); an EmptyImage 64×64 mid-grey "h2" where the shared media are absent."""
    import shutil

    import ptalk_harness as harness

    photo = harness.shared_data_dir() / "photos" / "astronaut.png"
    if not photo.is_file():
        return {"h2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                              "color": 0x808080}}}
    shutil.copyfile(photo, comfy.input_dir / "ptalk_cn_hint_astronaut.png")
    return {"h1": {"class_type": "LoadImage", "inputs": {"image": "ptalk_cn_hint_astronaut.png"}},
            "h2": {"class_type": "ImageScale", "inputs": {"image": ["h1", 0], "upscale_method": "area",
                                                          "width": 64, "height": 64, "crop": "center"}}}


def test_controlnet_graph_changes_the_image(comfy, tiny_sd15, tiny_controlnets, monkeypatch):
    """CheckpointLoaderSimple → CLIPTextEncode → [ControlNetLoader → ControlNetApplyAdvanced] → KSampler (euler,
    2 steps, one seed; cfg 1, so that ComfyUI skips the negative pass: half the time) → VAEDecode, once without a
    ControlNet and once per variant, all in one prompt (one checkpoint load)."""
    import ptalk_harness as harness

    monkeypatch.setitem(comfy.nodes.NODE_CLASS_MAPPINGS, "PTalkTestCapture", _Capture)
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15.name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait photo of a person", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        **_hint_nodes(comfy),
    }
    for name in ("landmarks", "contour", "zero"):
        g[f"cn_{name}"] = {"class_type": "ControlNetLoader",
                           "inputs": {"control_net_name": getattr(tiny_controlnets, name)}}
    variants = {"base": None, "landmarks": ("landmarks", 1.0), "landmarks_s0": ("landmarks", 0.0),
                "contour": ("contour", 1.0), "zero": ("zero", 1.0)}
    for tag, v in variants.items():
        pos, neg = ["2", 0], ["2", 0]  # cfg 1: the negative is not sampled
        if v is not None:
            g[f"apply_{tag}"] = {"class_type": "ControlNetApplyAdvanced",
                                 "inputs": {"positive": pos, "negative": neg, "control_net": [f"cn_{v[0]}", 0],
                                            "image": ["h2", 0], "strength": v[1], "start_percent": 0.0,
                                            "end_percent": 1.0}}
            pos, neg = [f"apply_{tag}", 0], [f"apply_{tag}", 1]
        g[f"k_{tag}"] = {"class_type": "KSampler",
                         "inputs": {"model": ["1", 0], "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                                    "scheduler": "normal", "positive": pos, "negative": neg,
                                    "latent_image": ["4", 0], "denoise": 1.0}}
        g[f"d_{tag}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"k_{tag}", 0], "vae": ["1", 2]}}
        g[f"c_{tag}"] = {"class_type": "PTalkTestCapture", "inputs": {"images": [f"d_{tag}", 0], "tag": tag}}
    CAPTURED.clear()
    harness.run_prompt(g)
    img = {tag: CAPTURED[tag]["images"] for tag in variants}
    for t in img.values():
        assert t.shape == (1, 64, 64, 3) and torch.isfinite(t).all() and 0.0 <= t.min() and t.max() <= 1.0
    diff = {tag: (img[tag] - img["base"]).abs().mean().item() for tag in variants}
    assert diff["landmarks"] > 5e-3 and diff["contour"] > 5e-3, diff  # a trained ControlNet steers the image
    assert (img["landmarks"] - img["contour"]).abs().mean() > 5e-3  # two ControlNets, two images
    assert torch.equal(img["landmarks_s0"], img["base"])  # strength 0: the ControlNet is not applied
    assert torch.equal(img["zero"], img["base"])  # untrained ControlNet: all-zero residuals
