"""Draw Landmarks node: PTALK_LANDMARKS → IMAGE (face-mesh drawing for ControlNets or inspection)."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.draw import STYLES, draw_landmarks
from .comfy_adapter import CATEGORY, Landmarks, image_to_numpy, node_error, numpy_to_image

NODE = "Draw Landmarks"


class DrawLandmarks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkDrawLandmarks",
            display_name="Draw Landmarks (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Draws MediaPipe face landmarks as images: on black (what MediaPipe-face / landmark ControlNets "
                "expect) or over the given frames for inspection. One output image per landmark frame."),
            inputs=[
                Landmarks.Input("landmarks", tooltip="PTALK_LANDMARKS to draw, one image per frame."),
                io.Combo.Input("style", options=list(STYLES), default=STYLES[0],
                               tooltip="controlnet: coloured face oval, eyes, brows, irises and lips on black "
                                       "(MediaPipe-face ControlNet look); mesh: full face-mesh tesselation too."),
                io.Int.Input("thickness", default=0, min=0, max=16,
                             tooltip="Line thickness in pixels; 0 = scale with the image size."),
                io.Image.Input("images", optional=True,
                               tooltip="Optional frames to draw over (one, or as many as landmark frames); "
                                       "without them the drawing is on black at the landmarks' image size."),
            ],
            outputs=[io.Image.Output("image")],
        )

    @classmethod
    def execute(cls, landmarks, style, thickness, images=None) -> io.NodeOutput:
        frames = None
        if images is not None:
            frames = image_to_numpy(images, NODE, "images")
            if len(frames) not in (1, len(landmarks)):
                raise node_error(NODE, "images", f"{len(frames)} images for {len(landmarks)} landmark frames; "
                                 "give one image or exactly one per frame")
        out = draw_landmarks(landmarks, frames, style=style, thickness=thickness or None)
        return io.NodeOutput(numpy_to_image(out))


NODES = [DrawLandmarks]
