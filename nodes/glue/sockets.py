"""The pack's node category and its ComfyUI socket types: each ``io.Custom`` type names what one engine object
travels between nodes as (landmark sequences, face embeddings, IdentityNet and AnimateNet weights, dubbing plans).
"""
from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "PortraitTalk"

#: ComfyUI socket type carrying a :class:`ptalk_models.landmarks.FaceLandmarks`.
Landmarks = io.Custom("PTALK_LANDMARKS")

#: ComfyUI socket type carrying a :class:`ptalk_models.identity.FaceEmbedding`.
FaceEmbed = io.Custom("PTALK_FACE_EMBED")

#: ComfyUI socket type carrying a :class:`ptalk_models.identitynet.IdentityNet`.
IdentityNetType = io.Custom("PTALK_IDENTITYNET")

#: ComfyUI socket type carrying a :class:`ptalk_models.animatenet.AnimateNet`.
AnimateNetType = io.Custom("PTALK_ANIMATENET")

#: ComfyUI socket type carrying a dubbing plan: the target landmarks (FaceLandmarks, one per output frame), the
#: source-video frame index of each output frame (int ``[N]``, decode order) and the output fps.
DubPlan = io.Custom("PTALK_DUB_PLAN")
