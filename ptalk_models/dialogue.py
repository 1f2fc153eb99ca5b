"""Dialogue dubbing: two faces of one video, each driven by its own speech (issue 14 item 3).

Three pieces, all landmark/audio level (rendering is :func:`ptalk_models.dub_render.iter_dub`, once per face):

* :func:`assign_faces` -- which face track is "face 1" and which "face 2" in every frame, from the tracks of
  :func:`ptalk_models.face_tracks.track_faces` (one decode pass, cuts by PySceneDetect). Rule, per shot: the
  shot's tracks (:data:`MIN_TRACK_FRAMES` detections or more) are ordered by their median nose-tip x; when they
  are spread over at least :data:`MIN_SPREAD` of the frame width (two people side by side) they are split at the
  widest gap between neighbours, left of it = face 1, right of it = face 2; when they are not (one person in
  the shot, e.g. a single close-up) each goes by the half of the frame it is in (left = face 1), which follows
  the film-making 180-degree rule (in shot / reverse-shot coverage each person keeps their side of the frame).
  Two tracks of the same face detected in the same frame: the larger face (inter-ocular distance) wins.
* :func:`parse_turns` / :func:`turn_mask` -- "one speech track with a time range per face": the ranges in
  seconds, e.g. ``"1: 0-3.2, 6.5-9\\n2: 3.2-6.5"``.
* :func:`speech_for_faces` -- each face's own speech waveform (its track, or the shared track silenced outside
  that face's turns) and the mix the dubbed video carries. Outside a face's speech the mouth rests closed
  (Silero VAD in :func:`ptalk_models.dubbing.plan_dub`), so the listener never sees both faces talk over one
  voice.

Units: seconds for turns, Hz for sample rates, normalised x (/ width) for positions; timelines are the
constant-rate frames of :func:`ptalk_models.media.constant_rate_index`.
"""
from __future__ import annotations

import re

import numpy as np

from .errors import InputError
from .landmarks import NOSE_TIP, inter_ocular_px

#: Number of faces a dialogue dubs (face 1 = left, face 2 = right).
DIALOGUE_FACES = 2

#: A track needs this many detections in a shot to be assigned (fewer: a false detection or a passer-by).
MIN_TRACK_FRAMES = 3

#: Smallest spread of the shot's tracks' median nose x (fraction of the frame width) that counts as two people
#: side by side; below it every track goes by the frame half it is in.
MIN_SPREAD = 0.1


def _track_stats(track, size) -> tuple[float, np.ndarray]:
    """(median nose-tip x in [0, 1], inter-ocular distance in pixels per detection ``[n]``)."""
    pts = np.asarray(track.points, np.float64)
    px = pts[..., :2] * (size[0], size[1])
    return float(np.median(pts[:, NOSE_TIP, 0])), inter_ocular_px(px)


def assign_faces(tracked, frame_index=None, n_faces: int = DIALOGUE_FACES) -> np.ndarray:
    """Face slots per timeline frame: int64 ``[n_faces, N]``, the index into ``tracked.tracks`` that is face
    ``s`` at timeline frame ``i`` (-1: that face is not visible there). Module docstring for the rule.

    ``tracked``: :class:`ptalk_models.face_tracks.TrackedVideo`; ``frame_index``: int ``[N]`` decode-order frame
    shown at each timeline frame (None: decode order). Only ``n_faces`` = 2 splits by the widest gap; other
    counts use equal-width vertical bands of the frame. Raises :class:`InputError` (``"tracks"``) when no face
    was found.
    """
    from .active_speaker import track_positions
    from .scene_cuts import shots

    if not tracked.tracks:
        raise InputError("tracks", "no face was found in the video;", "use a video with the two faces visible")
    idx = np.arange(tracked.n_frames) if frame_index is None else np.asarray(frame_index, np.int64)
    picks = np.full((n_faces, len(idx)), -1, np.int64)
    size_at = np.zeros((n_faces, len(idx)))
    cuts = [int(np.searchsorted(idx, c, side="left")) for c in tracked.cuts]
    pos = {j: track_positions(k, idx) for j, k in enumerate(tracked.tracks)}
    for a, b in shots(cuts, len(idx)):
        members = [(j, *_track_stats(k, tracked.image_size)) for j, k in enumerate(tracked.tracks)
                   if int((pos[j][a:b] >= 0).sum()) >= MIN_TRACK_FRAMES]
        if not members:
            continue
        xs = np.array([m[1] for m in members])
        order = np.argsort(xs, kind="stable")
        if n_faces == 2 and len(members) > 1 and xs.max() - xs.min() >= MIN_SPREAD:
            gaps = np.diff(xs[order])
            split = int(np.argmax(gaps)) + 1
            slot = {members[o][0]: int(r >= split) for r, o in enumerate(order)}
        else:
            slot = {m[0]: min(int(m[1] * n_faces), n_faces - 1) for m in members}
        for j, _, iod in members:
            s = slot[j]
            p = pos[j][a:b]
            for t in np.flatnonzero(p >= 0):
                size = float(iod[p[t]])
                if picks[s, a + t] < 0 or size > size_at[s, a + t]:
                    picks[s, a + t], size_at[s, a + t] = j, size
    return picks


_RANGE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


def parse_turns(text: str, n_faces: int = DIALOGUE_FACES) -> list[list[tuple[float, float]]] | None:
    """Each face's speaking turns from text: one line per face, ``"<face>: <start>-<end>, <start>-<end>"`` in
    seconds, faces numbered from 1 (``"1: 0-3.2, 6.5-9"`` / ``"2: 3.2-6.5"``; ``;`` also separates lines).
    Empty text: None (no turns). Returns ``n_faces`` lists of ``(start, end)`` (a face without a line gets no
    turn).

    Raises:
        InputError: ``argument="turns"`` for a malformed line, a face number outside 1..n_faces, a range with
            end <= start, or a face given twice; the message quotes the line and shows the format.
    """
    text = (text or "").strip()
    if not text:
        return None
    fmt = 'write one line per face, e.g. "1: 0-3.2, 6.5-9" and "2: 3.2-6.5" (seconds from the start of the speech)'
    turns: list[list[tuple[float, float]] | None] = [None] * n_faces
    for line in re.split(r"[\n;]+", text):
        if not line.strip():
            continue
        face, sep, ranges = line.partition(":")
        if not sep or not face.strip().isdigit():
            raise InputError("turns", f"cannot read {line.strip()!r};", fmt)
        f = int(face.strip())
        if not 1 <= f <= n_faces:
            raise InputError("turns", f"{line.strip()!r} names face {f}, but the dialogue has faces 1..{n_faces};",
                             fmt)
        if turns[f - 1] is not None:
            raise InputError("turns", f"face {f} is given twice;", "put all its ranges on one line, comma-separated")
        got = []
        for r in ranges.split(","):
            m = _RANGE.match(r)
            if not m:
                raise InputError("turns", f"cannot read the range {r.strip()!r} in {line.strip()!r};", fmt)
            s, e = float(m.group(1)), float(m.group(2))
            if e <= s:
                raise InputError("turns", f"the range {r.strip()!r} ends before it starts;", fmt)
            got.append((s, e))
        turns[f - 1] = got
    return [t or [] for t in turns]


def turn_mask(ranges, n_samples: int, sample_rate: int) -> np.ndarray:
    """float32 ``[n_samples]``: 1 inside the ``(start, end)`` second ranges, 0 outside, with 10 ms linear
    fades at each edge (no click)."""
    m = np.zeros(int(n_samples), np.float32)
    fade = max(1, int(round(0.01 * sample_rate)))
    for s, e in ranges:
        a, b = int(round(s * sample_rate)), min(int(round(e * sample_rate)), len(m))
        if b <= a:
            continue
        m[a:b] = 1.0
        ramp = np.linspace(0.0, 1.0, fade + 2, dtype=np.float32)[1:-1]
        r = min(fade, (b - a) // 2)
        if r:
            m[a:a + r] = np.minimum(m[a:a + r], ramp[:r])
            m[b - r:b] = np.minimum(m[b - r:b], ramp[:r][::-1])
    return m


def _resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return wav
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wav, np.float32)), sr, target).numpy()


def speech_for_faces(tracks: list, turns=None) -> tuple[list[tuple[np.ndarray, int]], tuple[np.ndarray, int]]:
    """Each face's speech and the dialogue's soundtrack.

    Args:
        tracks: ``[(float32 [C, N], Hz), ...]``: one speech track for all faces (then ``turns`` is needed), or
            one per face (face 1 first).
        turns: :func:`parse_turns`' result or None. With one track, face ``s`` hears the track only inside its
            turns (silence elsewhere); with one track per face, each track is additionally cut to its face's
            turns when given.

    Returns:
        (``[(wav_s, sr), ...]`` one per face, all the same length and rate; (mix, sr)): the soundtrack is the one
        track, or the sum of the per-face tracks (each resampled to the highest rate with torchaudio, padded
        with silence to the longest, channels matched by averaging to mono when they differ), scaled down only
        if its peak exceeds 1.

    Raises:
        InputError: ``argument="turns"`` when one track is given without turns.
    """
    if len(tracks) == 1:
        if turns is None:
            raise InputError("turns", "one speech track for two faces needs each face's turns;",
                             'connect a second speech track, or write the turns, e.g. "1: 0-3.2" and "2: 3.2-6.5"')
        wav, sr = tracks[0]
        wav = np.asarray(wav, np.float32)
        faces = [(wav * turn_mask(t, wav.shape[-1], sr)[None], sr) for t in turns]
        return faces, (wav, sr)
    sr = max(int(s) for _, s in tracks)
    wavs = [_resample(np.asarray(w, np.float32), int(s), sr) for w, s in tracks]
    if len({w.shape[0] for w in wavs}) > 1:
        wavs = [w.mean(0, keepdims=True) for w in wavs]
    n = max(w.shape[-1] for w in wavs)
    wavs = [np.pad(w, ((0, 0), (0, n - w.shape[-1]))) for w in wavs]
    if turns is not None:
        wavs = [w * turn_mask(t, n, sr)[None] for w, t in zip(wavs, turns)]
    mix = np.sum(wavs, axis=0)
    peak = float(np.abs(mix).max()) if mix.size else 0.0
    if peak > 1.0:
        mix = mix / peak
    return [(w, sr) for w in wavs], (mix.astype(np.float32), sr)


__all__ = ["DIALOGUE_FACES", "MIN_TRACK_FRAMES", "MIN_SPREAD", "assign_faces", "parse_turns", "turn_mask",
           "speech_for_faces"]
