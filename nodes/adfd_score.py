"""ADFD Score node: generated vs ground-truth talking face (IMAGE, PTALK_LANDMARKS or VIDEO) → FLOAT, JSON, plot."""
from __future__ import annotations

import os

from comfy_api.latest import io, ui

from ..ptalk_models.face import NoFaceError, detect_landmarks
from ..ptalk_models.media import read_audio, read_video
from ..ptalk_models.metrics import MOTION_VECTORS, evaluate, report_json
from ..ptalk_models.plot import report_plot
from .comfy_adapter import (CATEGORY, Landmarks, Progress, audio_to_numpy, image_to_numpy, log, node_error,
                            numpy_to_image)

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
        frames, lms, fpss, video_audio, source = {}, {}, {}, None, {}
        for side, (images, lm, video) in given.items():
            names = [n for n, v in ((side, images), (f"{side}_landmarks", lm), (f"{side}_video", video))
                     if v is not None]
            if not names:
                raise node_error(NODE, side, f"nothing connected; connect the {side.replace('_', '-')} video as "
                                 f"frames ({side}), landmarks ({side}_landmarks) or a VIDEO ({side}_video)")
            if len(names) > 1:
                raise node_error(NODE, names[1], f"connect only one of {side} / {side}_landmarks / {side}_video; "
                                 f"got {', '.join(names)}")
            source[side] = names[0]
            if lm is not None:
                if len(lm) == 0:
                    raise node_error(NODE, names[0], "the landmark sequence is empty (0 frames); connect landmarks "
                                     "of at least one frame")
                lms[side], fpss[side] = lm, lm.fps
            elif side == "ground_truth" and (images if images is not None else video) is (
                    generated if generated is not None else generated_video):
                frames[side], fpss[side] = frames["generated"], fpss["generated"]  # one source on both sides
            elif images is not None:
                frames[side], fpss[side] = image_to_numpy(images, NODE, side), float(fps)
                if frames[side].shape[0] == 0:
                    raise node_error(NODE, side, "the IMAGE batch is empty (0 frames); connect at least one frame")
            else:
                frames[side], fpss[side], a = _decode_video(video, names[0])
                if side == "generated":
                    video_audio = a
            if fps > 0 and fpss[side] <= 0:
                fpss[side] = float(fps)

        wav = None
        audio_source = None
        if audio is not None:
            wav, audio_source = audio_to_numpy(audio, NODE, "audio"), "audio input"
        elif video_audio is not None:
            wav, audio_source = video_audio, "generated_video soundtrack"
        sync_fps = fpss["generated"] if fpss["generated"] > 0 else fpss["ground_truth"]
        if wav is not None and sync_fps <= 0:
            raise node_error(NODE, "fps", "the sync proxy needs the frame rate: set fps (e.g. wire Get Video "
                             "Components' fps) or connect landmarks/video that carry it")

        todo = [s for s in SIDES if s not in lms]
        same = len(todo) == 2 and frames["ground_truth"] is frames["generated"]
        total = max(1, sum(len(frames[s]) for s in todo) - (len(frames["ground_truth"]) if same else 0))
        bar = Progress(total)
        done = 0
        for side in todo:
            if side == "ground_truth" and same:
                lms[side] = lms["generated"]
                continue
            base = done
            try:
                lms[side] = detect_landmarks(frames[side], on_missing="keep", fps=fpss[side],
                                             progress=lambda k, n, b=base: bar(b + k, total))
            except NoFaceError as e:
                raise node_error(NODE, source[side], f"{e}; give frames showing the face (all-black or faceless "
                                 "frames are excluded only when some frames have a face)") from None
            done += len(frames[side])

        use_identity = identity != "off"
        try:
            report = evaluate(lms["generated"], lms["ground_truth"], w1=w1, w2=w2, audio=wav,
                              fps=sync_fps if sync_fps > 0 else None,
                              generated_frames=frames.get("generated") if use_identity else None,
                              ground_truth_frames=frames.get("ground_truth") if use_identity else None,
                              identity_backend=identity if use_identity else None,
                              identity_stride=identity_stride, motion_vectors=motion_vectors)
        except ValueError as e:  # the engine's messages start with the argument they are about
            msg = str(e)
            name = next((n for n in ("generated", "ground_truth", "w1", "w2", "motion_vectors", "identity_stride",
                                     "fps") if msg.startswith(n)), "generated")
            raise node_error(NODE, name, msg) from None
        report["inputs"] = {s: ("landmarks" if given[s][1] is not None else "video" if given[s][2] is not None
                                else "images") for s in SIDES}
        report["audio_source"] = audio_source
        for w in report["warnings"]:
            log.warning("%s: %s", NODE, w)
        plot = numpy_to_image(report_plot(report)[None])
        text = report_json(report)
        summary = (f"ADFD {report['adfd']:.4f} = [{w1:g} × spatial {report['spatial_term']:.4f}] × "
                   f"[{w2:g} × motion {report['motion_term']:.4f}]; mouth LMD {report['lmd']['mouth_px']:.2f} px; "
                   f"frames used {report['frames']['used']}/{report['frames']['compared']}")
        if report["sync"] is not None:
            s = report["sync"]["generated"]
            summary += f"; sync proxy r(lag 0) {s['corr_lag0']:.3f}, best lag {s['best_lag']}"
        if report["warnings"]:
            summary += "\nwarnings: " + "; ".join(report["warnings"])
        preview = ui.PreviewImage(plot, cls=cls)
        return io.NodeOutput(float(report["adfd"]), text, plot,
                             ui={"text": (summary,), "images": preview.values, "animated": (False,)})


NODES = [ADFDScore]
