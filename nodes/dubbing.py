"""Visual dubbing nodes (PersonaTalk-style, CPU preview path): Audio → Dub Landmarks and Dub Render (IMAGE
batches), and Dub Video (the same, streamed from a VIDEO to a VIDEO)."""
from __future__ import annotations

import logging

import numpy as np
from comfy_api.latest import io

from ..ptalk_models.audio2landmarks import BACKENDS
from ..ptalk_models.dub_render import render_dub
from ..ptalk_models.dubbing import DEFAULT_LENGTH_POLICY, LENGTH_POLICIES, LENGTH_POLICY_HELP, plan_dub
from ..ptalk_models.face import NoFaceError, track_landmarks
from ..ptalk_models.landmarks import FaceLandmarks
from ..ptalk_models.media import constant_rate_index, iter_video, video_info
from ..ptalk_models.memory import batch_fit_problem, image_batch_bytes
from .comfy_adapter import (CATEGORY, Landmarks, Progress, StreamedDubVideo, audio_to_numpy, image_to_numpy,
                            node_error, numpy_to_image)

log = logging.getLogger("PortraitTalk")
DUB, RENDER, VIDEO = "Audio → Dub Landmarks", "Dub Render", "Dub Video"


def _motion_inputs() -> list:
    """Inputs shared by Audio → Dub Landmarks and Dub Video: how the new speech drives the mouth."""
    return [
        io.Combo.Input("length_policy", options=list(LENGTH_POLICIES), default=DEFAULT_LENGTH_POLICY,
                       tooltip="When the new speech outlasts the video (output length = the speech's; trim: the "
                               "shorter). " + " ".join(f"{p}: {LENGTH_POLICY_HELP[p]}." for p in
                                                        ("ping-pong", "loop", "hold", "trim"))),
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
    ]


def _render_inputs() -> list:
    """Inputs shared by Dub Render and Dub Video: the CPU preview paste-back."""
    return [
        io.Float.Input("feather", default=0.25, min=0.01, max=1.0, step=0.01,
                       tooltip="Width of the blend band, in inter-ocular distances."),
        io.Boolean.Input("color_match", default=True,
                         tooltip="Match the warped region's colour statistics to the surrounding skin."),
    ]


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
                *_motion_inputs(),
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
        dubbed, aligned = _plan(DUB, landmarks, wav, sr, fps, length_policy, smoothing, persona, expressiveness,
                                backend, transcript)
        return io.NodeOutput(dubbed, aligned, float(fps))


def _plan(node, landmarks, wav, sr, fps, length_policy, smoothing, persona, expressiveness, backend, transcript):
    """:func:`ptalk_models.dubbing.plan_dub` with its errors as node errors."""
    if not np.asarray(landmarks.present).any():
        raise node_error(node, "landmarks" if node == DUB else "video",
                         "no frame of the video has a face; nothing to dub")
    try:
        return plan_dub(landmarks, wav, sr, fps, length_policy, smoothing, bool(persona), expressiveness,
                        backend, transcript or "")
    except ValueError as e:
        raise node_error(node, "audio", str(e)) from None


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
                "match. Pixels outside the region are bit-identical to the source; faceless frames pass through. "
                "Memory: the whole output IMAGE batch, output frames x height x width x 3 x (4 + 1) bytes while "
                "it is made (20 s of 1080x1920 at 30 fps: 19 GB), checked against the free memory first; for long "
                "or HD clips use Dub Video (streamed), one frame at a time."),
            inputs=[
                io.Image.Input("images", tooltip="The source video's frames (Get Video Components)."),
                Landmarks.Input("source_landmarks", tooltip="From Audio → Dub Landmarks (aligned_source)."),
                Landmarks.Input("landmarks", tooltip="From Audio → Dub Landmarks (dubbed_landmarks)."),
                *_render_inputs(),
            ],
            outputs=[io.Image.Output("images_out", display_name="images",
                                     tooltip="The dubbed frames, one per landmark frame.")],
        )

    @classmethod
    def execute(cls, images, source_landmarks, landmarks, feather, color_match) -> io.NodeOutput:
        if not hasattr(images, "ndim") or images.ndim not in (3, 4) or images.shape[0] == 0:
            image_to_numpy(images, RENDER, "images")  # raises the node error for a malformed input
        idx = np.asarray(landmarks.meta.get("source_index", range(len(landmarks))), np.int64)
        if len(idx) != len(landmarks) or len(source_landmarks) != len(landmarks):
            raise node_error(RENDER, "source_landmarks", "source_landmarks and landmarks must both come from the same "
                                                         "Audio → Dub Landmarks node")
        n_in, h, w = (int(x) for x in images.shape[:3])
        if len(idx) and idx.max() >= n_in:
            raise node_error(RENDER, "images", f"the landmarks index frame {int(idx.max())} but only {n_in} "
                                               "images are connected: connect the frames the landmarks were made from")
        if abs(landmarks.image_size[0] / landmarks.image_size[1] - w / h) > 0.01:
            raise node_error(RENDER, "images", f"{w}x{h} frames, but the landmarks are for "
                                               f"{landmarks.image_size[0]}x{landmarks.image_size[1]}")
        # pre-flight: the uint8 output batch and its float32 IMAGE (5 bytes a value)
        problem = batch_fit_problem(
            f"The dubbed IMAGE batch of {len(idx)} frames of {w}x{h} (float32)",
            image_batch_bytes(len(idx), h, w, itemsize=5),
            "Use Dub Video (streamed) (PortraitTalk) between Load Video and Save Video instead "
            "(workflows/dubbing_long.json): it dubs while Save Video encodes, one frame in memory at a time.")
        if problem:
            raise node_error(RENDER, "landmarks", problem)
        # source frames converted to uint8 one at a time as they are used (not the whole clip at once)
        frames = (image_to_numpy(images[int(i):int(i) + 1], RENDER, "images")[0] for i in idx)
        out = render_dub(frames, source_landmarks, landmarks, progress=Progress(len(idx)),
                         feather=feather, color_match=bool(color_match))
        return io.NodeOutput(numpy_to_image(out))


class DubVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkDubVideo",
            display_name="Dub Video (streamed) (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Visual dubbing of a VIDEO in one node, streamed (CPU preview path): Face Landmarks on every frame "
                "(one tracked face), Audio → Dub Landmarks and Dub Render, without ever holding the clip as an "
                "IMAGE batch — for long or high-resolution videos (a 20 s 1080x1920 clip is ~15 GB as IMAGE) and "
                "for containers core Get Video Components cannot read (FLV). Landmarks are detected here; the "
                "frames are decoded again and rendered while Save Video encodes (H.264 + AAC mp4 with the new "
                "speech). Variable-frame-rate input is mapped onto a constant rate (the stream's average fps) "
                "by timestamps. Faceless frames pass through unchanged."),
            inputs=[
                io.Video.Input("video", tooltip="The source video (core Load Video: mp4/mov/mkv/webm/flv/mpg …)."),
                io.Audio.Input("audio", tooltip="The new speech."),
                io.Combo.Input("face", options=["largest", "by index"], default="largest",
                               tooltip="Which face to dub when several are visible: the largest in the first "
                                       "frame with a face, or the face_index-th from the left; then tracked."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Used when face = 'by index': 0 = leftmost face."),
                *_motion_inputs(),
                *_render_inputs(),
            ],
            outputs=[
                io.Video.Output("dubbed_video", display_name="video",
                                tooltip="The dubbed video with the new speech, at the source's fps (Save Video)."),
                Landmarks.Output("dubbed_landmarks", tooltip="Dubbed landmarks, one per output frame."),
                Landmarks.Output("aligned_source", tooltip="The source landmarks of the same output frames (e.g. "
                                                           "for ADFD Score against dubbed_landmarks)."),
            ],
        )

    @classmethod
    def execute(cls, video, audio, face, face_index, length_policy, smoothing, persona, expressiveness, backend,
                feather, color_match, transcript="") -> io.NodeOutput:
        import av

        wav, sr = audio_to_numpy(audio, VIDEO, "audio")
        source = video.get_stream_source()
        times = []

        def frames():
            for frame, t in iter_video(source):
                times.append(t)
                yield frame

        try:
            w, h, fps, total = video_info(source)  # total: a metadata estimate, for the progress bar only
            lm = track_landmarks(frames(), total, on_missing="keep", fps=fps,
                                 selection="largest" if face == "largest" else int(face_index),
                                 progress=Progress(total))
        except (IndexError, av.error.FFmpegError) as e:  # FFmpeg's errors may also be ValueErrors: first
            raise node_error(VIDEO, "video", f"cannot decode its video stream ({e}); re-encode it (e.g. to "
                                             "H.264 mp4)") from None
        except NoFaceError as e:
            raise node_error(VIDEO, "video", str(e)) from None
        except ValueError as e:
            raise node_error(VIDEO, "face_index" if face != "largest" else "video", str(e)) from None
        cfr = constant_rate_index(times, fps)
        lm = FaceLandmarks.from_points(lm.points[cfr], lm.image_size, fps, lm.present[cfr], lm.meta)
        dubbed, aligned = _plan(VIDEO, lm, wav, sr, fps, length_policy, smoothing, persona, expressiveness,
                                backend, transcript)
        index = cfr[np.asarray(dubbed.meta["source_index"], np.int64)]
        out = StreamedDubVideo(source, index, aligned, dubbed, (w, h), fps, (wav, sr),
                               {"feather": feather, "color_match": bool(color_match)})
        return io.NodeOutput(out, dubbed, aligned)


NODES = [DubLandmarks, DubRender, DubVideo]
