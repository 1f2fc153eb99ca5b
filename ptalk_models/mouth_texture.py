"""The speaker's own mouth: lip, teeth and mouth-interior texture retrieved from the source video's own frames.

Visual dubbing (:mod:`.dub_render`) re-shapes the lower face of each frame; this module supplies what the mouth
looks like. Instead of squeezing the frame's own mouth and painting a synthetic cavity where the new mouth opens
wider, each output frame gets the mouth of another frame of the same video whose mouth shape best matches the
target, warped into the target shape in this frame's pose -- the source mouth is *replaced*, not squeezed.

Sources: PersonaTalk (Zhang et al., arXiv 2409.05379) samples lip texture from reference frames of the same video
chosen for their lip shape (its Lip-Attention); Video Rewrite (Bregler, Covell & Slaney, SIGGRAPH 1997) stitches
the speaker's own mouth images from the training footage into the background video; "Synthesizing Obama"
(Suwajanakorn, Seitz & Kemelmacher-Shlizerman, SIGGRAPH 2017) selects, per output frame, candidate mouth frames
of the speaker by shape and picks among them with a temporally consistent (dynamic-programming) selection. This
module is the non-neural CPU form of that idea on MediaPipe landmarks.

Units and shapes: frames ``uint8 [H, W, 3]`` RGB; landmarks :class:`~ptalk_models.landmarks.FaceLandmarks`
(normalised) or pixel arrays ``float [478, 2|3]``; shape distances are in inter-ocular distances (IOD, outer eye
corners 33-263) of a canonical, pose-normalised frame.

1. **Descriptor** (:func:`mouth_descriptors`). Each frame's 478 points are mapped by the least-squares 3-D
   similarity (Umeyama) of its rigid upper-face points (:data:`ptalk_models.head_pose.STABLE_POINTS`) onto a
   canonical face (the bank's reference frame), divided by the canonical IOD: the 40 lip points (outer and inner
   contour) in that frame are the mouth shape, independent of head pose, position and scale; the rotation of the
   similarity is the head pose.
2. **Bank** (:class:`MouthBank`, :func:`build_mouth_bank`). Chosen from landmarks only, before any pixel is
   decoded: among the frames with a face, the closed-mouth frame, then greedy farthest-point sampling in the
   selection distance below (covers the speaker's whole shape range, the widest openings included) up to
   ``capacity`` frames (default 48). Only those frames are then decoded (``fetch``), and a box around the mouth
   (lips, teeth, interior and a ring of skin: the face-mesh vertices within 0.6 IOD of the mouth centre) is kept
   per candidate at the source resolution (longest side at most 640 px), with its landmarks. Memory: at most
   ``capacity`` crops (a few MB at 512x512, ~20 MB at 1080x1920), whatever the video length.
3. **Selection** (:func:`select_candidates`). Cost of candidate c for output frame t:
   ``rms(lips_t - lips_c) + 1.0 * |gap_t - gap_c| + 1.0 * max(0, gap_t - gap_c) + 0.1 * angle(R_t, R_c)`` (gap:
   inner-lip aperture, IOD; angle in radians; an opening the candidate lacks costs double, since it must be
   filled synthetically). The ``top_k`` (8) cheapest candidates per frame are the states of a Viterbi
   shortest path whose transition costs ``switch_cost`` (0.03) for a change of candidate: a texture is kept until
   another fits clearly better, so the mouth does not flicker (Suwajanakorn et al.'s temporally consistent
   selection). The path is solved over the whole plan at once -- it needs landmarks only (``N x top_k`` small
   integers), no pixels, so it does not hold back the streamed rendering.
4. **Render** (:func:`paste_mouth`). The candidate's crop is warped (piecewise-affine on MediaPipe's face-mesh
   triangles around the mouth, one bilinear resampling from the source pixels) from its landmarks to the
   target's in this frame. The mouth opening is closed by three strips as in :mod:`.render`: the candidate's
   interior is split at its mid-line, each half rides on its lip (rigid while the target opens at most 1.3 times
   the candidate's gap, squeezed when less open) and only the band a too-closed candidate cannot cover is painted
   with the synthetic cavity/teeth of :mod:`.render` -- the fallback when no candidate opens wide enough. The
   warped mouth is pasted over the union of the target's and the source frame's outer-lip polygons dilated by
   0.12 IOD (so the source's own lips and opening are covered: replaced, not squeezed), feathered over 0.08 IOD
   inside that edge, Lab colour-matched in the feather ring (:func:`ptalk_models.dub_render.blend_region`).
   Outside that region the frame is untouched.

A talking photo has no video to take mouths from: :func:`build_photo_bank` makes the bank from the reference
portrait plus further photos of the person (other mouth shapes), and :func:`paste_mouths` pastes the chosen one
into each rendered frame (Landmark Warp Render's ``mouth_references``).

Limits: a candidate's texture is a 2-D warp (a head turned far from every candidate's pose stretches it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from . import landmarks as L
from .easing import smoothstep
from .errors import InputError
from .head_pose import STABLE_POINTS, similarity
from .landmarks import FaceLandmarks, NUM_LANDMARKS
from .topology import face_mesh_triangles, strip_triangles

#: Lip points of the shape descriptor: outer then inner contour (40 points).
LIP_POINTS = np.array(L.LIPS_OUTER + L.LIPS_INNER)
DEFAULT_CAPACITY = 48          # candidates in a bank
DEFAULT_TOP_K = 8              # Viterbi states per frame
DEFAULT_SWITCH_COST = 0.03     # transition cost of a texture change (IOD units of the unary cost)
_GAP_W, _LACK_W, _POSE_W = 1.0, 1.0, 0.1
_VERTEX_RADIUS = 0.6           # IOD: face-mesh vertices around the mouth centre that the crop/warp uses
_CROP_MARGIN = 0.12            # IOD margin around those vertices in the stored crop
_MAX_CROP = 640                # longest side of a stored crop, px
_STRETCH = 1.3                 # interior stretch allowed before the middle band is painted
_OPEN_REF = 0.12               # inner gap / inner width below which a candidate's interior is not used
_UPPER_MID = np.array(L.LIPS_INNER_UPPER[1:-1])
_LOWER_MID = np.array(L.LIPS_INNER_LOWER[1:-1])
_SHIFT = 4
_SUB = float(1 << _SHIFT)


# ------------------------------------------------------------------------------------------------ shapes
def mouth_descriptors(px: np.ndarray, canon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose-normalised mouth shapes of frames.

    Args:
        px: float ``[N, 478, 3]`` landmarks in pixels (x, y, z * width).
        canon: float ``[478, 3]`` pixel landmarks of the canonical face (the bank's reference frame).
    Returns:
        ``(desc float32 [N, 80], gap float32 [N], rot float32 [N, 3, 3])``: the 40 :data:`LIP_POINTS` (x, y) in
        the canonical frame in canonical IODs; the inner-lip aperture in IODs; the rotation of each frame's
        similarity onto the canonical face (its head pose relative to the reference).
    """
    stable = list(STABLE_POINTS)
    ci = float(max(L.inter_ocular_px(canon), 1e-6))
    n = len(px)
    desc = np.zeros((n, len(LIP_POINTS) * 2), np.float32)
    rot = np.zeros((n, 3, 3), np.float32)
    for t in range(n):
        s, R, tr = similarity(px[t, stable], canon[stable])
        q = s * px[t, LIP_POINTS] @ R.T + tr
        desc[t] = (q[:, :2] / ci).reshape(-1)
        rot[t] = R
    gap = (L.inner_lip_gap_px(px[..., :2]) / np.maximum(L.inter_ocular_px(px), 1e-6)).astype(np.float32)
    return desc, gap, rot


def _angles(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Rotation angle (rad) between each of ``rot_a [N, 3, 3]`` and each of ``rot_b [K, 3, 3]``: ``[N, K]``."""
    tr = np.einsum("nij,kij->nk", rot_a.astype(np.float64), rot_b.astype(np.float64))
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


#: Target frames per block in :func:`shape_costs`: its ``[block, K, D]`` temporaries stay at ~30 MB instead of
#: growing with the video (a 10-minute dub's 15000 frames x 48 candidates took ~1 GB at the render's start)
COST_BLOCK = 1024


def shape_costs(desc_t, gap_t, rot_t, desc_c, gap_c, rot_c) -> np.ndarray:
    """Selection cost ``float64 [N, K]`` of K candidates for N target frames (module docstring, step 3),
    computed :data:`COST_BLOCK` frames at a time (memory bounded in N; each row depends on its frame only)."""
    n, k = len(desc_t), len(desc_c)
    out = np.empty((n, k), np.float64)
    for a in range(0, n, COST_BLOCK):
        b = min(n, a + COST_BLOCK)
        d = desc_t[a:b, None, :].astype(np.float64) - desc_c[None, :, :]
        rms = np.sqrt((d.reshape(b - a, k, -1, 2) ** 2).sum(-1).mean(-1))
        dg = gap_t[a:b, None].astype(np.float64) - gap_c[None, :]
        out[a:b] = rms + _GAP_W * np.abs(dg) + _LACK_W * np.maximum(dg, 0.0) + _POSE_W * _angles(rot_t[a:b], rot_c)
    return out


# ------------------------------------------------------------------------------------------------ bank
@dataclass
class MouthCandidate:
    """One bank entry: ``crop`` uint8 ``[h, w, 3]`` (a box around the mouth of source frame ``frame``),
    ``pts`` float64 ``[478, 2]`` its landmarks in crop pixels, ``desc`` / ``gap`` / ``rot`` its shape
    (:func:`mouth_descriptors`)."""
    frame: int
    crop: np.ndarray
    pts: np.ndarray
    desc: np.ndarray
    gap: float
    rot: np.ndarray


@dataclass
class MouthBank:
    """A capped set of mouth textures of one video (module docstring, step 2); made by :func:`build_mouth_bank`.

    ``canon``: float64 ``[478, 3]`` pixel landmarks of the canonical (reference) face; ``candidates``; ``tris``:
    int32 ``[M, 3]`` warp triangles over the 478 landmarks plus two copies of the 9 inner-lip mid-line points
    (vertex ids 478..486 ride on the upper lip, 487..495 on the lower); ``vertices``: int ``[V]`` the landmarks
    those triangles use.
    """
    canon: np.ndarray
    candidates: list
    tris: np.ndarray
    vertices: np.ndarray

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def nbytes(self) -> int:
        """Bytes held by the candidates' pixels and landmarks."""
        return int(sum(c.crop.nbytes + c.pts.nbytes + c.desc.nbytes for c in self.candidates))

    def arrays(self):
        """``(desc [K, 80], gap [K], rot [K, 3, 3])`` of the candidates."""
        c = self.candidates
        return (np.stack([x.desc for x in c]), np.array([x.gap for x in c], np.float32), np.stack([x.rot for x in c]))


def _warp_triangles(canon_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-mesh triangles whose vertices all lie within :data:`_VERTEX_RADIUS` IOD of the mouth centre, plus the
    three mouth-opening strips (upper inner lip -> upper mid-line copy -> lower mid-line copy -> lower inner lip)."""
    io = float(max(L.inter_ocular_px(canon_px), 1e-6))
    centre = 0.5 * (canon_px[L.MOUTH_CORNER_LEFT, :2] + canon_px[L.MOUTH_CORNER_RIGHT, :2])
    near = np.linalg.norm(canon_px[:, :2] - centre, axis=1) < _VERTEX_RADIUS * io
    near[LIP_POINTS] = True
    near[468:] = False
    mesh = face_mesh_triangles()
    mesh = mesh[near[mesh].all(1)]
    n_mid = len(_UPPER_MID)
    mu = list(range(NUM_LANDMARKS, NUM_LANDMARKS + n_mid))
    ml = list(range(NUM_LANDMARKS + n_mid, NUM_LANDMARKS + 2 * n_mid))
    c0, c1 = L.LIPS_INNER_UPPER[0], L.LIPS_INNER_UPPER[-1]
    mu_line, ml_line = [c0] + mu + [c1], [c0] + ml + [c1]
    mouth = (strip_triangles(L.LIPS_INNER_UPPER, mu_line) + strip_triangles(mu_line, ml_line)
             + strip_triangles(ml_line, L.LIPS_INNER_LOWER))
    tris = np.concatenate([np.array(mouth, np.int32), mesh.astype(np.int32)])
    return tris, np.flatnonzero(near)


def select_bank_frames(px: np.ndarray, present: np.ndarray, capacity: int = DEFAULT_CAPACITY,
                       keys: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Which frames go into the bank, from landmarks only: ``(positions int64 [K] ascending, reference position)``.

    ``px``: float ``[N, 478, 3]`` pixel landmarks; ``present``: bool ``[N]``; ``keys``: int ``[N]`` source-frame
    id of each position (duplicates -- a ping-pong plan shows frames twice -- are considered once; None: all
    distinct). The reference (canonical face) is the closed-mouth frame; then greedy farthest-point sampling in
    the selection cost (symmetrised) adds the frame least like any chosen one, up to ``capacity``.
    Raises InputError (``"source"``) when no frame has a face.
    """
    present = np.asarray(present, bool)
    keys = np.arange(len(px)) if keys is None else np.asarray(keys)
    _, first = np.unique(keys, return_index=True)
    cand = np.sort(first[present[first]])
    if len(cand) == 0:
        raise InputError("source", "no frame of the video has a face; there is no mouth to take texture from")
    gap = L.inner_lip_gap_px(px[cand, :, :2]) / np.maximum(L.inter_ocular_px(px[cand]), 1e-6)
    ref = int(cand[int(np.argmin(gap))])
    desc, g, rot = mouth_descriptors(px[cand], px[ref])
    chosen = [int(np.argmin(g))]
    dist = np.full(len(cand), np.inf)
    while len(chosen) < min(int(capacity), len(cand)):
        j = chosen[-1]
        d = 0.5 * (shape_costs(desc, g, rot, desc[j:j + 1], g[j:j + 1], rot[j:j + 1])[:, 0]
                   + shape_costs(desc[j:j + 1], g[j:j + 1], rot[j:j + 1], desc, g, rot)[0])
        dist = np.minimum(dist, d)
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 1e-9:
            break
        chosen.append(nxt)
    return np.sort(cand[chosen]), ref


def _crop_box(pts: np.ndarray, vertices: np.ndarray, shape_hw) -> tuple[int, int, int, int]:
    H, W = shape_hw
    io = float(max(L.inter_ocular_px(pts), 1e-6))
    p = pts[vertices, :2]
    m = _CROP_MARGIN * io + 2
    x0, y0 = (int(max(0, np.floor(v))) for v in p.min(0) - m)
    x1 = int(min(W, np.ceil(p[:, 0].max() + m)))
    y1 = int(min(H, np.ceil(p[:, 1].max() + m)))
    return x0, y0, x1, y1


def _candidate(frame: np.ndarray, p: np.ndarray, vertices: np.ndarray, frame_id: int, desc, gap, rot
               ) -> MouthCandidate:
    """A bank entry: the mouth box of ``frame`` (uint8 ``[H, W, 3]``) around ``vertices`` of its pixel
    landmarks ``p [478, 2]``, longest side at most :data:`_MAX_CROP` px."""
    H, W = frame.shape[:2]
    x0, y0, x1, y1 = _crop_box(p, vertices, (H, W))
    crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
    pts = p - (x0, y0)
    scale = _MAX_CROP / max(crop.shape[:2])
    if scale < 1:
        import cv2
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
        pts = pts * scale
    return MouthCandidate(int(frame_id), crop, pts, desc, float(gap), rot)


def build_mouth_bank(source: FaceLandmarks, fetch: Callable[[np.ndarray], Iterable[np.ndarray]],
                     source_index=None, capacity: int = DEFAULT_CAPACITY) -> MouthBank:
    """Build the mouth bank of a video (module docstring, step 2).

    Args:
        source: the video's landmarks, one entry per position (e.g. ``DubPlan.source``: per output frame).
        fetch: ``fetch(ids)`` with ``ids`` int64 ``[K]`` ascending source-frame ids yields those frames,
            ``uint8 [H, W, 3]`` in that order (e.g. ``lambda ids: frames_at(path, ids)``, or indexing an array);
            only the K bank frames are decoded.
        source_index: int ``[N]`` source-frame id of each position (``DubPlan.source_index``; None = position).
        capacity: at most this many candidates (>= 1).
    Returns:
        a :class:`MouthBank` of ``min(capacity, distinct frames with a face)`` candidates.
    Raises:
        InputError: ``"source"`` (not FaceLandmarks / no face), ``"capacity"`` (< 1), ``"fetch"`` (it yields fewer
        frames than asked or frames of another aspect ratio than the landmarks').
    """
    if not isinstance(source, FaceLandmarks):
        raise InputError("source", f"expected FaceLandmarks, got {type(source).__name__}")
    if int(capacity) < 1:
        raise InputError("capacity", f"capacity must be >= 1 candidate, got {capacity}")
    px = L.to_pixels(source.points, source.image_size)
    keys = np.arange(len(source)) if source_index is None else np.asarray(source_index, np.int64)
    if len(keys) != len(source):
        raise InputError("source_index", f"source_index has {len(keys)} entries for {len(source)} landmark frames")
    pos, ref = select_bank_frames(px, source.present, capacity, keys)
    canon = px[ref]
    tris, vertices = _warp_triangles(canon)
    desc, gap, rot = mouth_descriptors(px[pos], canon)
    ids = keys[pos]
    order = np.argsort(ids, kind="stable")
    sw, sh = source.image_size
    cands = [None] * len(pos)
    got = 0
    for k, frame in zip(order, fetch(ids[order])):
        f = np.asarray(frame)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise InputError("fetch", f"bank frames must be uint8 [H, W, 3], got {f.dtype} {f.shape}")
        H, W = f.shape[:2]
        if abs(W / H - sw / sh) > 0.01 * (sw / sh):
            raise InputError("fetch", f"bank frame is {W}x{H} but the landmarks are for {sw}x{sh} frames")
        p = source.points[pos[k], :, :2].astype(np.float64) * (W, H)
        cands[k] = _candidate(f, p, vertices, int(ids[k]), desc[k], gap[k], rot[k])
        got += 1
    if got != len(pos):
        raise InputError("fetch", f"fetch yielded {got} frames for {len(pos)} requested")
    return MouthBank(canon=canon, candidates=cands, tris=tris, vertices=vertices)


def build_mouth_banks(source: FaceLandmarks, fetch: Callable[[np.ndarray], Iterable[np.ndarray]],
                      source_index=None, person=None, capacity: int = DEFAULT_CAPACITY) -> dict:
    """One mouth bank per person of a video: ``{label: MouthBank}`` (:func:`build_mouth_bank` on each person's
    frames only, so one person's mouth is never pasted onto another's face).

    ``person``: int ``[N]`` label per position (:attr:`ptalk_models.dubbing.DubPlan.person`; -1 = nobody, no
    bank), or None: one person, ``{None: bank}``. Labels without a detected face get no bank. Each bank decodes
    its own frames (``fetch`` is called once per person). Raises as :func:`build_mouth_bank`.
    """
    if person is None:
        return {None: build_mouth_bank(source, fetch, source_index, capacity)}
    labels = np.asarray(person, np.int64).reshape(-1)
    if len(labels) != len(source):
        raise InputError("person", f"person has {len(labels)} labels for {len(source)} landmark frames")
    banks = {}
    for p in np.unique(labels[(labels >= 0) & np.asarray(source.present, bool)]):
        sub = source.with_points(source.points, present=np.asarray(source.present, bool) & (labels == p))
        banks[int(p)] = build_mouth_bank(sub, fetch, source_index, capacity)
    return banks


def build_photo_bank(photos, landmarks) -> MouthBank:
    """A mouth bank from still photos of one person (a talking photo's reference portrait and further reference
    photos showing other mouth shapes: open, teeth, rounded lips): every photo is a candidate.

    Args:
        photos: list of uint8 ``[H_i, W_i, 3]`` RGB photos, any sizes.
        landmarks: list of the same length: each photo's :class:`FaceLandmarks` (first frame used, e.g.
            :func:`ptalk_models.face.detect_landmarks` of it).
    Returns:
        a :class:`MouthBank` whose canonical face is the photo with the least-open mouth; candidate ``frame`` =
        the photo's index in ``photos``.
    Raises:
        InputError: ``"photos"`` (none, a bad array, a count other than the landmarks'), ``"landmarks"`` (not
        FaceLandmarks, no face, another aspect ratio than its photo).
    """
    if len(photos) == 0 or len(photos) != len(landmarks):
        raise InputError("photos", f"expected one landmark set per photo, got {len(photos)} photos and "
                                   f"{len(landmarks)} landmark sets")
    px = []
    for i, (f, lm) in enumerate(zip(photos, landmarks)):
        f = np.asarray(f)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise InputError("photos", f"photo {i} must be uint8 [H, W, 3], got {f.dtype} {f.shape}")
        if not isinstance(lm, FaceLandmarks) or not bool(lm.present[0]):
            raise InputError("landmarks", f"photo {i} has no detected face")
        sw, sh = lm.image_size
        H, W = f.shape[:2]
        if abs(W / H - sw / sh) > 0.01 * (sw / sh):
            raise InputError("landmarks", f"photo {i} is {W}x{H} but its landmarks are for {sw}x{sh}")
        px.append(L.to_pixels(lm.points[0], (W, H)))
    px = np.stack(px)
    gaps = L.inner_lip_gap_px(px[..., :2]) / np.maximum(L.inter_ocular_px(px), 1e-6)
    canon = px[int(np.argmin(gaps))]
    tris, vertices = _warp_triangles(canon)
    desc, gap, rot = mouth_descriptors(px, canon)
    cands = [_candidate(np.asarray(f), px[i, :, :2], vertices, i, desc[i], gap[i], rot[i])
             for i, f in enumerate(photos)]
    return MouthBank(canon=canon, candidates=cands, tris=tris, vertices=vertices)


def paste_mouths(frames, sequence: FaceLandmarks, bank: MouthBank, size_wh: tuple[int, int],
                 color_match: bool = True, mouth_fill: str = "cavity_and_teeth"):
    """Give rendered talking-photo frames the bank's real mouths: a generator over ``frames`` (uint8
    ``[H, W, 3]`` arrays, or :class:`ptalk_models.media.PatchedFrame` face crops), one per frame of
    ``sequence`` (the landmarks they were rendered to). Each frame's candidate is chosen up front from the
    landmarks (:func:`select_candidates`: Viterbi over the bank with a switching cost) and pasted over the
    rendered mouth (:func:`paste_mouth` with the rendered lips = the target lips); faceless frames and frames
    whose mouth region falls outside a patch are unchanged. ``size_wh``: the full frame size in pixels the
    normalised landmarks refer to (a patch is placed inside it)."""
    from .media import PatchedFrame

    choice = select_candidates(bank, sequence)
    W, H = size_wh
    for t, f in enumerate(frames):
        if t >= len(sequence) or choice[t] < 0:
            yield f
            continue
        px = L.to_pixels(sequence.points[t], (W, H))
        if isinstance(f, PatchedFrame):
            if f.patch.shape[0] and f.patch.shape[1]:
                shifted = px - (f.x, f.y, 0)
                paste_mouth(f.patch, bank, int(choice[t]), shifted, shifted, color_match, mouth_fill, out=f.patch)
            yield f
        else:
            yield paste_mouth(np.asarray(f), bank, int(choice[t]), px, px, color_match, mouth_fill)


# ------------------------------------------------------------------------------------------------ selection
def select_candidates(bank: MouthBank, target: FaceLandmarks, top_k: int = DEFAULT_TOP_K,
                      switch_cost: float = DEFAULT_SWITCH_COST, greedy: bool = False) -> np.ndarray:
    """The candidate of every target frame: int64 ``[N]`` indices into ``bank.candidates``, -1 where
    ``target.present`` is False (module docstring, step 3).

    ``greedy``: the per-frame cheapest candidate instead of the Viterbi path (for comparison). A run of
    faceless frames breaks the path (each run of present frames is solved separately).
    """
    if not isinstance(target, FaceLandmarks):
        raise InputError("target", f"expected FaceLandmarks, got {type(target).__name__}")
    n = len(target)
    out = np.full(n, -1, np.int64)
    if n == 0 or len(bank) == 0:
        return out
    desc_c, gap_c, rot_c = bank.arrays()
    k = max(1, min(int(top_k), len(bank)))
    present = np.asarray(target.present, bool)
    p = np.concatenate([[False], present, [False]]).astype(np.int8)
    runs = zip(np.flatnonzero(np.diff(p) == 1), np.flatnonzero(np.diff(p) == -1))

    def costs(a, b):  # [b - a, K], COST_BLOCK frames at a time: memory bounded in the video's length
        out = []
        for s in range(a, b, COST_BLOCK):
            px = L.to_pixels(target.points[s:min(b, s + COST_BLOCK)], target.image_size)
            out.append(shape_costs(*mouth_descriptors(px, bank.canon), desc_c, gap_c, rot_c))
        return np.concatenate(out)

    for a, b in runs:
        cost = costs(a, b)                                              # [n, K]
        if greedy:
            out[a:b] = np.argmin(cost, 1)
            continue
        top = np.argsort(cost, 1, kind="stable")[:, :k]                 # [n, k] states
        uc = np.take_along_axis(cost, top, 1)
        acc = uc[0].copy()
        back = np.zeros((b - a, k), np.int32)
        for t in range(1, b - a):
            trans = acc[:, None] + switch_cost * (top[t - 1][:, None] != top[t][None, :])
            back[t] = np.argmin(trans, 0)
            acc = trans[back[t], np.arange(k)] + uc[t]
        j = int(np.argmin(acc))
        for t in range(b - a - 1, -1, -1):
            out[a + t] = top[t, j]
            j = back[t, j]
    return out


# ------------------------------------------------------------------------------------------------ render
def _affine_table(S: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-triangle inverse affine maps (target -> source), float32 ``[N + 1, 6]`` (last row: identity), and the
    degenerate-target flags."""
    e1, e2 = T[:, 1] - T[:, 0], T[:, 2] - T[:, 0]
    f1, f2 = S[:, 1] - S[:, 0], S[:, 2] - S[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    bad = np.abs(det) < 1e-3
    inv = (1.0 / np.where(bad, 1.0, det))[:, None]
    a = (f1 * e2[:, 1:2] - f2 * e1[:, 1:2]) * inv
    b = (f2 * e1[:, 0:1] - f1 * e2[:, 0:1]) * inv
    a[bad] = (1.0, 0.0)
    b[bad] = (0.0, 1.0)
    c = S[:, 0] - a * T[:, 0, 0:1] - b * T[:, 0, 1:2]
    N = len(T)
    tab = np.empty((N + 1, 6), np.float32)
    tab[:N, 0], tab[:N, 1], tab[:N, 2] = a[:, 0], b[:, 0], c[:, 0]
    tab[:N, 3], tab[:N, 4], tab[:N, 5] = a[:, 1], b[:, 1], c[:, 1]
    tab[N] = (1, 0, 0, 0, 1, 0)
    return tab, bad


def warp_triangles(src_img: np.ndarray, src_v: np.ndarray, dst_v: np.ndarray, tris: np.ndarray,
                   out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine warp: ``(uint8 [h, w, 3] image, bool [h, w] covered)``.

    ``src_img`` uint8 ``[H, W, 3]``; ``src_v`` / ``dst_v`` float ``[V, 2]`` vertices in source / output pixels;
    ``tris`` int ``[M, 3]`` (later triangles drawn over earlier ones; degenerate targets first). Pixels no
    triangle covers are ``covered`` False (and hold an identity sample of the source, to be ignored).
    """
    import cv2

    h, w = out_hw
    T, S = dst_v[tris], src_v[tris]
    tab, bad = _affine_table(S, T)
    N = len(tris)
    ids = np.full((h, w), N, np.uint16)
    Ti = np.rint(T * _SUB).astype(np.int32)
    for k in np.concatenate([np.flatnonzero(bad), np.flatnonzero(~bad)]).tolist():
        cv2.fillConvexPoly(ids, Ti[k], k, cv2.LINE_8, _SHIFT)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    idx = ids.astype(np.intp)
    map_x = np.take(tab[:, 0], idx) * xs + np.take(tab[:, 1], idx) * ys + np.take(tab[:, 2], idx)
    map_y = np.take(tab[:, 3], idx) * xs + np.take(tab[:, 4], idx) * ys + np.take(tab[:, 5], idx)
    img = cv2.remap(src_img, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return img, ids < N


def _mid_lines(cand_pts: np.ndarray, tgt: np.ndarray):
    """Source and target positions of the two mid-line copies (module docstring, step 4) and the target
    polylines of the band the candidate cannot cover: ``(src_mid [18, 2], dst_mid [18, 2], mu [11, 2], ml [11, 2],
    cand_open)``."""
    ur, lr = cand_pts[_UPPER_MID], cand_pts[_LOWER_MID]
    ut, lt = tgt[_UPPER_MID], tgt[_LOWER_MID]
    w_c = max(float(np.linalg.norm(cand_pts[L.LIPS_INNER_UPPER[0]] - cand_pts[L.LIPS_INNER_UPPER[-1]])), 1.0)
    w_t = max(float(np.linalg.norm(tgt[L.LIPS_INNER_UPPER[0]] - tgt[L.LIPS_INNER_UPPER[-1]])), 1.0)
    gap_c = np.linalg.norm(ur - lr, axis=1) / w_c          # per mid-line point, in inner mouth widths
    gap_t = np.linalg.norm(ut - lt, axis=1) / w_t
    cand_open = float(np.mean(gap_c)) >= _OPEN_REF
    mid = 0.5 * (ur + lr)
    src_mid = np.vstack([mid, mid])
    if cand_open:
        # each half of the candidate's interior covers this fraction of the target gap (0.5: no band left)
        # (one ratio for the whole mouth, from the mean gaps: per-point ratios open slivers at the corners)
        h = np.full((len(ut), 1), 0.5 * min(1.0, _STRETCH * float(gap_c.mean()) / max(float(gap_t.mean()), 1e-9)))
    else:                           # a closed candidate: its interior is a line; the whole opening is painted
        h = np.zeros((len(ut), 1))
    mu_t, ml_t = ut + h * (lt - ut), lt + h * (ut - lt)
    c0, c1 = tgt[L.LIPS_INNER_UPPER[0]], tgt[L.LIPS_INNER_UPPER[-1]]
    mu = np.vstack([c0, mu_t, c1])
    ml = np.vstack([c0, ml_t, c1])
    return src_mid, np.vstack([mu_t, ml_t]), mu, ml, cand_open


def mouth_region(shape_hw, src_px: np.ndarray, dst_px: np.ndarray, dilate: float = 0.12, feather: float = 0.08
                 ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Paste weight of the mouth: ``(float32 [y1-y0, x1-x0], (x0, y0, x1, y1))``: the union of the source's and the
    target's outer-lip polygons dilated by ``dilate`` IOD; smoothstep from 0 on its edge to 1 at ``feather`` IOD
    inside. Pixel landmarks ``[478, 2|3]``."""
    import cv2

    H, W = shape_hw
    io = float(max(L.inter_ocular_px(src_px), 1e-6))
    dil, fea = max(1.0, dilate * io), max(1.0, feather * io)
    polys = [src_px[L.LIPS_OUTER, :2], dst_px[L.LIPS_OUTER, :2]]
    allp = np.concatenate(polys)
    pad = dil + 3
    x0 = int(max(0, np.floor(allp[:, 0].min() - pad)))
    y0 = int(max(0, np.floor(allp[:, 1].min() - pad)))
    x1 = int(min(W, np.ceil(allp[:, 0].max() + pad) + 1))
    y1 = int(min(H, np.ceil(allp[:, 1].max() + pad) + 1))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for p in polys:
        cv2.fillPoly(m, [np.rint((p - (x0, y0)) * _SUB).astype(np.int32)], 255, cv2.LINE_8, _SHIFT)
    r = int(round(dil))
    m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    dist = cv2.distanceTransform(cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), cv2.DIST_L2,
                                 5)[1:-1, 1:-1]
    return smoothstep((dist - 1.0) / fea).astype(np.float32), (x0, y0, x1, y1)


def render_mouth(bank: MouthBank, cand: int, tgt_px: np.ndarray, box: tuple[int, int, int, int],
                 mouth_fill: str = "cavity_and_teeth") -> tuple[np.ndarray, np.ndarray]:
    """Candidate ``cand``'s mouth warped to target pixel landmarks ``tgt_px [478, 2|3]`` inside frame box
    ``(x0, y0, x1, y1)``: ``(float32 [h, w, 3] RGB 0-255, bool [h, w] covered)``. The band a too-closed candidate
    cannot cover is painted (:data:`ptalk_models.render.MOUTH_FILLS`; ``"none"`` leaves it stretched)."""
    from .render import _paint_mouth, _reference_colours

    c = bank.candidates[cand]
    x0, y0, x1, y1 = box
    tgt = np.asarray(tgt_px, np.float64)[:, :2] - (x0, y0)
    src_mid, dst_mid, mu, ml, cand_open = _mid_lines(c.pts, tgt)
    src_v = np.vstack([c.pts, src_mid])
    dst_v = np.vstack([tgt, dst_mid])
    img, cov = warp_triangles(c.crop, src_v, dst_v, bank.tris, (y1 - y0, x1 - x0))
    if mouth_fill != "none" and np.max(np.linalg.norm(mu - ml, axis=1)) > 1.5:
        up, lo = tgt[L.LIPS_INNER_UPPER], tgt[L.LIPS_INNER_LOWER]
        colours = _candidate_colours(c, _reference_colours)
        strength = 1.0
        if not cand_open:
            inner_w = float(np.linalg.norm(up[0] - up[-1]))
            ap = float(np.mean(np.linalg.norm(up[1:-1] - lo[1:-1], axis=1)))
            strength = float(np.clip((ap / max(inner_w, 1.0) - _OPEN_REF) / _OPEN_REF, 0.0, 1.0))
        if strength > 0:
            _paint_mouth(img, up, lo, mu, ml, colours, teeth=mouth_fill == "cavity_and_teeth", strength=strength)
    return img.astype(np.float32), cov


def _candidate_colours(c: MouthCandidate, fn) -> dict:
    if not hasattr(c, "_colours"):
        c._colours = fn(c.crop, c.pts)
    return c._colours


def paste_mouth(frame: np.ndarray, bank: MouthBank, cand: int, src_px: np.ndarray, tgt_px: np.ndarray,
                color_match: bool = True, mouth_fill: str = "cavity_and_teeth", out: np.ndarray | None = None
                ) -> np.ndarray:
    """Replace the mouth of ``frame`` (uint8 ``[H, W, 3]``, whose own lips are at pixel landmarks ``src_px``) by
    candidate ``cand`` warped to ``tgt_px`` (module docstring, step 4). Writes into ``out`` (default a copy of
    ``frame``) and returns it; pixels outside :func:`mouth_region` keep ``frame``'s values."""
    from .dub_render import blend_region

    out = frame.copy() if out is None else out
    H, W = frame.shape[:2]
    weight, (x0, y0, x1, y1) = mouth_region((H, W), np.asarray(src_px, np.float64), np.asarray(tgt_px, np.float64))
    if x1 <= x0:
        return out
    img, cov = render_mouth(bank, cand, tgt_px, (x0, y0, x1, y1), mouth_fill)
    weight = np.where(cov, weight, 0.0).astype(np.float32)
    out[y0:y1, x0:x1] = blend_region(frame[y0:y1, x0:x1], img, weight, color_match)
    return out


__all__ = ["LIP_POINTS", "MouthBank", "MouthCandidate", "build_mouth_bank", "build_mouth_banks", "build_photo_bank",
           "paste_mouths", "mouth_descriptors", "shape_costs",
           "select_bank_frames", "select_candidates", "warp_triangles", "mouth_region", "render_mouth",
           "paste_mouth"]
