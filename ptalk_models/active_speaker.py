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
    mono = prepare_audio(waveform, sample_rate).samples
    energy = band_log_energy(mono, TARGET_SR, fps, T, band=AUDIO_BAND).astype(np.float64)
    apertures = {k: inner_lip_aperture(tracks[k]).astype(np.float64) for k in keys}
    labels = np.full(T, -1, np.int64)
    speaker, scores, warnings = [], [], []
    for s, (a, b) in enumerate(shots):
        sc = {k: _shot_score(apertures[k], energy, tracks[k].present, a, b) for k in keys}
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
    pts = first.points.copy()
    present = np.zeros(T, bool)
    for j, k in enumerate(keys):
        m = labels == j
        pts[m] = tracks[k].points[m]
        present[m] = tracks[k].present[m]
    lm = FaceLandmarks(points=pts, image_size=first.image_size, fps=fps, present=present,
                       meta={"source": "active speaker", "speakers": [None if s is None else str(s) for s in speaker]})
    return SpeakerChoice(list(shots), speaker, scores, labels, keys, lm, warnings)


def active_speaker(tracked, waveform, sample_rate, frame_index=None,
                   min_corr: float = MIN_SPEAKER_CORR) -> SpeakerChoice:
    """:func:`choose_speakers` for the result of :func:`ptalk_models.face_tracks.track_faces`.

    ``frame_index``: optional int ``[N]``, the decode-order frame shown at each frame of a constant-rate timeline
    (:func:`ptalk_models.media.constant_rate_index`); the tracks, the cuts (a shot starts at the first timeline
    frame showing a frame at or after its cut) and the result are put on that timeline. None: decode order.
    Raises as :func:`choose_speakers`.
    """
    from .scene_cuts import shots

    n, size, fps = tracked.n_frames, tracked.image_size, tracked.fps
    idx = np.arange(n) if frame_index is None else np.asarray(frame_index, np.int64)
    tracks = {}
    for k in tracked.tracks:
        lm = k.landmarks(n, size, fps)
        tracks[k.track_id] = FaceLandmarks(points=lm.points[idx], image_size=size, fps=fps,
                                           present=lm.present[idx], meta=lm.meta)
    cuts = [int(np.searchsorted(idx, c, side="left")) for c in tracked.cuts]
    return choose_speakers(tracks, shots(cuts, len(idx)), waveform, sample_rate, fps, min_corr)


__all__ = ["MIN_SPEAKER_CORR", "MAX_LAG", "SpeakerChoice", "choose_speakers", "active_speaker"]
