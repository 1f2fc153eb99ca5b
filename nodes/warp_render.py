"""Landmark Warp Render nodes: reference IMAGE + PTALK_LANDMARKS sequence → IMAGE frames, or a streamed VIDEO."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..ptalk_models.errors import InputError
from ..ptalk_models.face import NoFaceError, detect_landmarks
from ..ptalk_models.memory import batch_fit_problem, image_batch_bytes
from ..ptalk_models.mouth_texture import paste_mouths
from ..ptalk_models.render import MOUTH_FILLS, WarpRenderer, check_aspect, even_dims, iter_render
from .glue.convert import audio_to_numpy, image_to_numpy
from .glue.errors import node_error, node_error_from
from .glue.progress import Progress
from .glue.sockets import CATEGORY, Landmarks
from .glue.video import StreamedTalkingVideo

NODE = "Landmark Warp Render"
NODE_VIDEO = "Landmark Warp Render → Video"

_DESCRIPTION = (
    "Instant CPU preview renderer: warps the reference portrait to each frame's landmarks (piecewise-affine over "
    "the MediaPipe face-mesh triangles, OpenCV remap) inside a face crop feathered into the untouched background, "
    "and fills the opened mouth (dark cavity, teeth). Any size and aspect ratio; only the face crop is rendered "
    "per frame, so a large photo costs about what a 512x512 one does.")

#: What the IMAGE-batch node's memory error recommends instead.
STREAMED_ALTERNATIVE = (
    "Use Landmark Warp Render → Video (PortraitTalk) into Save Video instead (workflows/talking_photo.json): it "
    "renders while Save Video encodes and needs one frame of memory for any speech length. Or shorten the "
    "speech, or resize the portrait.")


def _inputs():
    return [
        io.Image.Input("reference_image", tooltip="The portrait the landmarks were animated from (first image used)."),
        Landmarks.Input("landmarks", tooltip="The landmark sequence to render (e.g. from Audio → Landmarks)."),
        io.Combo.Input("mouth_fill", options=list(MOUTH_FILLS), default=MOUTH_FILLS[0],
                       tooltip="What to paint where the lips open wider than in the portrait."),
        io.Boolean.Input("even_size", default=True,
                         tooltip="Crop one pixel row/column when the height/width is odd: H.264 video (Save "
                                 "Video, Video Combine) needs even sizes. Off keeps the portrait's exact size."),
        Landmarks.Input("reference_landmarks", optional=True,
                        tooltip="Landmarks of reference_image (from Face Landmarks). When not connected they are "
                                "detected, keeping the face closest to the sequence's first frame."),
    ]


def _mouth_input():
    """The optional reference photos for the talking photo's own mouth (last input: saved workflows keep their
    slots)."""
    return (
        io.Image.Input("mouth_references", optional=True,
                       tooltip="Optional photos of the same person with other mouth shapes (open, teeth showing, "
                               "rounded lips: an IMAGE batch, e.g. a few frames of a video of the person, or "
                               "photos joined with Image Batch): each frame's mouth — lips, real teeth, inside "
                               "— is taken from the photo (or the portrait) whose mouth shape best matches it, "
                               "warped into shape and blended in, chosen so the texture does not flicker; the "
                               "painted mouth_fill remains only where no photo opens wide enough. Not connected: "
                               "mouth_fill paints the opened mouth."))


#: The node input each rejected :mod:`ptalk_models.render` argument came from (``WarpRenderer``'s
#: ``reference_image`` / ``reference`` / ``mouth_fill``, ``iter_render``'s ``sequence``, ``render_patch``'s
#: ``points``: one frame of the sequence).
RENDER_INPUTS = {"reference_image": "reference_image", "reference": "reference_landmarks", "mouth_fill": "mouth_fill",
                 "sequence": "landmarks", "points": "landmarks"}


def _render_error(node: str, e: ValueError):
    """The NodeInputError for a render engine ValueError: an :class:`InputError` names the input its argument
    came from (:data:`RENDER_INPUTS`); any other ValueError is reported on ``landmarks``."""
    if isinstance(e, InputError):
        return node_error_from(node, e, RENDER_INPUTS)
    return node_error(node, "landmarks", str(e))


def _mouth_bank(node, ref, ref_lm, mouth_references):
    """The talking photo's mouth bank (:func:`ptalk_models.mouth_texture.build_photo_bank`) from the portrait and
    the ``mouth_references`` photos (None when not connected): each photo's landmarks detected (its largest
    face); a photo without a face is a node error on ``mouth_references``."""
    if mouth_references is None:
        return None
    from ..ptalk_models.mouth_texture import build_photo_bank

    photos = [ref] + list(image_to_numpy(mouth_references, node, "mouth_references"))
    lms = [ref_lm]
    for i, photo in enumerate(photos[1:]):
        try:
            lms.append(detect_landmarks(photo))
        except NoFaceError:
            raise node_error(node, "mouth_references", f"no face found in photo {i + 1} of {len(photos) - 1} "
                                                       f"({photo.shape[1]}x{photo.shape[0]}); use photos where "
                                                       "the face is clearly visible, or leave it out") from None
    try:
        return build_photo_bank(photos, lms)
    except InputError as e:
        raise node_error_from(node, e, {"photos": "mouth_references", "landmarks": "mouth_references"}) from None


def _prepare(node, reference_image, landmarks, reference_landmarks):
    """Validated (uint8 reference [H, W, 3], reference FaceLandmarks) for both render nodes."""
    ref = image_to_numpy(reference_image, node, "reference_image")[0]
    h, w = ref.shape[:2]
    try:
        check_aspect((w, h), landmarks.image_size, "reference_image", "landmarks")
    except ValueError as e:
        raise node_error(node, "landmarks", f"{e}. Connect the same image that fed Face Landmarks") from None
    if reference_landmarks is None:
        try:
            reference_landmarks = detect_landmarks(ref, previous=landmarks.points[0])
        except NoFaceError as e:
            raise node_error(node, "reference_image", str(e)) from None
    return ref, reference_landmarks


class LandmarkWarpRender(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkLandmarkWarpRender",
            display_name="Landmark Warp Render (PortraitTalk)",
            category=CATEGORY,
            description=_DESCRIPTION + " Output: an IMAGE batch for Create Video / Video Combine / upscalers. "
                        "Memory: the whole batch at once, frames x height x width x 3 x 4 bytes (float32) — 10 s "
                        "at 25 fps is 0.8 GB for a 512x512 portrait and 6.4 GB for a 970x2204 phone photo, one "
                        "minute six times that. The node checks the estimate against the free memory first and "
                        "stops with an error naming it; for long speech or large photos use Landmark Warp "
                        "Render → Video (one frame of memory).",
            inputs=_inputs() + [_mouth_input()],
            outputs=[io.Image.Output("images", tooltip="One frame per landmark frame (float32 IMAGE batch: "
                                                       "frames x H x W x 3 x 4 bytes of memory).")],
        )

    @classmethod
    def execute(cls, reference_image, landmarks, mouth_fill, even_size, reference_landmarks=None,
                mouth_references=None) -> io.NodeOutput:
        ref, ref_lm = _prepare(NODE, reference_image, landmarks, reference_landmarks)
        bank = _mouth_bank(NODE, ref, ref_lm, mouth_references)
        T = len(landmarks)
        h, w = even_dims(*ref.shape[:2]) if even_size else ref.shape[:2]
        # pre-flight: the float32 batch plus one uint8 and one float32 frame of scratch
        need = image_batch_bytes(T, h, w) + image_batch_bytes(1, h, w, itemsize=5)
        problem = batch_fit_problem(f"The IMAGE batch of {T} frames of {w}x{h} (float32, frames x H x W x 3 x 4 "
                                    "bytes)", need, STREAMED_ALTERNATIVE)
        if problem:
            raise node_error(NODE, "landmarks", problem)
        try:
            renderer = WarpRenderer(ref, ref_lm, mouth_fill=mouth_fill)
            frames = iter_render(renderer, landmarks, even_size=even_size, patches=True)
            if bank is not None:
                frames = paste_mouths(frames, landmarks, bank, (renderer.width, renderer.height))
            # filled frame by frame straight into the float32 batch (no uint8 copy of the whole video): the
            # unchanged photo, then the rendered face crop (the same values as converting whole frames)
            images = torch.empty((T, h, w, 3), dtype=torch.float32)
            background = torch.from_numpy(np.ascontiguousarray(renderer.image[:h, :w])).float().div_(255.0)
            progress = Progress(T)
            for i, f in enumerate(frames):
                images[i] = background
                ph, pw = f.patch.shape[:2]
                if ph and pw:
                    images[i, f.y:f.y + ph, f.x:f.x + pw] = torch.from_numpy(
                        np.ascontiguousarray(f.patch)).float().div_(255.0)
                progress(i + 1, T)
        except ValueError as e:
            raise _render_error(NODE, e) from None
        return io.NodeOutput(images)


class LandmarkWarpRenderVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkLandmarkWarpRenderVideo",
            display_name="Landmark Warp Render → Video (PortraitTalk)",
            category=CATEGORY,
            description=_DESCRIPTION + " Output: a VIDEO for Save Video whose frames are rendered while it is "
                        "encoded, one at a time, so minutes of speech need no more memory than seconds (10 minutes "
                        "on a 970x2204 photo: under 2.5 GB for the whole ComfyUI process). Each frame is only the "
                        "face crop, composited into the unchanged photo inside the encoder. The default for the "
                        "talking photo; use Landmark Warp Render (IMAGE batch) only to feed upscalers or VHS.",
            inputs=_inputs() + [
                io.Audio.Input("audio", optional=True, tooltip="Soundtrack muxed into the video (trimmed to it)."),
                _mouth_input(),
            ],
            outputs=[io.Video.Output("video", tooltip="Streamed talking-face video (H.264 + AAC when saved).")],
        )

    @classmethod
    def execute(cls, reference_image, landmarks, mouth_fill, even_size, reference_landmarks=None,
                mouth_references=None, audio=None) -> io.NodeOutput:
        ref, ref_lm = _prepare(NODE_VIDEO, reference_image, landmarks, reference_landmarks)
        bank = _mouth_bank(NODE_VIDEO, ref, ref_lm, mouth_references)
        if landmarks.fps <= 0:
            raise node_error(NODE_VIDEO, "landmarks", "has no frame rate (a still's landmarks); connect the "
                             "output of Audio → Landmarks")
        wav = audio_to_numpy(audio, NODE_VIDEO, "audio") if audio is not None else None
        try:  # built here, so a bad reference is reported by this node and not later inside Save Video
            renderer = WarpRenderer(ref, ref_lm, mouth_fill=mouth_fill)
        except ValueError as e:
            raise _render_error(NODE_VIDEO, e) from None
        return io.NodeOutput(StreamedTalkingVideo(renderer, landmarks, even_size, wav, bank))


NODES = [LandmarkWarpRender, LandmarkWarpRenderVideo]
