"""Randomly initialised Stable Diffusion 1.5 checkpoints in the real single-file LDM layout.

The state dict has the key layout of ``v1-5-pruned.safetensors`` -- ``model.diffusion_model.*`` (UNet),
``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L/14 text encoder), ``first_stage_model.*`` (VAE) --
so that ComfyUI's core ``CheckpointLoaderSimple`` (``comfy.sd.load_checkpoint_guess_config``) detects it as
``supported_models.SD15`` and returns a MODEL, CLIP and VAE that run with the core CLIPTextEncode, KSampler,
VAEDecode and VAEEncode nodes. No weight is downloaded: the shapes come from ComfyUI's own modules
(``openaimodel.UNetModel``, ``clip_model.CLIPTextModel``, ``taesd.TAESD`` / ``autoencoder.AutoencoderKL``),
instantiated on the ``meta`` device with exactly the configuration ComfyUI infers from the keys, and every
tensor is filled from a ``torch.Generator``:

* Linear / Conv weights: normal, std ``1/sqrt(fan_in)`` (LeCun normal: activations keep a unit scale, so a
  forward pass stays finite in fp16 as well as fp32 and the UNet output is not degenerate);
* Embedding weights: normal, std 0.02 (CLIP's own initializer range);
* GroupNorm / LayerNorm weights: ones; all biases: zeros, except the TAESD decoder's last conv bias: 0.5
  (TAESD decodes to [0, 1], so the random image is centred on mid-grey instead of half clamped to black);
* TAESD ``vae_scale`` / ``vae_shift``: 0.18215 / 0 (what ComfyUI's VAELoader sets for ``taesd``), stored as
  fp32 scalars whatever ``dtype``.

Each tensor has its own generator, seeded from ``seed`` and the tensor's key (CRC32), so the same ``seed``
gives bit-identical tensors (and files) whatever the order or the size of the other components.

Sizes
-----
``"full"``: the real SD1.5 architecture -- UNet ``model_channels`` 320, ``channel_mult`` [1, 2, 4, 4],
    2 res blocks per level, one transformer at the first three levels and in the middle, context 768, 8 heads
    (859.5 M parameters); CLIP ViT-L/14 text encoder, 12 layers, width 768 (123.1 M); the SD KL-f8 VAE,
    ``ch`` 128, ``ch_mult`` [1, 2, 4, 4] (83.7 M). About 2.1 GB in fp16.
``"tiny"``: :data:`TINY_UNET` (``channel_mult`` [1, 2], one res block per level, one transformer at both
    levels and in the middle; 320 and 640 channels) -- still detected as SD15, since ComfyUI's SD15 entry only
    requires ``model_channels`` 320, ``context_dim`` 768, conv ``proj_in`` (``use_linear_in_transformer``
    False), no ADM input and no temporal layers; the full CLIP text encoder (its config is fixed in ComfyUI:
    ``comfy/sd1_clip_config.json``); and a TAESD VAE (``first_stage_model.taesd_encoder.*`` /
    ``taesd_decoder.*``, 2.4 M parameters), which ``comfy.sd.VAE`` recognises inside a checkpoint and runs
    with the SD15 latent format (4 channels, factor 8). 232.9 M parameters (UNet 107.4 M, text encoder
    123.1 M, TAESD 2.4 M), 466 MB in fp16.

ControlNets
-----------
:func:`build_controlnet_state_dict` / :func:`write_controlnet` make random SD1.5 ControlNets in the layout of
lllyasviel's ControlNet v1.1 files (``control_v11p_sd15_canny.pth``; keys ``time_embed.*``, ``input_blocks.*``,
``zero_convs.<i>.0.*``, ``input_hint_block.*``, ``middle_block.*``, ``middle_block_out.0.*``, no prefix), built
from ComfyUI's own ``comfy.cldm.cldm.ControlNet`` with the config core ControlNetLoader
(``comfy.controlnet.load_controlnet``) infers from those keys; a "tiny" one fits the tiny checkpoint's UNet
(51.3 M parameters, 103 MB in fp16), a "full" one is the real SD1.5 ControlNet (361.3 M, 723 MB). Same init
rules and per-key seeding, except that the zero convs get small random weights (a trained ControlNet) or, with
``zero_out=True``, exact zeros (an untrained one), and the hint encoder a gain that keeps the hint's scale.

The module imports torch but not ComfyUI; its functions import ComfyUI's modules, so the caller must have made
ComfyUI importable first (:func:`ptalk_harness.prepare`; the command line does that itself).

Command line::

    python -m ptalk_harness.random_sd15 OUT.safetensors [--size tiny|full] [--seed N] [--dtype fp16|bf16|fp32]
    python -m ptalk_harness.random_sd15 OUT.safetensors --controlnet [--zero-out] [--size ...] [--seed N] [--dtype ...]
"""
from __future__ import annotations

import copy
import json
import math
import pathlib
import time
import zlib

import torch

from .comfy import prepare

__all__ = ["TINY_UNET", "FULL_UNET", "CLIP_PREFIX", "UNET_PREFIX", "VAE_PREFIX", "build_sd15_state_dict",
           "write_sd15_checkpoint", "CONTROLNET_ZERO_CONV_GAIN", "CONTROLNET_ZERO_CONV_KEYS", "controlnet_unet_config",
           "build_controlnet_state_dict", "write_controlnet"]

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # + "text_model.*"
VAE_PREFIX = "first_stage_model."

#: UNet config of size "tiny", exactly as ComfyUI builds it for this checkpoint
#: (``model_detection.detect_unet_config`` of the keys + ``supported_models.SD15.unet_extra_config``).
#: input_blocks: 0 conv_in | 1 res+attn (320) | 2 downsample | 3 res+attn (640); middle: res, attn (640), res;
#: output_blocks: 0 res+attn (640) | 1 res+attn (640) + upsample | 2 res+attn (320) | 3 res+attn (320).
#: Cross-attention (attn2) layers: ("input", 1) 320, ("input", 3) 640, ("middle", 0) 640, ("output", 0) 640,
#: ("output", 1) 640, ("output", 2) 320, ("output", 3) 320 -- 7 in all, transformer_index 0 in each block.
TINY_UNET: dict = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "num_heads": 8,
    "num_head_channels": -1,
}

#: UNet config of size "full": the real SD1.5 UNet as ComfyUI detects v1-5-pruned.safetensors.
FULL_UNET: dict = {
    **TINY_UNET,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "channel_mult": [1, 2, 4, 4],
}

#: The SD KL-f8 VAE (ComfyUI's default SD1.x ddconfig in comfy.sd.VAE).
FULL_VAE_DDCONFIG: dict = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                           "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                           "dropout": 0.0}

#: ``vae_scale`` of a TAESD for SD1.x latents (as ComfyUI's VAELoader sets it for "taesd").
TAESD_SD15_SCALE = 0.18215

_SIZES = ("tiny", "full")


# ----------------------------------------------------------------------------------------------------------
# module skeletons (meta device: shapes and module types only, no memory)
# ----------------------------------------------------------------------------------------------------------
def _unet_module(size: str) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = copy.deepcopy(TINY_UNET if size == "tiny" else FULL_UNET)
    return UNetModel(**cfg, dtype=torch.float32, device=torch.device("meta"),
                     operations=comfy.ops.disable_weight_init)


def _clip_module() -> torch.nn.Module:
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    with open(pathlib.Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")) as f:
        config = json.load(f)
    return comfy.clip_model.CLIPTextModel(config, torch.float32, torch.device("meta"),
                                          comfy.ops.disable_weight_init)


def _vae_module(size: str) -> torch.nn.Module:
    if size == "tiny":
        import comfy.taesd.taesd
        with torch.device("meta"):
            return comfy.taesd.taesd.TAESD(latent_channels=4)
    from comfy.ldm.models.autoencoder import AutoencoderKL
    with torch.device("meta"):
        return AutoencoderKL(ddconfig=dict(FULL_VAE_DDCONFIG), embed_dim=4)


# ----------------------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------------------
def _tensor_seed(seed: int, key: str) -> int:
    return (int(seed) * 0x9E3779B1 + zlib.crc32(key.encode())) % (1 << 63)


_NORM_TYPES = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
_WEIGHT_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                 torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)
#: the TAESD scalars, stored as fp32 whatever the dtype
_TAESD_SCALARS = ("vae_scale", "vae_shift")


def _init_module(module: torch.nn.Module, prefix: str, seed: int, dtype, out: dict, skip=()) -> None:
    """Fill ``out[prefix + name]`` for every parameter and buffer of ``module`` (except names in ``skip``)."""
    gen = torch.Generator(device="cpu")
    state_names = set(module.state_dict().keys())
    done = set()
    for mname, mod in module.named_modules():
        tensors = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        for pname, t in tensors:
            name = f"{mname}.{pname}" if mname else pname
            if name in skip or name not in state_names:
                continue
            key = prefix + name
            value = _init_value(mod, pname, name, key, tuple(t.shape), seed, gen)
            # the two TAESD scalars stay fp32 (0.18215 is 0.182129 in fp16), as ComfyUI's VAELoader makes them
            out[key] = (value if name in _TAESD_SCALARS else value.to(dtype)).contiguous()
            done.add(name)
    missing = state_names - done - set(skip)
    if missing:
        raise RuntimeError(f"random_sd15: tensors left uninitialised under {prefix!r}: {sorted(missing)[:10]}")


def _init_value(mod: torch.nn.Module, pname: str, name: str, key: str, shape: tuple, seed: int,
                gen: torch.Generator) -> torch.Tensor:
    """The fp32 initial value of tensor ``pname`` of module ``mod`` (``name`` in its model, ``key`` in the state
    dict), by the rules in the module docstring."""
    if pname == "bias":
        return torch.zeros(shape)
    if isinstance(mod, _NORM_TYPES) and pname == "weight":
        return torch.ones(shape)
    if isinstance(mod, torch.nn.Embedding) and pname == "weight":
        gen.manual_seed(_tensor_seed(seed, key))
        return torch.empty(shape).normal_(0.0, 0.02, generator=gen)
    if isinstance(mod, _WEIGHT_TYPES) and pname == "weight":
        transposed = isinstance(mod, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d))
        fan_in = shape[0 if transposed else 1] * math.prod(shape[2:])
        gen.manual_seed(_tensor_seed(seed, key))
        return torch.empty(shape).normal_(0.0, fan_in ** -0.5, generator=gen)
    if name == "vae_scale":
        return torch.tensor(TAESD_SD15_SCALE)
    if name == "vae_shift":
        return torch.tensor(0.0)
    raise TypeError(f"random_sd15: no init rule for {key} ({type(mod).__name__}.{pname}, shape {shape})")


def build_sd15_state_dict(size: str = "tiny", seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """Build a random SD1.5 checkpoint state dict in the single-file LDM layout.

    Args:
        size: ``"tiny"`` (UNet :data:`TINY_UNET`, 107.4 M parameters; full CLIP-L text encoder, 123.1 M;
            TAESD VAE, 2.4 M; 232.9 M in all, 466 MB in fp16) or ``"full"`` (the real SD1.5 shapes:
            UNet 859.5 M, CLIP-L 123.1 M, KL-f8 VAE 83.7 M; 1066.2 M, 2.13 GB in fp16).
        seed: seeds every tensor (same seed -> bit-identical tensors).
        dtype: dtype of the stored tensors (fp16 like v1-5-pruned-emaonly-fp16; fp32 and bf16 work too).

    Returns:
        ``{key: tensor}`` (CPU, contiguous) with keys ``model.diffusion_model.*``,
        ``cond_stage_model.transformer.text_model.*`` and ``first_stage_model.*`` (``encoder.*``,
        ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*`` for "full"; ``taesd_encoder.*``,
        ``taesd_decoder.*``, ``vae_scale``, ``vae_shift`` for "tiny"). Like v1-5-pruned it has no
        ``text_projection`` (SD1.5 does not use the pooled CLIP output) and no ``position_ids``.

    Raises:
        ValueError: unknown ``size``.
        RuntimeError: ComfyUI would not detect the result as SD15 (a ComfyUI whose detection differs).
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    import comfy.model_detection
    import comfy.supported_models

    sd: dict[str, torch.Tensor] = {}
    _init_module(_unet_module(size), UNET_PREFIX, seed, dtype, sd)
    _init_module(_clip_module(), CLIP_PREFIX, seed, dtype, sd, skip=("text_projection.weight",))
    vae = _vae_module(size)
    _init_module(vae, VAE_PREFIX, seed, dtype, sd)
    if size == "tiny":  # TAESD decodes to [0, 1] (ComfyUI clamps it): centre the random image on mid-grey
        last = len(vae.taesd_decoder) - 1
        sd[f"{VAE_PREFIX}taesd_decoder.{last}.bias"].fill_(0.5)

    # what CheckpointLoaderSimple will infer from these keys
    want = dict(TINY_UNET if size == "tiny" else FULL_UNET)
    detected = comfy.model_detection.detect_unet_config(sd, UNET_PREFIX)
    model_config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if type(model_config) is not comfy.supported_models.SD15:
        raise RuntimeError(f"random_sd15: ComfyUI detects {type(model_config).__name__} instead of SD15 "
                           f"(detected unet config {detected})")
    if model_config.unet_config != want:
        raise RuntimeError(f"random_sd15: ComfyUI would build the UNet with {model_config.unet_config}, not {want}")
    return sd


def write_sd15_checkpoint(path, size: str = "tiny", seed: int = 0, dtype=torch.float16) -> pathlib.Path:
    """Build (:func:`build_sd15_state_dict`) and write a random SD1.5 checkpoint as ``.safetensors``.

    The file holds only the tensors plus the metadata ``{"ptalk.random_sd15": '{"size": ..., "seed": ...,
    "dtype": ...}'}``; the same arguments give a byte-identical file.
    Sizes in fp16: "tiny" 466 MB, "full" 2.13 GB. Parent directories are created.

    Returns:
        the resolved path written.
    """
    from safetensors.torch import save_file

    path = pathlib.Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = build_sd15_state_dict(size=size, seed=seed, dtype=dtype)
    # one metadata entry only: safetensors writes the metadata map in hash order, so with two entries the
    # header (and the file bytes) could differ between two runs
    meta = {"ptalk.random_sd15": json.dumps({"size": size, "seed": int(seed), "dtype": str(dtype)})}
    tmp = path.with_name(path.name + ".part")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# ControlNet (lllyasviel ControlNet v1.1 SD1.5 layout)
# ----------------------------------------------------------------------------------------------------------
#: Gain on the LeCun std (``1/sqrt(fan_in)``) of the ``zero_convs.*`` / ``middle_block_out`` weights of a random
#: "trained" ControlNet (see :func:`build_controlnet_state_dict`).
CONTROLNET_ZERO_CONV_GAIN = 0.1

#: The ControlNet tensors that lllyasviel's ControlNet initialises to zero (``zero_module``): the 1x1 "zero
#: convolutions" feeding the UNet's skip connections and middle block, and the hint encoder's last conv.
CONTROLNET_ZERO_CONV_KEYS = ("zero_convs.", "middle_block_out.", "input_hint_block.14.")

#: Gain on the LeCun std of the hint encoder's first seven convs (``input_hint_block.0/2/4/.../12``), each
#: followed by a SiLU. SiLU halves small activations, so with plain LeCun init the eight-conv encoder would
#: shrink a [0, 1] hint image to features of std ~0.003 and the hint would not matter; gain 2 keeps the scale:
#: the features (``input_hint_block.14`` output, added to ``input_blocks.0``'s output of std ~0.9) have
#: std ~1.5 for a 64x64 photo or uniform noise, ~0.6 for mid-grey, and exactly 0 for an all-black hint (the
#: biases are zero).
CONTROLNET_HINT_GAIN = 2.0

#: Channels of the hint image (RGB) -- ``input_hint_block.0.weight.shape[1]``.
CONTROLNET_HINT_CHANNELS = 3


def controlnet_unet_config(size: str = "tiny") -> dict:
    """The keyword arguments ComfyUI's ``load_controlnet_state_dict`` gives ``comfy.cldm.cldm.ControlNet`` for a
    ControlNet of ``size`` (the UNet config it detects from the ``input_blocks`` / ``middle_block`` keys, less
    ``out_channels``, plus ``hint_channels``; ``transformer_depth_output``, which ControlNet ignores, is left
    out: ComfyUI detects it as all zeros since a ControlNet has no output blocks)."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    cfg = copy.deepcopy(TINY_UNET if size == "tiny" else FULL_UNET)
    cfg.pop("out_channels")
    cfg.pop("transformer_depth_output")
    cfg["hint_channels"] = CONTROLNET_HINT_CHANNELS
    return cfg


def _controlnet_module(size: str) -> torch.nn.Module:
    import comfy.ops
    from comfy.cldm.cldm import ControlNet

    return ControlNet(**controlnet_unet_config(size), dtype=torch.float32, device=torch.device("meta"),
                      operations=comfy.ops.disable_weight_init)


def build_controlnet_state_dict(size: str = "tiny", seed: int = 0, dtype=torch.float16,
                                zero_out: bool = False) -> dict[str, torch.Tensor]:
    """Build a random SD1.5 ControlNet state dict in the layout of lllyasviel's ControlNet v1.1 files
    (``control_v11p_sd15_canny.pth`` / ComfyUI's ``control_v11p_sd15_canny_fp16.safetensors``): no prefix, keys
    ``time_embed.*``, ``input_blocks.*``, ``zero_convs.<i>.0.*``, ``input_hint_block.*``, ``middle_block.*``,
    ``middle_block_out.0.*``. ComfyUI's ``comfy.controlnet.load_controlnet`` (core ControlNetLoader) detects it
    by ``zero_convs.0.0.weight``, infers the UNet config from the keys (``supported_models.SD15``) and builds
    ``comfy.cldm.cldm.ControlNet`` with :func:`controlnet_unet_config`: the UNet's encoder half (time embedding,
    ``input_blocks``, ``middle_block``) with the same shapes as the :data:`TINY_UNET` / :data:`FULL_UNET`
    encoder, so that its residuals (one per ``input_blocks`` entry, plus the middle) fit the skip connections
    of the checkpoint of the same size.

    Tensors are filled like :func:`build_sd15_state_dict` (LeCun-normal weights, unit norms, zero biases, one
    generator per tensor seeded by ``seed`` and the key), except the ones a ControlNet starts as zero
    (:data:`CONTROLNET_ZERO_CONV_KEYS`):

    * ``zero_out=False`` (default, like a *trained* ControlNet, whose zero convs have learnt non-zero
      weights): the zero-conv / ``middle_block_out`` weights have std ``CONTROLNET_ZERO_CONV_GAIN / sqrt(fan_in)``
      (0.1), ``input_hint_block.14`` the plain LeCun std, the other hint convs ``CONTROLNET_HINT_GAIN`` (2) times
      it, biases zero. Measured with the tiny checkpoint (seed 0) and this ControlNet (seed 1), fp32, a 64x64
      photo as hint: residuals of std 0.17, 0.25, 0.23, 0.27 (skips) and 0.34 (middle), 12-20 % of the UNet
      activations they are added to (std 0.86, 1.8, 1.7, 2.3 and 2.9); at strength 1 they change the UNet's
      noise prediction by ~10 % of its std (t 100-999), another hint (uniform noise) by ~9 %, another seed
      by ~30 %; all finite;
    * ``zero_out=True`` (an *untrained* ControlNet, as ``tool_add_control.py`` makes one): those weights and
      biases are exact zeros, so every residual is zero and the sampled image is bit-identical to the one
      without the ControlNet.

    Sizes: "tiny" 51.3 M parameters (154 tensors; 4 zero convs of 320, 320, 320, 640 channels + a 640-channel
    middle one), 103 MB in fp16; "full" the real SD1.5 ControlNet, 361.3 M parameters (340 tensors, 12 zero
    convs + middle), 723 MB in fp16.

    Raises:
        ValueError: unknown ``size``.
        RuntimeError: ComfyUI would not load the result as an SD15 ControlNet of this size.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    import comfy.model_detection
    import comfy.supported_models

    sd: dict[str, torch.Tensor] = {}
    _init_module(_controlnet_module(size), "", seed, dtype, sd)
    last_hint = [k for k in sd if k.startswith(CONTROLNET_ZERO_CONV_KEYS[2])]
    for key in list(sd):
        if key.startswith(CONTROLNET_ZERO_CONV_KEYS) and zero_out:
            sd[key] = torch.zeros_like(sd[key])
        elif not key.endswith(".weight") or key in last_hint:
            continue
        elif key.startswith(CONTROLNET_ZERO_CONV_KEYS):
            sd[key] = (sd[key].float() * CONTROLNET_ZERO_CONV_GAIN).to(dtype).contiguous()
        elif key.startswith("input_hint_block."):
            sd[key] = (sd[key].float() * CONTROLNET_HINT_GAIN).to(dtype).contiguous()

    # what comfy.controlnet.load_controlnet_state_dict will infer from these keys
    model_config = comfy.model_detection.model_config_from_unet(sd, "", True)
    if type(model_config) is not comfy.supported_models.SD15:
        raise RuntimeError(f"random_sd15: ComfyUI detects this ControlNet as {type(model_config).__name__}, "
                           f"not SD15")
    detected = dict(model_config.unet_config)
    detected.pop("out_channels", None)
    detected.pop("transformer_depth_output", None)
    detected["hint_channels"] = sd["input_hint_block.0.weight"].shape[1]
    if detected != controlnet_unet_config(size):
        raise RuntimeError(f"random_sd15: ComfyUI would build the ControlNet with {detected}, "
                           f"not {controlnet_unet_config(size)}")
    return sd


def write_controlnet(path, size: str = "tiny", seed: int = 0, dtype=torch.float16,
                     zero_out: bool = False) -> pathlib.Path:
    """Build (:func:`build_controlnet_state_dict`) and write a random SD1.5 ControlNet as ``.safetensors``.

    The metadata is ``{"ptalk.random_sd15": '{"kind": "controlnet", "size": ..., "seed": ..., "dtype": ...,
    "zero_out": ...}'}``; the same arguments give a byte-identical file. Sizes in fp16: "tiny" 103 MB,
    "full" 723 MB. Parent directories are created. (Avoid a name ending in ``_shuffle``: ComfyUI's loader
    turns on global average pooling for those.)

    Returns:
        the resolved path written.
    """
    from safetensors.torch import save_file

    path = pathlib.Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = build_controlnet_state_dict(size=size, seed=seed, dtype=dtype, zero_out=zero_out)
    meta = {"ptalk.random_sd15": json.dumps({"kind": "controlnet", "size": size, "seed": int(seed),
                                             "dtype": str(dtype), "zero_out": bool(zero_out)})}
    tmp = path.with_name(path.name + ".part")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _main(argv=None) -> int:
    """``python -m ptalk_harness.random_sd15``: write a random checkpoint or ControlNet."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ptalk_harness.random_sd15",
                                 description="Write a randomly initialised SD1.5 checkpoint (.safetensors), or "
                                             "with --controlnet a random SD1.5 ControlNet (v1.1 layout).")
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--size", choices=_SIZES, default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    ap.add_argument("--controlnet", action="store_true",
                    help="write an SD1.5 ControlNet (control_v11p_sd15_* layout) instead of a checkpoint")
    ap.add_argument("--zero-out", action="store_true",
                    help="with --controlnet: zero zero_convs / middle_block_out / the hint block's last conv "
                         "(an untrained ControlNet, which leaves the UNet output unchanged)")
    a = ap.parse_args(argv)
    if a.zero_out and not a.controlnet:
        ap.error("--zero-out needs --controlnet")
    prepare()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    t0 = time.perf_counter()
    if a.controlnet:
        p = write_controlnet(a.out, size=a.size, seed=a.seed, dtype=dtype, zero_out=a.zero_out)
    else:
        p = write_sd15_checkpoint(a.out, size=a.size, seed=a.seed, dtype=dtype)
    print(f"{p}: {p.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
