"""Text Encode node: CLIP + prompt (+ face embed and IdentityNet) → CONDITIONING carrying the face tokens —
the paper's condition set c = {text tokens, face tokens} (§III-A)."""
from __future__ import annotations

import numpy as np
from comfy_api.latest import io

from ..ptalk_models.identitynet import IdentityNetFormatError
from .glue.convert import numpy_to_image
from .glue.errors import node_error
from .glue.identity_patch import attach_face_tokens
from .glue.patcher import load_module
from .glue.sockets import CATEGORY, FaceEmbed, IdentityNetType

NODE = "Text Encode"


def face_tokens_or_none(node: str, net, face_embed, clip_vision):
    """Face tokens ``[1, N, T]`` (float32, CPU) of a PTALK_FACE_EMBED's mean embedding through ``net``'s
    projection, or None without a face embed. FaceID-Plus nets also take CLIP-vision features: penultimate
    hidden states of the 224-px ArcFace-aligned faces with background (``face_images``, InsightFace
    ``norm_crop`` style, what IP-Adapter-FaceID-Plus was trained on), averaged over the reference images.
    Raises NodeInputError naming the input to fix."""
    import torch

    if face_embed is None:
        return None
    if net is None:
        raise node_error(node, "identitynet", "a face_embed needs an IdentityNet to turn it into face tokens: "
                                              "connect IdentityNet Loader")
    mean = np.asarray(face_embed.mean, np.float32)
    if not np.isfinite(mean).all():
        raise node_error(node, "face_embed", "the face embed has no face (all reference images were faceless): "
                                             "give Face Embed photos with a clearly visible face")
    clip_embeds = None
    if net.needs_clip_vision:
        if clip_vision is None:
            raise node_error(node, "clip_vision", f"{net.source} is FaceID-PlusV2: connect a CLIP vision model "
                                                  "(ViT-H, Load CLIP Vision)")
        faces = face_embed.face_images if face_embed.face_images is not None else face_embed.crops
        faces = faces[np.asarray(face_embed.present, bool)]
        clip_embeds = clip_vision.encode_image(numpy_to_image(faces)).penultimate_hidden_states
        clip_embeds = clip_embeds.float().mean(0, keepdim=True).cpu()
    load_module(net)  # fully on one device (a lowvram partial load may have split it)
    try:
        with torch.no_grad():
            return net.face_tokens(torch.from_numpy(mean)[None], clip_embeds).float().cpu()
    except IdentityNetFormatError as e:
        raise node_error(node, "face_embed", str(e)) from None


class TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkTextEncode",
            display_name="Text Encode (PortraitTalk)",
            category=CATEGORY,
            description=(
                "CLIP text encoding of the prompt, plus — with a face embed and an IdentityNet — the identity: the "
                "face embedding goes through IdentityNet's projection to face tokens that travel inside the "
                "CONDITIONING with the text (the paper's condition set c, §III-A). IdentityNet Apply / Sampler read "
                "them per conditioning: use this with the face embed for the positive and without it for the "
                "negative (no identity). Other conditioning nodes (combine, area, timestep range) keep the tokens."),
            inputs=[
                io.Clip.Input("clip", tooltip="CLIP text encoder of the SD1.5 checkpoint."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="Prompt, e.g. 'portrait photo, red hair, older, in a library at night'."),
                FaceEmbed.Input("face_embed", optional=True,
                                tooltip="Identity (Face Embed; the mean of its reference images is used). Needs "
                                        "identitynet. Leave empty for the negative prompt."),
                IdentityNetType.Input("identitynet", optional=True,
                                      tooltip="IdentityNet whose projection makes the face tokens (the same one the "
                                              "model is patched with)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP vision (ViT-H) — only for FaceID-PlusV2 weights."),
            ],
            outputs=[io.Conditioning.Output("conditioning",
                                            tooltip="Text conditioning; with face tokens under 'ptalk_identity' "
                                                    "when a face embed is given.")],
        )

    @classmethod
    def execute(cls, clip, text, face_embed=None, identitynet=None, clip_vision=None) -> io.NodeOutput:
        if clip is None:
            raise node_error(NODE, "clip", "no CLIP model: the checkpoint has no text encoder; load one with Load "
                                           "CLIP")
        tokens = face_tokens_or_none(NODE, identitynet, face_embed, clip_vision)
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        if tokens is not None:
            conditioning = attach_face_tokens(conditioning, tokens)
        return io.NodeOutput(conditioning)


NODES = [TextEncode]
