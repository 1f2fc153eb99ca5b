"""Active speaker: in each shot, the face whose mouth moves with the video's own soundtrack.

Rule (per shot, :func:`choose_speakers`): for every face track with at least
:data:`ptalk_models.metrics.SYNC_MIN_FRAMES` detected frames in the shot, the Pearson correlation between its
inner-lip aperture (:func:`ptalk_models.landmarks.inner_lip_aperture`, IOD units) and the soundtrack's 200-4000 Hz
log energy per video frame (:func:`ptalk_models.audio.band_log_energy`) -- the pack's lip-sync proxy
(:func:`ptalk_models.metrics.sync_proxy`, :func:`ptalk_models.metrics.lag_correlations`) -- taking the best lag
within ``±MAX_LAG`` frames (the mouth may lead or trail the sound by a frame or two). The track with the highest
score speaks; when no track reaches :data:`MIN_SPEAKER_CORR` the shot has no speaker and is left undubbed
(a warning says so). Scores on the pack's clips: the speaking GRID face 0.4-0.7, the silent one ≤ 0.1
(tests/test_dub_speaker.py).

Units: frames are a constant-rate timeline at ``fps`` (frame ``k`` at ``[k / fps, (k + 1) / fps)``), the same for the
landmarks and the audio; shots are ``[start, stop)`` frame ranges.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import TARGET_SR, band_log_energy, prepare_audio
from .errors import InputError
from .landmarks import FaceLandmarks, inner_lip_aperture
from .metrics import AUDIO_BAND, SYNC_MIN_FRAMES, lag_correlations

#: Lowest sync-proxy correlation (best lag within ±MAX_LAG) for a face to count as the shot's speaker. A speaking
#: face on the pack's clips scores 0.4-0.7 over a 3 s shot, a closed or chewing mouth below 0.15; 0.2 keeps
#: a margin on both sides.
MIN_SPEAKER_CORR = 0.2
#: Lags (frames) searched for the best correlation.
MAX_LAG = 2


@dataclass
class SpeakerChoice:
    """:func:`choose_speakers`'s result.

    Attributes:
        shots: ``[(start, stop), ...]`` frame ranges.
        speaker: per shot, the chosen track's key or None (no face matched).
        scores: per shot, ``{track key: correlation}`` of every scored track (NaN-free).
        labels: int64 ``[T]``: the chosen track's index in ``keys`` per frame, -1 where the shot has no speaker.
        keys: the track keys, in the order of the ``tracks`` mapping given.
        landmarks: :class:`FaceLandmarks` ``[T]``: the speaker's landmarks per frame, ``present`` where the
            speaker was detected in that frame (False in shots without a speaker and where the speaker's face
            was not detected, e.g. occluded: those frames pass through undubbed).
        warnings: plain-language notes (shots without a speaker).
    """

    shots: list
    speaker: list
    scores: list
    labels: np.ndarray
    keys: list
    landmarks: FaceLandmarks
    warnings: list = field(default_factory=list)


def _shot_score(aperture, energy, present, a, b) -> float:
    if int(present[a:b].sum()) < SYNC_MIN_FRAMES:
        return float("nan")
    corr = lag_correlations(aperture[a:b], energy[a:b], MAX_LAG, valid=present[a:b])
    vals = [v for v in corr.values() if np.isfinite(v)]
    return max(vals) if vals else float("nan")


def _choose(apertures: dict, present: dict, energy: np.ndarray, shots: list, min_corr: float):
    """The rule of :func:`choose_speakers` on per-track aperture / presence curves ``[T]``: (labels, speaker,
    scores, warnings)."""
    keys = list(apertures)
    labels = np.full(len(energy), -1, np.int64)
    speaker, scores, warnings = [], [], []
    for s, (a, b) in enumerate(shots):
        sc = {k: _shot_score(apertures[k], energy, present[k], a, b) for k in keys}
        sc = {k: v for k, v in sc.items() if np.isfinite(v)}
        scores.append(sc)
        best = max(sc, key=sc.get) if sc else None
        if best is None or sc[best] < min_corr:
            speaker.append(None)
            what = (f"the best face scored {sc[best]:.2f}" if best is not None
                    else f"no face was detected in {SYNC_MIN_FRAMES} or more of its frames")
            warnings.append(f"shot {s + 1} (frames {a}-{b - 1}): no face's mouth moves with the video's own audio "
                            f"({what}; a speaker needs a lip-sync correlation of at least {min_corr:.2f}); this "
                            "shot is left undubbed")
            continue
        speaker.append(best)
        labels[a:b] = keys.index(best)
    if all(s is None for s in speaker):
        best = max((v for sc in scores for v in sc.values()), default=float("nan"))
        raise InputError("waveform", "face = auto found no speaker: in no shot does a face's mouth move with the "
                                     f"video's own audio (best lip-sync correlation {best:.2f}, at least "
                                     f"{min_corr:.2f} needed; is the person on screen the one speaking?);",
                         "choose the face to dub with face = largest or by index")
    return labels, speaker, scores, warnings


def _soundtrack_energy(waveform, sample_rate, fps: float, T: int) -> np.ndarray:
    mono = prepare_audio(waveform, sample_rate).samples
    return band_log_energy(mono, TARGET_SR, fps, T, band=AUDIO_BAND).astype(np.float64)


def choose_speakers(tracks: dict, shots: list, waveform, sample_rate, fps: float,
                    min_corr: float = MIN_SPEAKER_CORR) -> SpeakerChoice:
    """The speaking face of each shot.

    Args:
        tracks: ``{key: FaceLandmarks [T, 478, 3]}``, one per face track, all on the same ``T``-frame timeline
            (``present`` where the track's face was detected; :meth:`ptalk_models.face_tracks.FaceTrack.landmarks`).
        shots: ``[(start, stop), ...]`` covering ``[0, T)`` (:func:`ptalk_models.scene_cuts.shots`).
        waveform, sample_rate: the video's own soundtrack, float ``[C, N]`` or ``[N]``, Hz.
        fps: frames per second of the timeline (> 0).
        min_corr: :data:`MIN_SPEAKER_CORR`.

    Raises:
        InputError: ``argument="tracks"`` (no tracks), ``"waveform"`` (audio ``prepare_audio`` rejects, or no
            face in any shot moves with it: the message gives the best score and the fix).
    """
    keys = list(tracks)
    if not keys:
        raise InputError("tracks", "no face was found in the video;", "use a video with a visible face")
    first = tracks[keys[0]]
    T = len(first)
    energy = _soundtrack_energy(waveform, sample_rate, fps, T)
    apertures = {k: inner_lip_aperture(tracks[k]).astype(np.float64) for k in keys}
    labels, speaker, scores, warnings = _choose(apertures, {k: tracks[k].present for k in keys}, energy, shots,
                                                min_corr)
    pts = first.points.copy()
    present = np.zeros(T, bool)
    for j, k in enumerate(keys):
        m = labels == j
        pts[m] = tracks[k].points[m]
        present[m] = tracks[k].present[m]
    lm = FaceLandmarks(points=pts, image_size=first.image_size, fps=fps, present=present,
                       meta={"source": "active speaker", "speakers": [None if s is None else str(s) for s in speaker]})
    return SpeakerChoice(list(shots), speaker, scores, labels, keys, lm, warnings)


def track_positions(track, frame_index: np.ndarray) -> np.ndarray:
    """Where a :class:`ptalk_models.face_tracks.FaceTrack` is detected on a timeline: int64 ``[N]``, for each
    timeline frame (showing decode-order frame ``frame_index[i]``) the index into ``track.frames`` /
    ``track.points`` of that frame's detection, -1 where the track has none."""
    frames = np.asarray(track.frames, np.int64)
    idx = np.asarray(frame_index, np.int64)
    j = np.clip(np.searchsorted(frames, idx), 0, len(frames) - 1)
    return np.where(frames[j] == idx, j, -1)


def timeline_landmarks(tracked, frame_index: np.ndarray, pick: np.ndarray, fps: float, meta=None) -> FaceLandmarks:
    """One person's landmarks on a timeline, assembled from the sparse tracks of
    :func:`ptalk_models.face_tracks.track_faces` (memory: this one ``[N, 478, 3]`` array, not one per track).

    ``pick``: int ``[N]``, the index into ``tracked.tracks`` shown at each timeline frame, -1 = nobody;
    ``present`` is True where the picked track was detected in that frame. Absent frames carry the first
    present frame's points (never read: renderers pass absent frames through)."""
    idx = np.asarray(frame_index, np.int64)
    pick = np.asarray(pick, np.int64)
    pts = np.zeros((len(idx), 478, 3), np.float32)
    present = np.zeros(len(idx), bool)
    for j, k in enumerate(tracked.tracks):
        m = np.flatnonzero(pick == j)
        if not len(m):
            continue
        pos = track_positions(k, idx[m])
        ok = pos >= 0
        if ok.any():
            pts[m[ok]] = np.asarray(k.points, np.float32)[pos[ok]]
            present[m[ok]] = True
    if present.any():
        pts[~present] = pts[np.argmax(present)]
    return FaceLandmarks(points=pts, image_size=tuple(tracked.image_size), fps=fps, present=present,
                         meta=dict(meta or {}))


def active_speaker(tracked, waveform, sample_rate, frame_index=None,
                   min_corr: float = MIN_SPEAKER_CORR) -> SpeakerChoice:
    """:func:`choose_speakers` for the result of :func:`ptalk_models.face_tracks.track_faces`.

    ``frame_index``: optional int ``[N]``, the decode-order frame shown at each frame of a constant-rate timeline
    (:func:`ptalk_models.media.constant_rate_index`); the tracks, the cuts (a shot starts at the first timeline
    frame showing a frame at or after its cut) and the result are put on that timeline. None: decode order.
    Scored on each track's own detections (an aperture curve ``[N]`` per track); only the chosen speakers'
    landmarks become one ``[N, 478, 3]`` array. Raises as :func:`choose_speakers`.
    """
    from .landmarks import inner_lip_gap_px, inter_ocular_px
    from .scene_cuts import shots

    n, size, fps = tracked.n_frames, tracked.image_size, tracked.fps
    if not tracked.tracks:
        raise InputError("tracks", "no face was found in the video;", "use a video with a visible face")
    idx = np.arange(n) if frame_index is None else np.asarray(frame_index, np.int64)
    energy = _soundtrack_energy(waveform, sample_rate, fps, len(idx))
    apertures, present, keys = {}, {}, [k.track_id for k in tracked.tracks]
    for k in tracked.tracks:
        px = np.asarray(k.points, np.float64) * (size[0], size[1], size[0])
        ap = inner_lip_gap_px(px) / np.maximum(inter_ocular_px(px), 1e-6)
        pos = track_positions(k, idx)
        present[k.track_id] = pos >= 0
        apertures[k.track_id] = np.where(pos >= 0, ap[np.maximum(pos, 0)], 0.0)
    cuts = [int(np.searchsorted(idx, c, side="left")) for c in tracked.cuts]
    sh = shots(cuts, len(idx))
    labels, speaker, scores, warnings = _choose(apertures, present, energy, sh, min_corr)
    lm = timeline_landmarks(tracked, idx, labels, fps,
                            {"source": "active speaker", "speakers": [None if s is None else str(s) for s in speaker]})
    return SpeakerChoice(list(sh), speaker, scores, labels, keys, lm, warnings)


__all__ = ["MIN_SPEAKER_CORR", "MAX_LAG", "SpeakerChoice", "choose_speakers", "active_speaker",
           "track_positions", "timeline_landmarks"]
