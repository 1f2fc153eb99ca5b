"""Visual dubbing nodes (PersonaTalk-style, CPU preview path): Audio → Dub Landmarks and Dub Render (IMAGE
batches), and Dub Video (the same, streamed from a VIDEO to a VIDEO).

The dubbing plan (``PTALK_DUB_PLAN``, :class:`ptalk_models.dubbing.DubPlan`) travels between them: Audio → Dub
Landmarks and Dub Video output it; Dub Render and Dub Diffusion Render (nodes/dub_diffusion.py) take it as their
one dubbing input, with the source video's frames, and check the two against each other
(:func:`ptalk_models.dubbing.check_dub_inputs`). The plan owns the dub's frame rate (the source landmarks' fps)."""
from __future__ import annotations

from comfy_api.latest import io

from ..ptalk_models.audio2landmarks import BACKENDS
from ..ptalk_models.dub_render import render_dub
from ..ptalk_models.dubbing import (DEFAULT_LENGTH_POLICY, DEFAULT_VAD_THRESHOLD, LENGTH_POLICIES,
                                    LENGTH_POLICY_HELP, check_dub_inputs, plan_dub)
from ..ptalk_models.errors import InputError
from ..ptalk_models.active_speaker import MIN_SPEAKER_CORR
from ..ptalk_models.face import NoFaceError, track_landmarks
from ..ptalk_models.face_tracks import track_faces
from ..ptalk_models.landmarks import FaceLandmarks
from ..ptalk_models.media import constant_rate_index, frames_at, iter_video, video_info
from ..ptalk_models.memory import batch_fit_problem, image_batch_bytes
from ..ptalk_models.mouth_texture import build_mouth_banks
from ..ptalk_models.threads import prefetch
from .glue.convert import audio_to_numpy, image_to_numpy, numpy_to_image
from .glue.errors import log, node_error, node_error_from
from .glue.preview import landmark_preview
from .glue.progress import Progress
from .glue.sockets import CATEGORY, DubPlan, Landmarks
from .glue.video import StreamedDubVideo

DUB, RENDER, VIDEO, DIALOGUE = "Audio → Dub Landmarks", "Dub Render", "Dub Video", "Dub Dialogue"

#: Dub Video's ``face`` choices: the largest face, the face_index-th from the left, or the active speaker per shot.
FACE_CHOICES = ("largest", "by index", "auto")

#: :func:`ptalk_models.dubbing.check_dub_inputs`'s arguments -> Dub Render's inputs (``plan`` keeps its name).
RENDER_INPUTS = {"n_frames": "images", "frame_size": "images"}

PLAN_TOOLTIP = ("PTALK_DUB_PLAN: the dubbing plan — dubbed and source landmarks of every output frame, the source "
                "frame each output frame shows (length policy) and the fps. For Dub Render / Dub Diffusion Render, "
                "with the frames of the same video.")


def _motion_inputs(transcript: bool = True) -> list:
    """Inputs shared by Audio → Dub Landmarks, Dub Video and Dub Dialogue: how the new speech drives the mouth
    (``transcript``: with the optional transcript input, for nodes with one speech track)."""
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
    ] + ([io.String.Input("transcript", default="", multiline=True, optional=True,
                          tooltip="Optional English text of the new speech (forced alignment).")]
         if transcript else [])


def _silence_inputs() -> list:
    """Inputs shared by Audio → Dub Landmarks and Dub Video (last, so that saved workflows keep their widget
    positions): voice-activity detection on the new speech."""
    return [
        io.Boolean.Input("close_in_silence", default=True, optional=True,
                         tooltip="Where the voice-activity detector (Silero VAD) finds no speech in the new audio, "
                                 "the mouth rests closed in the speaker's own closed-mouth shape from the video "
                                 "(no chatter on breaths or noise)."),
        io.Float.Input("vad_threshold", default=DEFAULT_VAD_THRESHOLD, min=0.05, max=0.95, step=0.05,
                       optional=True,
                       tooltip="Silero VAD speech probability above which audio counts as speech (0.5 = "
                               "Silero's default; higher = stricter, lower = quiet speech kept)."),
    ]


def _render_inputs() -> list:
    """Inputs shared by Dub Render and Dub Video: the CPU preview paste-back."""
    return [
        io.Float.Input("feather", default=0.25, min=0.01, max=1.0, step=0.01,
                       tooltip="Width of the blend band, in inter-ocular distances."),
        io.Boolean.Input("color_match", default=True,
                         tooltip="Match the warped region's colour statistics to the surrounding skin."),
        io.Combo.Input("mouth_source", options=list(MOUTH_SOURCES), default=MOUTH_SOURCES_DEFAULT,
                       tooltip="Where the dubbed mouth's lips, teeth and inside come from. own frames: the "
                               "speaker's own mouth from the video frames whose mouth shape best matches (chosen "
                               "so the texture does not flicker), warped into the new shape — real teeth, and "
                               "the original mouth does not show through; a synthetic cavity only where no frame "
                               "opens wide enough. warp: each frame's own mouth squeezed or stretched, with a "
                               "synthetic dark cavity and teeth where it opens wider (the older renderer)."),
    ]


#: Dub Render / Dub Video ``mouth_source`` options -> :func:`ptalk_models.dub_render.iter_dub`'s.
MOUTH_SOURCES = {"own frames": "own_frames", "warp": "warp"}
MOUTH_SOURCES_DEFAULT = "own frames"


def _mouth_bank(node, mouth_source, plan, fetch, fetch_input):
    """The mouth banks for ``mouth_source`` "own frames", one per person of the plan
    (:func:`ptalk_models.mouth_texture.build_mouth_banks`; None for "warp"): ``fetch(ids)`` yields the source
    frames ``ids`` (ascending), read from node input ``fetch_input``."""
    if mouth_source not in MOUTH_SOURCES:
        raise node_error(node, "mouth_source", f"unknown mouth source {mouth_source!r}; choose one of "
                                               f"{list(MOUTH_SOURCES)}")
    if MOUTH_SOURCES[mouth_source] != "own_frames":
        return None
    try:
        return build_mouth_banks(plan.source, fetch, plan.source_index, plan.person)
    except InputError as e:
        raise node_error_from(node, e, {"source": "plan", "source_index": "plan", "person": "plan",
                                        "fetch": fetch_input}) from None


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
                "length policy maps video frames to the audio's length. Outputs the dubbing plan (PTALK_DUB_PLAN) for "
                "Dub Render / Dub Diffusion Render; the frame rate is the landmarks' (wire the video's fps into Face "
                "Landmarks' fps)."),
            inputs=[
                Landmarks.Input("landmarks", tooltip="Landmarks of every frame of the source video (Face "
                                                     "Landmarks with on_missing = keep and the video's fps wired "
                                                     "into its fps: the dub's frame rate comes from them; faceless "
                                                     "frames pass through)."),
                io.Audio.Input("audio", tooltip="The new speech."),
                *_motion_inputs(),
                *_silence_inputs(),
            ],
            outputs=[
                DubPlan.Output("plan", tooltip=PLAN_TOOLTIP),
                Landmarks.Output("dubbed_landmarks", tooltip="The plan's dubbed landmarks, one per output frame "
                                                             "(e.g. for Draw Landmarks or ADFD Score)."),
                Landmarks.Output("aligned_source", tooltip="The plan's (smoothed) source landmarks of the same "
                                                           "output frames (e.g. for ADFD Score)."),
                io.Float.Output("fps_out", display_name="fps",
                                tooltip="The plan's frame rate (the source video's, frames per second), for Create "
                                        "Video."),
            ],
        )

    @classmethod
    def execute(cls, landmarks, audio, length_policy, smoothing, persona, expressiveness, backend,
                transcript="", close_in_silence=True, vad_threshold=DEFAULT_VAD_THRESHOLD) -> io.NodeOutput:
        wav, sr = audio_to_numpy(audio, DUB, "audio")
        plan = _plan(DUB, "landmarks", landmarks, wav, sr, length_policy, smoothing, persona, expressiveness,
                     backend, transcript, close_in_silence, vad_threshold)
        return io.NodeOutput(plan, plan.target, plan.source, plan.fps,
                             ui=landmark_preview(plan.target, node=DUB, audio=(wav, sr), backdrop_input="landmarks"))


def _plan(node, landmarks_input, landmarks, wav, sr, length_policy, smoothing, persona, expressiveness, backend,
          transcript, close_in_silence=True, vad_threshold=DEFAULT_VAD_THRESHOLD, speaker_labels=None,
          audio_input="audio"):
    """:func:`ptalk_models.dubbing.plan_dub` with its errors as node errors (``landmarks_input``: the node input
    the source landmarks came from, which also give the dub's frame rate and the closed-mouth reference); the
    plan's warnings are logged. ``plan_dub``'s other arguments have the names of the node inputs they come
    from (``length_policy``, ``smoothing``, ``expressiveness``, ``backend``, ``transcript``, ``vad_threshold``;
    ``vad`` is ``close_in_silence``); ``speaker_labels``: per source frame, which person is dubbed (face = auto);
    ``audio_input``: the node input the speech came from."""
    try:
        plan = plan_dub(landmarks, wav, sr, length_policy, smoothing, bool(persona), expressiveness, backend,
                        transcript or "", vad=bool(close_in_silence), vad_threshold=float(vad_threshold),
                        speaker_labels=speaker_labels)
    except InputError as e:
        raise node_error_from(node, e, {"source": landmarks_input, "waveform": audio_input, "sample_rate": audio_input,
                                        "vad": "close_in_silence", "speaker_labels": landmarks_input}) from None
    for w in plan.warnings:
        log.warning("%s: %s", node, w)
    return plan


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
                io.Image.Input("images", tooltip="Every frame of the source video the plan was made from, float "
                                                 "[T, H, W, 3] (Get Video Components; the same frames as Face "
                                                 "Landmarks got, or a resize with the same aspect ratio)."),
                DubPlan.Input("plan", tooltip="From Audio → Dub Landmarks (plan): which source frame each output "
                                              "frame shows and its source and dubbed landmarks."),
                *_render_inputs(),
            ],
            outputs=[io.Image.Output("images_out", display_name="images",
                                     tooltip="The dubbed frames, float [N, H, W, 3] at the source size, one per "
                                             "output frame of the plan (its fps: Audio → Dub Landmarks' fps).")],
        )

    @classmethod
    def execute(cls, images, plan, feather, color_match, mouth_source=MOUTH_SOURCES_DEFAULT) -> io.NodeOutput:
        if not hasattr(images, "ndim") or images.ndim not in (3, 4) or images.shape[0] == 0:
            image_to_numpy(images, RENDER, "images")  # raises the node error for a malformed input
        n_in, h, w = (int(x) for x in images.shape[:3])
        try:
            check_dub_inputs(plan, n_in, (w, h))
        except InputError as e:
            raise node_error_from(RENDER, e, RENDER_INPUTS) from None
        idx = plan.source_index
        # pre-flight: the uint8 output batch and its float32 IMAGE (5 bytes a value)
        problem = batch_fit_problem(
            f"The dubbed IMAGE batch of {len(idx)} frames of {w}x{h} (float32)",
            image_batch_bytes(len(idx), h, w, itemsize=5),
            "Use Dub Video (streamed) (PortraitTalk) between Load Video and Save Video instead "
            "(workflows/dubbing_long.json): it dubs while Save Video encodes, one frame in memory at a time.")
        if problem:
            raise node_error(RENDER, "plan", problem)
        # source frames converted to uint8 one at a time as they are used (not the whole clip at once)
        frames = (image_to_numpy(images[int(i):int(i) + 1], RENDER, "images")[0] for i in idx)
        bank = _mouth_bank(RENDER, mouth_source, plan, lambda ids: (
            image_to_numpy(images[int(i):int(i) + 1], RENDER, "images")[0] for i in ids), "images")
        out = render_dub(frames, plan.source, plan.target, progress=Progress(len(idx)),
                         feather=feather, color_match=bool(color_match),
                         mouth_source=MOUTH_SOURCES[mouth_source], bank=bank, person=plan.person)
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
                io.Combo.Input("face", options=list(FACE_CHOICES), default="largest",
                               tooltip="Which face to dub when several are visible: the largest in the first "
                                       "frame with a face, or the face_index-th from the left, then tracked; or "
                                       "auto: in each shot (scene cuts by PySceneDetect) the face whose mouth moves "
                                       "with the video's own audio (the active speaker; shots where no face "
                                       f"reaches a lip-sync correlation of {MIN_SPEAKER_CORR} stay undubbed)."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Used when face = 'by index': 0 = leftmost face."),
                *_motion_inputs(),
                *_render_inputs(),
                *_silence_inputs(),
            ],
            outputs=[
                io.Video.Output("dubbed_video", display_name="video",
                                tooltip="The dubbed video with the new speech, at the source's fps (Save Video)."),
                DubPlan.Output("plan", tooltip=PLAN_TOOLTIP + " Its source frames are the VIDEO's decoded frames "
                                                              "(Get Video Components' images)."),
                Landmarks.Output("dubbed_landmarks", tooltip="The plan's dubbed landmarks, one per output frame."),
                Landmarks.Output("aligned_source", tooltip="The plan's source landmarks of the same output frames "
                                                           "(e.g. for ADFD Score against dubbed_landmarks)."),
            ],
        )

    @classmethod
    def execute(cls, video, audio, face, face_index, length_policy, smoothing, persona, expressiveness, backend,
                feather, color_match, transcript="", mouth_source=MOUTH_SOURCES_DEFAULT, close_in_silence=True,
                vad_threshold=DEFAULT_VAD_THRESHOLD) -> io.NodeOutput:
        wav, sr = audio_to_numpy(audio, VIDEO, "audio")
        source = video.get_stream_source()
        selection = "all" if face == "auto" else "largest" if face == "largest" else int(face_index)
        (w, h), fps, times, found = _detect(VIDEO, source, selection)
        cfr = constant_rate_index(times, fps)
        labels = None
        if face == "auto":
            lm, labels = _active_speaker(source, found, cfr)
        else:
            lm = FaceLandmarks.from_points(found.points[cfr], found.image_size, fps, found.present[cfr], found.meta)
        # planned on the constant-rate timeline, then mapped to decode-order frames of the stream
        plan = _plan(VIDEO, "video", lm, wav, sr, length_policy, smoothing, persona, expressiveness, backend,
                     transcript, close_in_silence, vad_threshold, labels)
        plan = plan.with_source_index(cfr[plan.source_index], len(times))
        # the mouth bank: a first pass decoding only its few frames (memory: the bank's mouth crops)
        bank = _mouth_bank(VIDEO, mouth_source, plan, lambda ids: frames_at(source, ids), "video")
        out = StreamedDubVideo(source, plan.source_index, [(plan.source, plan.target, {
            "feather": feather, "color_match": bool(color_match), "mouth_source": MOUTH_SOURCES[mouth_source],
            "bank": bank, "person": plan.person})], (w, h), plan.fps, (wav, sr), VIDEO)
        return io.NodeOutput(out, plan, plan.target, plan.source)


class DubDialogue(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkDubDialogue",
            display_name="Dub Dialogue (streamed) (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Visual dubbing of a dialogue: two faces of one VIDEO, each driven by its own speech — two speech "
                "tracks (audio = face 1, audio_2 = face 2), or one track with each face's turns in seconds. Face 1 "
                "is the left face, face 2 the right one: in shots showing both, split at the widest horizontal gap "
                "between the faces; in shots showing one person, by the half of the frame the face is in (each "
                "person keeps their side of the frame across shot / reverse-shot cuts, the 180-degree rule; scene "
                "cuts by PySceneDetect). Where a face's speech is silent (Silero VAD) its mouth rests closed in "
                "its own closed shape. Streamed like Dub Video: one decode pass to track the faces, then the "
                "frames are dubbed (face 1, then face 2) while Save Video encodes, with the two tracks mixed "
                "(or the one track) as the soundtrack. Faceless frames pass through unchanged."),
            inputs=[
                io.Video.Input("video", tooltip="The source video with the two people (core Load Video)."),
                io.Audio.Input("audio", tooltip="Face 1's (left) speech; or the whole dialogue when audio_2 is not "
                                                "connected (then write the turns)."),
                io.Audio.Input("audio_2", optional=True,
                               tooltip="Face 2's (right) speech, from the same start time as face 1's (pad it with "
                                       "silence where face 1 speaks first). The two are mixed for the soundtrack."),
                io.String.Input("turns", default="", multiline=True, optional=True,
                                tooltip="Who speaks when, in seconds from the start of the speech: one line per "
                                        "face, e.g. '1: 0-3.2, 6.5-9' and '2: 3.2-6.5'. Needed with one speech "
                                        "track (each face hears it only in its turns); with two tracks, cuts "
                                        "each to its face's turns. Empty: two tracks, each face its own."),
                *_motion_inputs(transcript=False),
                *_render_inputs(),
                *_silence_inputs(),
            ],
            outputs=[
                io.Video.Output("dubbed_video", display_name="video",
                                tooltip="The dubbed video with the dialogue's soundtrack, at the source's fps "
                                        "(Save Video)."),
                DubPlan.Output("plan", display_name="plan_1", tooltip="Face 1's dubbing plan. " + PLAN_TOOLTIP),
                DubPlan.Output("plan_2", tooltip="Face 2's dubbing plan (same output frames as plan_1)."),
            ],
        )

    @classmethod
    def execute(cls, video, audio, length_policy, smoothing, persona, expressiveness, backend, feather,
                color_match, audio_2=None, turns="", mouth_source=MOUTH_SOURCES_DEFAULT, close_in_silence=True,
                vad_threshold=DEFAULT_VAD_THRESHOLD) -> io.NodeOutput:
        from ..ptalk_models.active_speaker import timeline_landmarks
        from ..ptalk_models.dialogue import DIALOGUE_FACES, assign_faces, parse_turns, speech_for_faces

        tracks = [audio_to_numpy(audio, DIALOGUE, "audio")]
        if audio_2 is not None:
            tracks.append(audio_to_numpy(audio_2, DIALOGUE, "audio_2"))
        try:
            speech, mix = speech_for_faces(tracks, parse_turns(turns, DIALOGUE_FACES))
        except InputError as e:
            raise node_error_from(DIALOGUE, e, {"turns": "turns"}) from None
        source = video.get_stream_source()
        (w, h), fps, times, tracked = _detect(DIALOGUE, source, "all")
        cfr = constant_rate_index(times, fps)
        picks = assign_faces(tracked, cfr, DIALOGUE_FACES)
        plans, layers = [], []
        for s in range(DIALOGUE_FACES):
            if not (picks[s] >= 0).any():
                side = ("left", "right")[s] if DIALOGUE_FACES == 2 else f"number {s + 1} from the left"
                raise node_error(DIALOGUE, "video", f"face {s + 1} (the {side} one) is not in any shot of this "
                                                    f"video ({len(tracked.tracks)} face track(s) found); a "
                                                    "dialogue needs two people, side by side or each on their "
                                                    "own side of the frame; for one face use Dub Video")
            lm = timeline_landmarks(tracked, cfr, picks[s], fps, {"source": "dialogue", "face": s + 1})
            wav, sr = speech[s]
            plan = _plan(DIALOGUE, "video", lm, wav, sr, length_policy, smoothing, persona, expressiveness,
                         backend, "", close_in_silence, vad_threshold,
                         audio_input="audio" if s == 0 or len(tracks) == 1 else "audio_2")
            plan = plan.with_source_index(cfr[plan.source_index], len(times))
            bank = _mouth_bank(DIALOGUE, mouth_source, plan, lambda ids: frames_at(source, ids), "video")
            plans.append(plan)
            layers.append((plan.source, plan.target, {"feather": feather, "color_match": bool(color_match),
                                                      "mouth_source": MOUTH_SOURCES[mouth_source], "bank": bank}))
        out = StreamedDubVideo(source, plans[0].source_index, layers, (w, h), fps, mix, DIALOGUE)
        return io.NodeOutput(out, *plans)


def _detect(node, source, selection):
    """One decode pass of a VIDEO's stream ``source``: ``((w, h), fps, decode timestamps, found)``; ``found`` is
    every face tracked through occlusions and restarted at cuts (``selection`` "all":
    :func:`ptalk_models.face_tracks.track_faces`) or one face's landmarks in decode order (``"largest"`` or an
    index from the left: :func:`ptalk_models.face.track_landmarks`). Decode errors and faceless videos raise the
    node error on ``video``."""
    import av

    times = []

    def frames():  # decoded in a background thread while the faces are detected (ptalk_models.threads)
        for frame, t in prefetch(iter_video(source)):
            times.append(t)
            yield frame

    try:
        w, h, fps, total = video_info(source)  # total: a metadata estimate, for the progress bar only
        if selection == "all":
            found = track_faces(frames(), fps, total, progress=Progress(total))
            if not found.tracks:
                raise NoFaceError(f"no face found in any of the {found.n_frames} frame(s) ({w}x{h})", 0)
        else:
            found = track_landmarks(frames(), total, on_missing="keep", fps=fps, selection=selection,
                                    progress=Progress(total))
    except IndexError as e:  # no video stream: media._video_stream's message says what the file holds
        raise node_error(node, "video", str(e)) from None
    except av.error.FFmpegError as e:  # FFmpeg's errors may also be ValueErrors: first
        raise node_error(node, "video", f"cannot decode its video stream ({e}); re-encode it (e.g. to "
                                        "H.264 mp4)") from None
    except NoFaceError as e:
        raise node_error(node, "video", str(e)) from None
    except InputError as e:
        raise node_error_from(node, e, {"frames": "video", "selection": "face_index"}) from None
    return (w, h), fps, times, found


def _active_speaker(source, tracked, cfr):
    """face = auto: the active speaker's landmarks on the constant-rate timeline ``cfr`` and the per-frame person
    labels (:func:`ptalk_models.active_speaker.active_speaker` on the VIDEO's own soundtrack); its warnings are
    logged."""
    import av

    from ..ptalk_models.active_speaker import active_speaker
    from ..ptalk_models.media import read_audio

    try:
        own_wav, own_sr = read_audio(source)
    except (IndexError, ValueError, av.error.FFmpegError):
        raise node_error(VIDEO, "face", "face = auto picks the face whose mouth moves with the video's own audio, "
                                        "but this video has no readable audio track; choose face = largest or by "
                                        "index") from None
    try:
        choice = active_speaker(tracked, own_wav, own_sr, cfr)
    except InputError as e:
        raise node_error_from(VIDEO, e, {"waveform": "face", "tracks": "video"}) from None
    for s, (a, b) in enumerate(choice.shots):
        log.info("%s: shot %d (frames %d-%d): speaker track %s, lip-sync scores %s", VIDEO, s + 1, a, b - 1,
                 choice.speaker[s], {k: round(v, 2) for k, v in choice.scores[s].items()})
    for w in choice.warnings:
        log.warning("%s: %s", VIDEO, w)
    return choice.landmarks, choice.labels


NODES = [DubLandmarks, DubRender, DubVideo, DubDialogue]
