"""IdentityNet nodes (paper §III-A): IdentityNet Loader (weights file → PTALK_IDENTITYNET), IdentityNet Apply
(MODEL → MODEL clone with the face cross-attention patches) and IdentityNet Sampler (apply + ComfyUI sampling +
VAE decode)."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.identitynet import IdentityNetFormatError, load_identitynet
from .glue.errors import node_error
from .glue.folders import identitynet_options, resolve_identitynet
from .glue.identity_patch import apply_identitynet
from .glue.sampling import sample_latent, sampling_inputs
from .glue.sockets import CATEGORY, FaceEmbed, IdentityNetType
from .text_encode import face_tokens_or_none

LOADER, APPLY, SAMPLER = "IdentityNet Loader", "IdentityNet Apply", "IdentityNet Sampler"


def _strength_inputs():
    return [
        io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.05,
                       tooltip="Scale of the face term of the decoupled cross-attention (Attn(Q,K,V) + strength · "
                               "Attn(Q,K_face,V_face)). 0 = the model unchanged (bit-identical)."),
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Sampling progress (0 = first step) from which the identity is applied."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Sampling progress after which the identity is no longer applied."),
    ]


def _fallback_inputs():
    return [
        FaceEmbed.Input("face_embed", optional=True,
                        tooltip="Optional identity for positive conditionings that carry none (e.g. from a core "
                                "CLIP Text Encode). Conditionings from PortraitTalk Text Encode with a face embed "
                                "keep their own; negatives never get this one."),
        io.ClipVision.Input("clip_vision", optional=True,
                            tooltip="CLIP vision model (ViT-H) — only for FaceID-PlusV2 weights, with face_embed."),
    ]


class IdentityNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkIdentityNetLoader",
            display_name="IdentityNet Loader (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Loads IdentityNet weights (paper §III-A: face projection + per-layer face key/value projections) "
                "from ComfyUI/models/portraittalk (our trainer's safetensors) or ComfyUI/models/ipadapter "
                "(IP-Adapter-FaceID SD1.5: ip-adapter-faceid_sd15.bin, ip-adapter-faceid-plusv2_sd15.bin, or "
                ".safetensors). Pickled files are read with torch.load(weights_only=True). Checks the "
                "architecture and says what is wrong (SDXL adapter, CLIP-image IP-Adapter, truncated file)."),
            inputs=[io.Combo.Input("weights", options=identitynet_options(),
                                   tooltip="portraittalk/<file> or ipadapter/<file>.")],
            outputs=[IdentityNetType.Output("identitynet", tooltip="PTALK_IDENTITYNET: the loaded weights (CPU).")],
        )

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        try:
            net = load_identitynet(resolve_identitynet(weights))
        except (FileNotFoundError, IdentityNetFormatError) as e:
            raise node_error(LOADER, "weights", str(e)) from None
        return io.NodeOutput(net)


class IdentityNetApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkIdentityNetApply",
            display_name="IdentityNet Apply (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Installs IdentityNet on a clone of the MODEL (the input MODEL is untouched): every UNet "
                "cross-attention gets decoupled cross-attention (§III-A; separate key/value for the face tokens, as "
                "IP-Adapter) through attn2 replace patches, so any KSampler, LoRA, scheduler or upscaler works. "
                "The identity travels with the conditioning: positives from PortraitTalk Text Encode with a face "
                "embed use their face tokens, negatives get none (zero face tokens)."),
            inputs=[io.Model.Input("model", tooltip="An SD1.5 MODEL (Load Checkpoint, after LoRAs)."),
                    IdentityNetType.Input("identitynet", tooltip="From IdentityNet Loader."),
                    *_strength_inputs(), *_fallback_inputs()],
            outputs=[io.Model.Output("patched_model", display_name="model", tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, identitynet, strength, start_percent, end_percent, face_embed=None,
                clip_vision=None) -> io.NodeOutput:
        tokens = face_tokens_or_none(APPLY, identitynet, face_embed, clip_vision)
        return io.NodeOutput(apply_identitynet(model, identitynet, strength, start_percent, end_percent, tokens,
                                               node=APPLY))


class IdentityNetSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkIdentityNetSampler",
            display_name="IdentityNet Sampler (PortraitTalk)",
            category=CATEGORY,
            description=(
                "The design card's IdentityNet Sampler: IdentityNet Apply + ComfyUI's own sampling (seed, steps, "
                "CFG, sampler, scheduler, denoise; progress bar, preview and Cancel as in KSampler) + VAE decode. "
                "With an init image and denoise < 1 it edits that portrait (attribute editing: 'red hair, older'); "
                "without, it generates width × height images of the identity in the positive conditioning."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 MODEL."),
                IdentityNetType.Input("identitynet", tooltip="From IdentityNet Loader."),
                io.Conditioning.Input("positive", tooltip="From PortraitTalk Text Encode with the face embed."),
                io.Conditioning.Input("negative", tooltip="From Text Encode without a face embed (no identity)."),
                io.Vae.Input("vae", tooltip="VAE to encode the init image and decode the result."),
                *sampling_inputs("Noise seed; same seed → same image.", 25, "Sampling steps.", 7.0,
                                 "Classifier-free guidance scale."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 = from pure noise; < 1 keeps that much of the init image."),
                *_strength_inputs(),
                io.Int.Input("width", default=512, min=64, max=4096, step=8,
                             tooltip="Width in pixels when there is no init image."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8,
                             tooltip="Height in pixels when there is no init image."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Images per run when there is no init image."),
                io.Image.Input("init_image", optional=True,
                               tooltip="Portrait to edit (its size is used, cropped to a multiple of 8); use "
                                       "denoise < 1."),
                *_fallback_inputs(),
            ],
            outputs=[io.Latent.Output("latent", tooltip="The sampled LATENT."),
                     io.Image.Output("image", tooltip="The decoded images, float [B, H, W, 3] in [0, 1].")],
        )

    @classmethod
    def execute(cls, model, identitynet, positive, negative, vae, seed, steps, cfg, sampler_name, scheduler,
                denoise, strength, start_percent, end_percent, width, height, batch_size, init_image=None,
                face_embed=None, clip_vision=None) -> io.NodeOutput:
        import torch

        tokens = face_tokens_or_none(SAMPLER, identitynet, face_embed, clip_vision)
        patched = apply_identitynet(model, identitynet, strength, start_percent, end_percent, tokens, node=SAMPLER)
        if init_image is not None:
            if init_image.ndim != 4 or init_image.shape[1] < 8 or init_image.shape[2] < 8:
                raise node_error(SAMPLER, "init_image", f"expected an IMAGE [B, H, W, C] of at least 8x8 pixels, got "
                                                        f"{tuple(init_image.shape)}")
            latent = {"samples": vae.encode(init_image[:, :, :, :3])}
        else:
            latent = {"samples": torch.zeros([batch_size, 4, height // 8, width // 8])}
        out = sample_latent(patched, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, denoise)
        return io.NodeOutput(out, vae.decode(out["samples"]))


NODES = [IdentityNetLoader, IdentityNetApply, IdentityNetSampler]
