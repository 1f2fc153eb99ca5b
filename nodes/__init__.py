"""PortraitTalk's ComfyUI nodes (V3 schema): the list of every node class, ``NODE_LIST``.

Thin classes over ``ptalk_models``, one file per pipeline stage, each exporting its node classes as ``NODES``;
everything that touches ComfyUI internals lives in ``glue/``."""
from . import (adfd_score, animatenet, audio_landmarks, contour_guide, draw_landmarks, dub_diffusion, dubbing,
               face_embed, face_landmarks, identitynet, text_encode, warp_render)

NODE_LIST = [
    *face_landmarks.NODES,
    *face_embed.NODES,
    *audio_landmarks.NODES,
    *contour_guide.NODES,
    *draw_landmarks.NODES,
    *warp_render.NODES,
    *adfd_score.NODES,
    *text_encode.NODES,
    *identitynet.NODES,
    *animatenet.NODES,
    *dubbing.NODES,
    *dub_diffusion.NODES,
]
