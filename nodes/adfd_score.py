"""ADFD Score node: generated vs ground-truth talking face (IMAGE, PTALK_LANDMARKS or VIDEO) → FLOAT, JSON, plot."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from comfy_api.latest import io, ui

from ..ptalk_models.errors import InputError
from ..ptalk_models.face import NoFaceError, detect_landmarks
from ..ptalk_models.landmarks import FaceLandmarks
from ..ptalk_models.media import read_audio, read_video
from ..ptalk_models.metrics import MOTION_VECTORS, evaluate, report_json
from ..ptalk_models.plot import report_plot
from .glue.convert import audio_to_numpy, image_to_numpy, numpy_to_image
from .glue.errors import log, node_error, node_error_from
from .glue.preview import report_preview
from .glue.progress import Progress
from .glue.sockets import CATEGORY, Landmarks

NODE = "ADFD Score"
IDENTITY_OPTIONS = ["dlib", "off"]
SIDES = ("generated", "ground_truth")


def _side_inputs(side: str, what: str) -> list:
    return [
        io.Image.Input(side, optional=True,
                       tooltip=f"The {what} video as frames (IMAGE batch, e.g. Get Video Components' images). Connect "
                               f"exactly one of {side} / {side}_landmarks / {side}_video."),
        Landmarks.Input(f"{side}_landmarks", optional=True,
                        tooltip=f"The {what} video as PTALK_LANDMARKS (e.g. Face Landmarks or Audio → Landmarks "
                                "output); its fps and presence flags are used. Identity needs frames instead."),
        io.Video.Input(f"{side}_video", optional=True,
                       tooltip=f"The {what} video as a VIDEO (Load Video); decoded here (also FLV files that Get "
                               "Video Components cannot read); its frame rate is used."),
    ]


def _decode_video(video, name: str):
    """VIDEO → (uint8 frames [T, H, W, 3], fps, (waveform [C, N], Hz) or None)."""
    src = None
    try:
        src = video.get_stream_source()
    except Exception:  # not a file-backed video (e.g. a streamed render): use its components
        src = None
    if isinstance(src, (str, os.PathLike)) and os.path.isfile(src):
        try:
            frames, fps = read_video(src)
        except Exception as e:
            raise node_error(NODE, name, f"cannot decode the video {os.path.basename(str(src))}: {e}") from None
        try:
            audio = read_audio(src)
        except (IndexError, ValueError):  # no audio stream / no audio samples
            audio = None
        return frames, float(fps), audio
    try:
        comp = video.get_components()
    except Exception as e:
        raise node_error(NODE, name, f"cannot read the video's frames ({type(e).__name__}: {e})") from None
    frames = image_to_numpy(comp.images, NODE, name)
    audio = None
    if comp.audio is not None:
        audio = audio_to_numpy(comp.audio, NODE, name)
    return frames, float(comp.frame_rate), audio


@dataclass
class _Side:
    """One side (generated or ground truth) as connected to the node.

    ``source``: the node input it came from (``<side>``, ``<side>_landmarks`` or ``<side>_video``); ``kind``:
    ``"images"``, ``"landmarks"`` or ``"video"``; ``frames``: uint8 RGB ``[T, H, W, 3]`` (None for landmarks);
    ``landmarks``: :class:`FaceLandmarks` (None until detected); ``fps``: frames per second (0.0 = unknown).
    """

    source: str
    kind: str
    frames: np.ndarray | None = None
    landmarks: FaceLandmarks | None = None
    fps: float = 0.0


def _connected_source(side: str, images, lm, video) -> tuple[str, str]:
    """(node input name, kind) of the one input connected for ``side``; NodeInputError for none or several."""
    named = [(n, k) for n, k, v in ((side, "images", images), (f"{side}_landmarks", "landmarks", lm),
                                    (f"{side}_video", "video", video)) if v is not None]
    if not named:
        raise node_error(NODE, side, f"nothing connected; connect the {side.replace('_', '-')} video as "
                         f"frames ({side}), landmarks ({side}_landmarks) or a VIDEO ({side}_video)")
    if len(named) > 1:
        raise node_error(NODE, named[1][0], f"connect only one of {side} / {side}_landmarks / {side}_video; "
                         f"got {', '.join(n for n, _ in named)}")
    return named[0]


def _read_side(side: str, images, lm, video, fps: float, same_as: _Side | None = None):
    """``(_Side, soundtrack or None)`` for one side's inputs; ``same_as``: the other side when it was given the
    very same IMAGE / VIDEO object (its frames are reused, not converted or decoded twice).

    The soundtrack is ``(waveform [C, N], Hz)`` of a decoded VIDEO with audio. ``fps`` (the widget, > 0) fills in
    an unknown frame rate. Raises NodeInputError naming the input for empty or unreadable inputs."""
    source, kind = _connected_source(side, images, lm, video)
    out, audio = _Side(source, kind), None
    if lm is not None:
        if len(lm) == 0:
            raise node_error(NODE, source, "the landmark sequence is empty (0 frames); connect landmarks of at "
                             "least one frame")
        out.landmarks, out.fps = lm, lm.fps
    elif same_as is not None:
        out.frames, out.fps = same_as.frames, same_as.fps
    elif images is not None:
        out.frames, out.fps = image_to_numpy(images, NODE, side), float(fps)
        if out.frames.shape[0] == 0:
            raise node_error(NODE, side, "the IMAGE batch is empty (0 frames); connect at least one frame")
    else:
        out.frames, out.fps, audio = _decode_video(video, source)
    if fps > 0 and out.fps <= 0:
        out.fps = float(fps)
    return out, audio


def _read_inputs(fps: float, given: dict) -> tuple[dict, tuple | None]:
    """``({side: _Side}, generated VIDEO's soundtrack or None)`` from ``given`` = ``{side: (images, landmarks,
    video)}`` (see :func:`_read_side`)."""
    gen, gen_audio = _read_side("generated", *given["generated"], fps)
    images, lm, video = given["ground_truth"]
    gen_object = next((v for v in (given["generated"][0], given["generated"][2]) if v is not None), None)
    same = lm is None and gen.frames is not None and (images if images is not None else video) is gen_object
    gt, _ = _read_side("ground_truth", images, lm, video, fps, same_as=gen if same else None)
    return {"generated": gen, "ground_truth": gt}, gen_audio


def _pick_audio(audio, video_audio) -> tuple[tuple | None, str | None, str]:
    """``(waveform, Hz) or None``, the report's ``audio_source`` and the node input the sound came from: the
    ``audio`` input, else the generated VIDEO's soundtrack."""
    if audio is not None:
        return audio_to_numpy(audio, NODE, "audio"), "audio input", "audio"
    if video_audio is not None:
        return video_audio, "generated_video soundtrack", "generated_video"
    return None, None, "audio"


def _detect_landmarks(sides: dict) -> None:
    """Detect the landmarks of every side given as frames (one pass when both sides share the frames), with one
    progress bar over all frames. Raises NodeInputError naming the input when no frame shows a face."""
    todo = [s for s in SIDES if sides[s].landmarks is None]
    same = len(todo) == 2 and sides["ground_truth"].frames is sides["generated"].frames
    total = max(1, sum(len(sides[s].frames) for s in todo) - (len(sides["ground_truth"].frames) if same else 0))
    bar = Progress(total)
    done = 0
    for side in todo:
        sd = sides[side]
        if side == "ground_truth" and same:
            sd.landmarks = sides["generated"].landmarks
            continue
        try:
            sd.landmarks = detect_landmarks(sd.frames, on_missing="keep", fps=sd.fps,
                                            progress=lambda k, n, b=done: bar(b + k, total))
        except NoFaceError as e:
            raise node_error(NODE, sd.source, f"{e}; give frames showing the face (all-black or faceless "
                             "frames are excluded only when some frames have a face)") from None
        done += len(sd.frames)


def _score(sides: dict, wav, audio_input: str, sync_fps: float, w1: float, w2: float, identity: str,
           identity_stride: int, motion_vectors: str) -> dict:
    """:func:`ptalk_models.metrics.evaluate` of the two sides; engine InputErrors become NodeInputErrors naming
    the node input the rejected argument came from (``audio_input``: where ``wav`` came from)."""
    use_identity = identity != "off"
    gen, gt = sides["generated"], sides["ground_truth"]
    try:
        return evaluate(gen.landmarks, gt.landmarks, w1=w1, w2=w2, audio=wav, fps=sync_fps if sync_fps > 0 else None,
                        generated_frames=gen.frames if use_identity else None,
                        ground_truth_frames=gt.frames if use_identity else None,
                        identity_backend=identity if use_identity else None,
                        identity_stride=identity_stride, motion_vectors=motion_vectors)
    except InputError as e:
        raise node_error_from(NODE, e, {"generated": gen.source, "ground_truth": gt.source,
                                        "audio": audio_input}) from None
    except ValueError as e:  # not about one argument: reported on the evaluated side
        raise node_error(NODE, gen.source, str(e)) from None


def _summary(report: dict) -> str:
    """One-paragraph text for the node's UI: ADFD and its terms, mouth LMD, frames, sync proxy, warnings."""
    text = (f"ADFD {report['adfd']:.4f} = [{report['w1']:g} × spatial {report['spatial_term']:.4f}] × "
            f"[{report['w2']:g} × motion {report['motion_term']:.4f}]; mouth LMD {report['lmd']['mouth_px']:.2f} px; "
            f"frames used {report['frames']['used']}/{report['frames']['compared']}")
    if report["sync"] is not None:
        s = report["sync"]["generated"]
        text += f"; sync proxy r(lag 0) {s['corr_lag0']:.3f}, best lag {s['best_lag']}"
    if report["warnings"]:
        text += "\nwarnings: " + "; ".join(report["warnings"])
    return text


class ADFDScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkADFDScore",
            display_name="ADFD Score (PortraitTalk)",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Scores a generated talking-face video against a ground truth with ADFD, PortraitTalk (arXiv "
                "2412.07754) Sec. III-C Eq. 4: [w1 · mean_t(1 − mean_k‖L_gen − L_gt‖ / frame diagonal)] × "
                "[w2 · mean_t((1 + cos of the whole-face motion vectors L_t − L_t−1) / 2)] on MediaPipe 478-point "
                "landmarks (1.0 = identical motion and placement). The JSON report adds LMD (mouth and face, pixels "
                "and inter-ocular), landmark jitter, per-frame identity similarity (dlib, Face Embed engine) and, "
                "with audio, a lip-sync proxy. Unequal lengths are clipped to the shorter, frames without a face "
                "are excluded and counted, different resolutions are compared in the ground truth's pixel grid."),
            inputs=[
                *_side_inputs("generated", "generated (evaluated)"),
                *_side_inputs("ground_truth", "ground-truth (reference)"),
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional soundtrack of the generated video for a lip-sync PROXY (not "
                                       "SyncNet): correlation of the inner-lip aperture with the 200–4000 Hz log "
                                       "energy at lag 0 and the best lag within ±5 frames. Not connected: the "
                                       "generated_video's own soundtrack is used when there is one."),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.001,
                               tooltip="Frame rate of IMAGE inputs (wire Get Video Components' fps here); 0 = take "
                                       "it from the landmarks / video. Needed for the sync proxy and the plot's "
                                       "time axis."),
                io.Float.Input("w1", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Weight of the spatial term of Eq. 4 (ADFD = w1·spatial × w2·motion)."),
                io.Float.Input("w2", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Weight of the motion term of Eq. 4."),
                io.Combo.Input("identity", options=IDENTITY_OPTIONS, default="dlib",
                               tooltip="Identity similarity of each generated frame to the first ground-truth "
                                       "frame with the embedded dlib face-recognition ResNet (> 0.5 = same person). "
                                       "Needs frames (not landmarks); about 0.07 s per frame on a CPU core. "
                                       "off = skip."),
                io.Int.Input("identity_stride", default=1, min=1, max=1000,
                             tooltip="Embed every n-th generated frame for the identity metric (1 = every frame)."),
                io.Combo.Input("motion_vectors", options=list(MOTION_VECTORS), default="face",
                               tooltip="Motion term reading: face = one flattened whole-face motion vector per frame "
                                       "pair (default, robust to sub-pixel detector jitter); landmark = 2-D cosine "
                                       "per landmark averaged over landmarks."),
            ],
            outputs=[
                io.Float.Output("adfd", tooltip="ADFD in [0, w1·w2]; higher = closer to the ground truth."),
                io.String.Output("report", tooltip="JSON metrics report (terms, LMD, jitter, identity, sync proxy, "
                                                   "per-frame curves, warnings)."),
                io.Image.Output("plot", tooltip="Per-frame curves: spatial term, motion term, mouth LMD, "
                                                "lip aperture generated vs ground truth (+ audio energy, identity)."),
            ],
        )

    @classmethod
    def execute(cls, fps, w1, w2, identity, identity_stride, motion_vectors, generated=None,
                generated_landmarks=None, generated_video=None, ground_truth=None, ground_truth_landmarks=None,
                ground_truth_video=None, audio=None) -> io.NodeOutput:
        given = {"generated": (generated, generated_landmarks, generated_video),
                 "ground_truth": (ground_truth, ground_truth_landmarks, ground_truth_video)}
        sides, video_audio = _read_inputs(fps, given)
        wav, audio_source, audio_input = _pick_audio(audio, video_audio)
        sync_fps = sides["generated"].fps if sides["generated"].fps > 0 else sides["ground_truth"].fps
        if wav is not None and sync_fps <= 0:
            raise node_error(NODE, "fps", "the sync proxy needs the frame rate: set fps (e.g. wire Get Video "
                             "Components' fps) or connect landmarks/video that carry it")
        _detect_landmarks(sides)
        report = _score(sides, wav, audio_input, sync_fps, w1, w2, identity, identity_stride, motion_vectors)
        report["inputs"] = {s: sides[s].kind for s in SIDES}
        report["audio_source"] = audio_source
        for w in report["warnings"]:
            log.warning("%s: %s", NODE, w)
        plot = numpy_to_image(report_plot(report)[None])
        preview = ui.PreviewImage(plot, cls=cls)
        return io.NodeOutput(float(report["adfd"]), report_json(report), plot,
                             ui={"text": (_summary(report),), "images": preview.values, "animated": (False,),
                                 **(report_preview(report, node=NODE) or {})})

NODES = [ADFDScore]
