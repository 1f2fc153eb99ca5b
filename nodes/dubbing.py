"""Visual dubbing nodes (PersonaTalk-style, CPU preview path): Audio → Dub Landmarks and Dub Render."""
from __future__ import annotations

import logging

import numpy as np
from comfy_api.latest import io

from ..ptalk_models.audio2landmarks import BACKENDS, generate_landmarks
from ..ptalk_models.dub_render import render_dub
from ..ptalk_models.dubbing import (LENGTH_POLICIES, apply_length_policy, closed_mouth_frame, dub_landmarks,
                                    smooth_landmarks)
from ..ptalk_models.landmarks import FaceLandmarks
from .comfy_adapter import (CATEGORY, Landmarks, Progress, audio_to_numpy, image_to_numpy, node_error,
                            numpy_to_image)

log = logging.getLogger("PortraitTalk")
DUB, RENDER = "Audio → Dub Landmarks", "Dub Render"


class DubLandmarks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkDubLandmarks",
            display_name="Audio → Dub Landmarks (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Visual dubbing, motion part (PersonaTalk-style): the video's own landmarks (Face Landmarks on its "
                "frames) keep their head pose, eyes and upper face; mouth and jaw follow the new speech — "
                "audio-driven landmarks generated on the speaker's closed-mouth frame, applied relative to each "
                "frame's head pose and scaled to the mouth range the speaker shows in the video (persona). The "
                "length policy maps video frames to the audio's length."),
            inputs=[
                Landmarks.Input("landmarks", tooltip="Landmarks of the source video's frames (Face Landmarks with "
                                                     "on_missing = keep; faceless frames pass through)."),
                io.Audio.Input("audio", tooltip="The new speech."),
                io.Float.Input("fps", default=25.0, min=1.0, max=120.0, step=0.001,
                               tooltip="The source video's frame rate (wire Get Video Components' fps)."),
                io.Combo.Input("length_policy", options=list(LENGTH_POLICIES), default="hold",
                               tooltip="When audio and video lengths differ: trim (the shorter wins), loop the "
                                       "video, ping-pong it, or hold its last frame. Output length = the audio's "
                                       "(trim: the shorter)."),
                io.Float.Input("smoothing", default=1.0, min=0.0, max=5.0, step=0.1,
                               tooltip="Temporal smoothing of the detected landmarks (Gaussian sigma in frames)."),
                io.Boolean.Input("persona", default=True,
                                 tooltip="Scale the mouth motion to the range this speaker shows in the video."),
                io.Float.Input("expressiveness", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Mouth amplitude of the audio-driven motion (1 = natural)."),
                io.Combo.Input("backend", options=list(BACKENDS), default=next(iter(BACKENDS)),
                               tooltip="Audio→motion model (the embedded pocketsphinx phoneme backend)."),
                io.String.Input("transcript", default="", multiline=True, optional=True,
                                tooltip="Optional English text of the new speech (forced alignment)."),
            ],
            outputs=[
                Landmarks.Output("dubbed_landmarks", tooltip="Dubbed landmarks, one per output frame."),
                Landmarks.Output("aligned_source", tooltip="The (smoothed) source landmarks of the same output "
                                                           "frames — for Dub Render's source_landmarks."),
                io.Float.Output("fps_out", display_name="fps", tooltip="Frame rate, for Create Video."),
            ],
        )

    @classmethod
    def execute(cls, landmarks, audio, fps, length_policy, smoothing, persona, expressiveness, backend,
                transcript="") -> io.NodeOutput:
        wav, sr = audio_to_numpy(audio, DUB, "audio")
        if not np.asarray(landmarks.present).any():
            raise node_error(DUB, "landmarks", "no frame of the video has a face; nothing to dub")
        src = smooth_landmarks(landmarks, smoothing) if smoothing > 0 else landmarks
        rest = src.frame(closed_mouth_frame(src))
        try:
            driven = generate_landmarks(wav, sr, rest, fps=fps, expressiveness=expressiveness,
                                        transcript=transcript or "", backend=backend, blink=False, head_motion=False)
        except ValueError as e:
            raise node_error(DUB, "audio", str(e)) from None
        idx = apply_length_policy(len(src), len(driven), length_policy)
        driven = driven.frames(0, len(idx))
        mapped = FaceLandmarks.from_points(src.points[idx], src.image_size, fps, src.present[idx],
                                           dict(src.meta, source_index=idx.tolist()))
        dubbed = dub_landmarks(mapped, driven, rest=rest, persona=bool(persona))
        dubbed.meta["source_index"] = idx.tolist()
        return io.NodeOutput(dubbed, mapped, float(fps))


class DubRender(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkDubRender",
            display_name="Dub Render (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Visual dubbing, CPU preview render: each output frame is its source video frame with only the lower "
                "face (mouth, jaw, chin) warped from the source landmarks to the dubbed ones (the foundation's "
                "piecewise-affine warp, mouth cavity and teeth), pasted back with a feathered mask and a colour "
                "match. Pixels outside the region are bit-identical to the source; faceless frames pass through."),
            inputs=[
                io.Image.Input("images", tooltip="The source video's frames (Get Video Components)."),
                Landmarks.Input("source_landmarks", tooltip="From Audio → Dub Landmarks (aligned_source)."),
                Landmarks.Input("landmarks", tooltip="From Audio → Dub Landmarks (dubbed_landmarks)."),
                io.Float.Input("feather", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Width of the blend band, in inter-ocular distances."),
                io.Boolean.Input("color_match", default=True,
                                 tooltip="Match the warped region's colour statistics to the surrounding skin."),
            ],
            outputs=[io.Image.Output("images_out", display_name="images",
                                     tooltip="The dubbed frames, one per landmark frame.")],
        )

    @classmethod
    def execute(cls, images, source_landmarks, landmarks, feather, color_match) -> io.NodeOutput:
        frames = image_to_numpy(images, RENDER, "images")
        idx = np.asarray(landmarks.meta.get("source_index", range(len(landmarks))), np.int64)
        if len(idx) != len(landmarks) or len(source_landmarks) != len(landmarks):
            raise node_error(RENDER, "source_landmarks", "source_landmarks and landmarks must both come from the same "
                                                         "Audio → Dub Landmarks node")
        if len(idx) and idx.max() >= len(frames):
            raise node_error(RENDER, "images", f"the landmarks index frame {int(idx.max())} but only {len(frames)} "
                                               "images are connected: connect the frames the landmarks were made from")
        h, w = frames.shape[1:3]
        if abs(landmarks.image_size[0] / landmarks.image_size[1] - w / h) > 0.01:
            raise node_error(RENDER, "images", f"{w}x{h} frames, but the landmarks are for "
                                               f"{landmarks.image_size[0]}x{landmarks.image_size[1]}")
        out = render_dub((frames[i] for i in idx), source_landmarks, landmarks, progress=Progress(len(idx)),
                         feather=feather, color_match=bool(color_match))
        return io.NodeOutput(numpy_to_image(out))


NODES = [DubLandmarks, DubRender]
