"""Draw Landmarks node: PTALK_LANDMARKS → IMAGE (face-mesh drawing for ControlNets or inspection)."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.draw import STYLES, draw_landmarks
from ..ptalk_models.memory import batch_fit_problem, image_batch_bytes
from .glue.convert import image_to_numpy, numpy_to_image
from .glue.errors import node_error
from .glue.sockets import CATEGORY, Landmarks

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
                "expect) or over the given frames for inspection. One output image per landmark frame. Memory: "
                "the whole IMAGE batch, frames x height x width x 3 x (4 + 1) bytes while it is made (10 s at "
                "25 fps and 512x512: 1 GB); the node checks this against the free memory first."),
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
        # pre-flight: the uint8 drawing and its float32 IMAGE (5 bytes a value), plus converting the frames
        # drawn over to uint8 (up to 13 bytes a value while converting)
        n = len(landmarks)
        if images is not None and getattr(images, "ndim", 0) in (3, 4):
            n_in, h, w = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        else:
            n_in, (w, h) = 0, landmarks.image_size
        need = image_batch_bytes(n, h, w, itemsize=5) + image_batch_bytes(n_in, h, w, itemsize=13)
        problem = batch_fit_problem(f"Drawing {n} frames of {w}x{h} as an IMAGE batch (float32)", need,
                                    "There is no streamed drawing node: draw fewer frames at once (a shorter "
                                    "sequence) or at a smaller size; to make a talking-photo video use Landmark "
                                    "Warp Render → Video, which streams.")
        if problem:
            raise node_error(NODE, "landmarks", problem)
        frames = None
        if images is not None:
            frames = image_to_numpy(images, NODE, "images")
            if len(frames) not in (1, len(landmarks)):
                raise node_error(NODE, "images", f"{len(frames)} images for {len(landmarks)} landmark frames; "
                                 "give one image or exactly one per frame")
        out = draw_landmarks(landmarks, frames, style=style, thickness=thickness or None)
        return io.NodeOutput(numpy_to_image(out))


NODES = [DrawLandmarks]
