"""Contour Guide node: IMAGE batch (+ landmarks, reference) → head-contour edge map IMAGE + head MASK."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.contour import ContourInputError, head_contour
from ..ptalk_models.memory import batch_fit_problem, image_batch_bytes
from .glue.convert import image_to_numpy, numpy_to_image, numpy_to_mask
from .glue.errors import node_error, node_error_from
from .glue.progress import Progress
from .glue.sockets import CATEGORY, Landmarks

NODE = "Contour Guide"
SOURCE_OPTIONS = {"this frame": "same", "previous frame": "previous"}


class ContourGuide(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkContourGuide",
            display_name="Contour Guide (PortraitTalk)",
            category=CATEGORY,
            description=(
                "PortraitTalk's head-contour condition (paper §III-B: a coarse Canny edge map of the previous frame "
                "or the reference, with reduced sensitivity to local details): the outline of the head's coarse "
                "silhouette, no facial features. The head region is downscaled and smoothed, segmented with "
                "OpenCV GrabCut seeded by the MediaPipe face landmarks, merged with the face oval (jaw line), "
                "smoothed, and its boundary traced with OpenCV Canny. Outputs a white-on-black edge map "
                "(3-channel, for ControlNets) and the head mask. A frame without a face gives a black map. Memory "
                "besides the input batch, while it runs: up to 60 bytes per pixel per frame (converting the frames "
                "to uint8, the edge maps, the float32 IMAGE and MASK), checked against the free memory first."),
            inputs=[
                io.Image.Input("images", tooltip="Frames (or a single reference portrait) to outline; any size, "
                                                 "gray/RGBA accepted."),
                io.Int.Input("detail", default=128, min=32, max=512, step=8,
                             tooltip="Detail level: the head region (about 2x the face height) is downscaled to "
                                     "this many pixels before segmentation. Lower = coarser outline."),
                io.Float.Input("smoothing", default=0.06, min=0.0, max=0.3, step=0.01,
                               tooltip="Outline smoothing as a fraction of the face height (morphological "
                                       "open/close + blur of the head mask). Higher = rounder, fewer notches."),
                io.Int.Input("thickness", default=0, min=0, max=32,
                             tooltip="Line thickness in pixels; 0 = automatic (3 px at 512, scaled with the "
                                     "short side)."),
                io.Boolean.Input("use_face_oval", default=True,
                                 tooltip="Merge the landmarks' face oval: the jaw line becomes the lower outline "
                                         "and neck/shoulders are left out. Off: image silhouette only, cut flat "
                                         "below the chin."),
                io.Combo.Input("source", options=list(SOURCE_OPTIONS), default="this frame",
                               tooltip="this frame: guide t from frame t. previous frame (the paper's use): guide t "
                                       "from frame t-1, and guide 0 from the reference image if connected, else "
                                       "from frame 0."),
                io.Combo.Input("on_missing", options=["empty", "error"], default="empty",
                               tooltip="A frame with no detectable face (e.g. all black): 'empty' gives a black "
                                       "edge map and empty mask; 'error' stops with the frame number."),
                Landmarks.Input("landmarks", optional=True,
                                tooltip="Landmarks of the images (from Face Landmarks), one per frame or one for "
                                        "all. When not connected they are detected with MediaPipe."),
                io.Image.Input("reference", optional=True,
                               tooltip="Reference portrait for guide 0 when source = previous frame (same aspect "
                                       "ratio as the frames; resized to their size). Ignored for this frame."),
            ],
            outputs=[
                io.Image.Output("contour", tooltip="Head outline, white on black, 3-channel (Canny-ControlNet style)."),
                io.Mask.Output("head_mask", tooltip="Filled head region bounded by the outline."),
            ],
        )

    @classmethod
    def execute(cls, images, detail, smoothing, thickness, use_face_oval, source, on_missing, landmarks=None,
                reference=None) -> io.NodeOutput:
        if getattr(images, "ndim", 0) in (3, 4):
            # pre-flight: converting the frames to uint8 (up to 13 bytes a value while converting), the uint8
            # edge maps and masks, the 3-channel float32 contour IMAGE and the float32 MASK
            t, h, w = (int(x) for x in images.shape[:3])
            need = image_batch_bytes(t, h, w, itemsize=13) + image_batch_bytes(t, h, w, channels=1, itemsize=21)
            problem = batch_fit_problem(f"Outlining {t} frames of {w}x{h} (IMAGE and MASK batches, float32)", need,
                                        "There is no streamed contour node: outline fewer frames at once (a "
                                        "shorter clip) or smaller frames.")
            if problem:
                raise node_error(NODE, "images", problem)
        frames = image_to_numpy(images, NODE, "images")
        ref = image_to_numpy(reference, NODE, "reference") if reference is not None else None
        if source not in SOURCE_OPTIONS:
            raise node_error(NODE, "source", f"unknown option {source!r}; pick one of {list(SOURCE_OPTIONS)}")
        try:
            edges, masks = head_contour(frames, landmarks, detail=detail, smoothing=smoothing, thickness=thickness,
                                        use_face_oval=use_face_oval, source=SOURCE_OPTIONS[source], reference=ref,
                                        on_missing=on_missing, progress=Progress(len(frames)))
        except ContourInputError as e:  # head_contour's arguments have this node's input names
            raise node_error_from(NODE, e, {}) from None
        return io.NodeOutput(numpy_to_image(edges[..., None].repeat(3, axis=-1)), numpy_to_mask(masks))


NODES = [ContourGuide]
