"""Talking-face evaluation: ADFD (PortraitTalk Eq. 4) and the standard companion metrics.

Everything works on :class:`~ptalk_models.landmarks.FaceLandmarks` (MediaPipe 478-point face mesh) of a
*generated* and a *ground-truth* video; frames are only needed for the optional identity metric. No ComfyUI
import. The one-call entry point is :func:`evaluate`, which returns a JSON-ready report (``dict``):
:func:`compute_evaluation` computes every metric (an :class:`Evaluation` of numbers and arrays) and
:func:`build_report` formats it. The pieces are public too:

* :func:`adfd` -- Average Dynamic Facial Distance, PortraitTalk (arXiv 2412.07754) section III-C, Eq. 4.
* :func:`landmark_distance` -- LMD (Chen et al., "Lip Movements Generation at a Glance", ECCV 2018): mean
  Euclidean distance between corresponding landmarks, for the mouth and the whole face, in pixels and as a
  fraction of the ground truth's inter-ocular distance.
* :func:`landmark_jitter` -- temporal jitter: mean norm of the landmarks' second difference (acceleration).
* :func:`sync_proxy` -- lip-sync *proxy* (not SyncNet): Pearson correlation between the inner-lip aperture
  and the 200-4000 Hz log energy of the audio, at lag 0 and at the best lag within +-5 frames.
* :func:`identity_per_frame` -- face-identity similarity of every generated frame to the first ground-truth
  frame, with the Face Embed engine (``ptalk_models.identity``; optional).

Common conventions
------------------
*Reference pixel grid.* Landmarks are stored normalised (x / width, y / height). Both sequences are mapped
to the **ground truth's pixel grid**: ``x_px = x * W_gt``, ``y_px = y * H_gt`` -- for the generated video
too, whatever its own resolution -- so a 512x512 generated clip and a 256x256 ground truth of the same
framing compare at the ground truth's scale, and ``d = sqrt(W_gt^2 + H_gt^2)``. A different *aspect ratio*
stretches one of them; the report warns about it (crop the videos to the same framing first). Only x and y
are used: MediaPipe's z is a relative depth, not a pixel distance, and Eq. 4's ``d`` is an image-plane
length.

*Lengths.* Sequences of unequal length are clipped to the shorter one (frame ``t`` compared with frame
``t``), with a warning. Frame rates are not resampled (a warning when they differ).

*Missing faces.* A frame where either side has no face (``present`` False) is excluded from every
per-frame average and counted in the report; motion pairs and second differences need all their frames
present (a gap is not bridged).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .audio import SPEECH_BAND, TARGET_SR, band_log_energy, n_video_frames, prepare_audio
from .images import same_aspect
from .errors import InputError
from .landmarks import LIPS_INNER, LIPS_OUTER, NUM_LANDMARKS, FaceLandmarks, inner_lip_aperture, inter_ocular_px

#: Mouth landmarks for the mouth LMD: the outer and inner lip contours (40 MediaPipe points).
MOUTH = sorted(set(LIPS_OUTER) | set(LIPS_INNER))
#: Whole-face landmarks for the face LMD and ADFD: all 478 points (mesh + irises).
FACE = list(range(NUM_LANDMARKS))
MOTION_VECTORS = ("face", "landmark")
#: A motion vector whose RMS displacement per landmark is below this many pixels counts as "no motion".
STATIC_EPS_PX = 1e-3
SYNC_MAX_LAG = 5
SYNC_MIN_FRAMES = 8
AUDIO_BAND = SPEECH_BAND  # Hz, 200-4000: the speech band of ptalk_models.audio.band_log_energy


# ---------------------------------------------------------------------------------------------- alignment
@dataclass
class AlignedLandmarks:
    """A generated / ground-truth pair on one pixel grid (see the module docstring).

    ``generated``, ``ground_truth``  float64 ``[T, 478, 2]`` x, y in pixels of the ground truth's grid.
    ``valid``       bool ``[T]``: both sides have a face in frame t.
    ``size``        ``(W, H)`` of the reference grid (the ground truth's), pixels. ``diagonal``: its diagonal.
    ``iod``         float64 ``[T]``: ground truth's inter-ocular distance (outer eye corners 33-263), pixels.
    ``counts``      frame bookkeeping for the report. ``warnings``: list of str.
    """

    generated: np.ndarray
    ground_truth: np.ndarray
    valid: np.ndarray
    size: tuple[int, int]
    diagonal: float
    iod: np.ndarray
    counts: dict
    warnings: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.valid.shape[0])


def _check_landmarks(lm, name: str) -> FaceLandmarks:
    """``lm`` checked to be a non-empty FaceLandmarks with a face and finite coordinates.

    Raises:
        InputError: ``argument`` = ``name`` (the caller's parameter); the message starts with ``name``.
    """
    if not isinstance(lm, FaceLandmarks):
        raise InputError(name, f"{name}: expected FaceLandmarks (PTALK_LANDMARKS), got {type(lm).__name__};",
                         "detect them with ptalk_models.face.detect_landmarks(frames, on_missing='keep')")
    if len(lm) == 0:
        raise InputError(name, f"{name}: the landmark sequence is empty (0 frames)")
    if not lm.present.any():
        raise InputError(name, f"{name}: no face in any of its {len(lm)} frame(s);", "give frames with a visible face")
    if not np.isfinite(lm.points[lm.present][..., :2]).all():
        raise InputError(name, f"{name}: landmark coordinates contain NaN/Inf")
    return lm


def align_landmarks(generated: FaceLandmarks, ground_truth: FaceLandmarks) -> AlignedLandmarks:
    """Put both sequences on the ground truth's pixel grid, clip to the shorter, mark usable frames.

    Raises:
        InputError (a ValueError): ``argument`` ``"generated"`` / ``"ground_truth"``: not FaceLandmarks, empty,
        no face in any frame, or non-finite coordinates; ``"generated"`` also when no compared frame has a face
        on both sides.
    """
    gen = _check_landmarks(generated, "generated")
    gt = _check_landmarks(ground_truth, "ground_truth")
    warnings: list[str] = []
    n_gen, n_gt = len(gen), len(gt)
    T = min(n_gen, n_gt)
    if n_gen != n_gt:
        warnings.append(f"unequal lengths: generated has {n_gen} frames, ground truth {n_gt}; compared the first "
                        f"{T} frames (clipped to the shorter)")
    if gen.fps > 0 and gt.fps > 0 and abs(gen.fps - gt.fps) > 1e-3 * gt.fps:
        warnings.append(f"frame rates differ (generated {gen.fps:g} fps, ground truth {gt.fps:g} fps); frames "
                        "are compared by index, not resampled in time")
    W, H = gt.image_size
    gw, gh = gen.image_size
    if not same_aspect((gw, gh), (W, H)):
        warnings.append(f"aspect ratios differ (generated {gw}x{gh}, ground truth {W}x{H}); normalised "
                        "coordinates were stretched to the ground truth's grid -- crop both to the same framing")
    elif (gw, gh) != (W, H):
        warnings.append(f"resolutions differ (generated {gw}x{gh}, ground truth {W}x{H}); compared in the ground "
                        "truth's pixel grid via normalised coordinates")
    scale = np.array([W, H], np.float64)
    g = gen.points[:T, :, :2].astype(np.float64) * scale
    r = gt.points[:T, :, :2].astype(np.float64) * scale
    pg, pr = gen.present[:T], gt.present[:T]
    valid = pg & pr
    if not valid.any():
        raise InputError("generated", f"no frame among the {T} compared has a face on both sides (generated faces: "
                         f"{int(pg.sum())}, ground truth faces: {int(pr.sum())})")
    counts = {"generated": n_gen, "ground_truth": n_gt, "compared": T, "used": int(valid.sum()),
              "excluded_no_face": int((~valid).sum()), "generated_no_face": int((~pg).sum()),
              "ground_truth_no_face": int((~pr).sum())}
    if counts["excluded_no_face"]:
        warnings.append(f"{counts['excluded_no_face']} of {T} frames excluded: no face in the generated "
                        f"({counts['generated_no_face']}) / ground-truth ({counts['ground_truth_no_face']}) frame")
    iod = inter_ocular_px(r)
    return AlignedLandmarks(generated=g, ground_truth=r, valid=valid, size=(W, H), diagonal=float(np.hypot(W, H)),
                            iod=iod, counts=counts, warnings=warnings)


# ---------------------------------------------------------------------------------------------- ADFD
@dataclass
class ADFDResult:
    """Result of :func:`adfd`.

    ``adfd`` = ``(w1 * spatial) * (w2 * motion)``; ``spatial`` in [0, 1], ``motion`` in [0, 1].
    ``spatial_per_frame`` float64 ``[T]`` (NaN where excluded); ``motion_per_frame`` float64 ``[T]``: entry t
    is the mapped cosine of the motion ``t-1 -> t`` (NaN at t = 0 and where excluded).
    ``motion_pairs`` number of frame pairs averaged (0: motion term undefined, set to 1.0 with a warning).
    """

    adfd: float
    spatial: float
    motion: float
    w1: float
    w2: float
    spatial_per_frame: np.ndarray
    motion_per_frame: np.ndarray
    motion_pairs: int
    motion_vectors: str
    static_pairs: int
    warnings: list


def _cosine(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Row-wise cosine of ``a``, ``b`` ``[..., D]`` with the zero-motion rules of :func:`adfd`."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.einsum("...d,...d->...", a, b) / (na * nb)
    c = np.clip(np.nan_to_num(c, nan=0.0), -1.0, 1.0)
    sa, sb = na < eps, nb < eps
    c = np.where(sa | sb, 0.0, c)              # one side static: direction undefined -> 0 (mapped 0.5)
    c = np.where(sa & sb, 1.0, c)              # both static: they agree -> 1
    c = np.where(np.all(a == b, axis=-1), 1.0, c)  # identical motion: exactly 1 (no rounding)
    return c


def adfd(generated: FaceLandmarks | AlignedLandmarks, ground_truth: FaceLandmarks | None = None, w1: float = 1.0,
         w2: float = 1.0, motion_vectors: str = "face", static_eps_px: float = STATIC_EPS_PX) -> ADFDResult:
    r"""Average Dynamic Facial Distance, PortraitTalk (arXiv 2412.07754) section III-C, Eq. 4.

    .. math::

        \mathrm{ADFD} = \Big[w_1 \cdot \frac{1}{T}\sum_{t=1}^{T}
                        \Big(1 - \frac{\lVert L_t^{gen} - L_t^{gt}\rVert}{d}\Big)\Big]
                  \times \Big[w_2 \cdot \frac{1}{T-1}\sum_{t=2}^{T}\frac{1 + \cos(m_t^{gen}, m_t^{gt})}{2}\Big],
        \qquad m_t = L_t - L_{t-1}

    **Reading implemented** (the paper's typesetting leaves these open; this is the choice and why):

    * ``L_t`` is the whole face: the 478 MediaPipe landmarks' (x, y) in pixels of the ground truth's grid
      (module docstring); ``d = sqrt(W^2 + H^2)`` of that grid.
    * Spatial term: ``||L_t^gen - L_t^gt||`` is the Euclidean distance *per landmark averaged over the K
      landmarks*, ``(1/K) sum_k ||l_{t,k}^gen - l_{t,k}^gt||_2`` -- the distance of a typical landmark, so the
      term does not grow with the number of points (the norm of the stacked 956-vector is ~sqrt(K) = 22 times
      larger and would reach ``d`` -- a zero term -- at a mean error of 4.6 % of the diagonal). Each frame's
      value is clipped to [0, 1].
    * Motion term, ``motion_vectors="face"`` (default): ``m_t`` is ONE vector per frame, all landmarks'
      displacements flattened, ``m_t = vec(L_t - L_{t-1})`` in R^{2K}; one cosine per frame pair. Why: Eq. 4
      writes the motion of ``L_t`` -- the face's landmark set, the same symbol as in the spatial term -- as
      one vector, and this reading weights each landmark by how much it moves: the mouth and jaw during
      speech dominate, while the sub-pixel detector jitter of still landmarks barely counts. The alternative
      ``"landmark"`` (a 2-D cosine per landmark, averaged over landmarks) gives every still landmark's
      jitter direction a full vote. Measured on real MediaPipe landmarks (GRID lbax4n, Gaussian noise added
      to every landmark of a copy): 0.25 px of noise lowers the motion term to 0.81 ("face") vs 0.74
      ("landmark"), 0.5 px to 0.70 vs 0.65; on pairs of real clips both readings rank alike.
    * Cosines are mapped ``(cos + 1) / 2`` from [-1, 1] to [0, 1] and averaged over the frame pairs; the
      ``1/(T-1)`` normalisation is over the pairs that exist (the paper's ``1/T`` counts frames).
    * Zero motion: a motion vector whose RMS displacement per landmark is below ``static_eps_px`` pixels is
      "static". Both static (e.g. duplicated frames, a clip against itself while still): cos := 1 (they
      agree). Exactly one static: cos := 0, mapped 0.5 -- the direction is undefined, scored like an
      unrelated motion. Identical vectors give exactly 1, so a clip against itself scores exactly ``w1 * w2``.
    * Fewer than two frames (or no pair of consecutive usable frames): the motion term is undefined; it is
      set to 1.0 (the neutral factor, ADFD = ``w1 * spatial * w2``) and a warning says so.

    Higher is better; a perfect reproduction scores ``w1 * w2`` (1.0 with the defaults). Note: with real
    detector landmarks the motion term falls to chance level (about 0.5) once the timing is off by 2-3 frames
    (MediaPipe's frame-to-frame jitter -- landmark second differences average ~0.45 px on 360x288 GRID -- is
    comparable to speech motion): on GRID, CREMA-D and retalking clips, the motion term of a clip against
    itself shifted by 1 / 3 frames is 0.57-0.73 / 0.46-0.64, against another speaker 0.49-0.52 on average
    (up to 0.57). Compare ADFD values of methods on the same data only.

    Args:
        generated, ground_truth: :class:`FaceLandmarks` (any sizes, see the module docstring), or an
            :class:`AlignedLandmarks` as ``generated`` with ``ground_truth=None``.
        w1, w2: the weights of Eq. 4 (finite, >= 0).
        motion_vectors: ``"face"`` or ``"landmark"`` (see above).
        static_eps_px: zero-motion threshold, pixels RMS per landmark.

    Raises:
        InputError (a ValueError) naming the argument: bad weights (``w1``/``w2``), unknown ``motion_vectors``,
        or any error of :func:`align_landmarks`.
    """
    for name, w in (("w1", w1), ("w2", w2)):
        if not (isinstance(w, (int, float, np.floating)) and math.isfinite(float(w)) and float(w) >= 0):
            raise InputError(name, f"{name} must be a finite number >= 0, got {w!r}")
    if motion_vectors not in MOTION_VECTORS:
        raise InputError("motion_vectors", f"motion_vectors must be one of {MOTION_VECTORS}, got {motion_vectors!r}")
    al = generated if isinstance(generated, AlignedLandmarks) else align_landmarks(generated, ground_truth)
    warnings: list[str] = []
    T, K = al.generated.shape[:2]
    dist = np.linalg.norm(al.generated - al.ground_truth, axis=-1).mean(axis=1)      # [T] px
    spatial_t = np.where(al.valid, np.clip(1.0 - dist / al.diagonal, 0.0, 1.0), np.nan)
    spatial = float(np.nanmean(spatial_t))

    motion_t = np.full(T, np.nan)
    static_pairs = 0
    pairs = np.zeros(T, bool)
    if T >= 2:
        pairs[1:] = al.valid[1:] & al.valid[:-1]
    n_pairs = int(pairs.sum())
    if n_pairs:
        mg = (al.generated[1:] - al.generated[:-1])[pairs[1:]]                         # [P, K, 2]
        mr = (al.ground_truth[1:] - al.ground_truth[:-1])[pairs[1:]]
        if motion_vectors == "face":
            a, b = mg.reshape(len(mg), -1), mr.reshape(len(mr), -1)
            eps = static_eps_px * math.sqrt(K)
            cos = _cosine(a, b, eps)
            static_pairs = int(((np.linalg.norm(a, axis=-1) < eps) | (np.linalg.norm(b, axis=-1) < eps)).sum())
        else:
            cos = _cosine(mg, mr, static_eps_px).mean(axis=1)
        motion_t[pairs] = (cos + 1.0) / 2.0
        motion = float(np.mean(motion_t[pairs]))
    else:
        motion = 1.0
        why = "a one-frame video" if T < 2 else "no two consecutive frames with a face on both sides"
        warnings.append(f"motion term undefined ({why}); set to 1.0, so ADFD = w1 * spatial * w2")
    if static_pairs:
        warnings.append(f"{static_pairs} of {n_pairs} frame pairs have no motion on one or both sides (cos := 1 "
                        "when both are still, 0 when only one is)")
    w1, w2 = float(w1), float(w2)
    return ADFDResult(adfd=(w1 * spatial) * (w2 * motion), spatial=spatial, motion=motion, w1=w1, w2=w2,
                      spatial_per_frame=spatial_t, motion_per_frame=motion_t, motion_pairs=n_pairs,
                      motion_vectors=motion_vectors, static_pairs=static_pairs, warnings=warnings)


# ---------------------------------------------------------------------------------------------- LMD / jitter
def landmark_distance(al: AlignedLandmarks, indices=None) -> dict:
    """LMD: mean Euclidean landmark distance between generated and ground truth (Chen et al. 2018).

    Args:
        al: from :func:`align_landmarks`. indices: landmark indices (default :data:`FACE`; :data:`MOUTH` for
            the mouth LMD).

    Returns:
        ``{"px": float, "iod": float, "per_frame_px": float64 [T], "per_frame_iod": float64 [T]}``: the
        per-frame mean over the landmarks of ``||l_gen - l_gt||_2`` in pixels (ground-truth grid) and divided by
        the ground truth's inter-ocular distance (outer eye corners) of that frame; NaN for excluded frames;
        ``px``/``iod`` average the usable frames.
    """
    idx = FACE if indices is None else list(indices)
    d = np.linalg.norm(al.generated[:, idx] - al.ground_truth[:, idx], axis=-1).mean(axis=1)
    px = np.where(al.valid, d, np.nan)
    iod = np.where(al.valid & (al.iod > 1e-6), d / np.maximum(al.iod, 1e-6), np.nan)
    return {"px": _nanmean(px), "iod": _nanmean(iod), "per_frame_px": px, "per_frame_iod": iod}


def landmark_jitter(px: np.ndarray, present: np.ndarray, iod: np.ndarray | None = None) -> dict:
    """Temporal jitter: mean over frames and landmarks of ``||l_{t+1} - 2 l_t + l_{t-1}||_2``.

    Args:
        px: float ``[T, K, 2]`` pixels. present: bool ``[T]``; a triple counts only when all 3 frames are present.
        iod: optional float ``[T]`` inter-ocular distances (px) to also give it as a fraction of the IOD.

    Returns:
        ``{"px": float, "iod": float or NaN, "per_frame_px": float64 [T] (NaN at both ends / gaps), "triples": int}``.
        NaN values (and 0 triples) when T < 3.
    """
    px = np.asarray(px, np.float64)
    T = len(px)
    out = np.full(T, np.nan)
    if T >= 3:
        ok = present[2:] & present[1:-1] & present[:-2]
        acc = np.linalg.norm(px[2:] - 2.0 * px[1:-1] + px[:-2], axis=-1).mean(axis=1)
        out[1:-1] = np.where(ok, acc, np.nan)
    res = {"px": _nanmean(out), "iod": float("nan"), "per_frame_px": out, "triples": int(np.isfinite(out).sum())}
    if iod is not None:
        res["iod"] = _nanmean(out / np.maximum(np.asarray(iod, np.float64), 1e-6))
    return res


# ---------------------------------------------------------------------------------------------- sync proxy
def lag_correlations(x: np.ndarray, y: np.ndarray, max_lag: int = SYNC_MAX_LAG, valid: np.ndarray | None = None,
                     min_frames: int = SYNC_MIN_FRAMES) -> dict[int, float]:
    """Pearson correlation of ``x[t]`` with ``y[t - lag]`` for every lag in ``[-max_lag, max_lag]``.

    A positive lag means ``x`` follows ``y`` by ``lag`` frames (for the sync proxy: the mouth opens after the
    sound). ``valid`` (bool ``[len(x)]``) drops frames of ``x``; a lag with fewer than ``min_frames`` pairs, or a
    constant series, gives NaN.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y))
    v = np.ones(n, bool) if valid is None else np.asarray(valid, bool)[:n]
    out = {}
    for lag in range(-int(max_lag), int(max_lag) + 1):
        lo, hi = max(lag, 0), n + min(lag, 0)
        if hi - lo < 1:
            out[lag] = float("nan")
            continue
        a, b, m = x[lo:hi], y[lo - lag:hi - lag], v[lo:hi]
        a, b = a[m], b[m]
        if len(a) < min_frames or a.std() < 1e-12 or b.std() < 1e-12:
            out[lag] = float("nan")
        else:
            out[lag] = float(np.corrcoef(a, b)[0, 1])
    return out


def sync_proxy(landmarks: FaceLandmarks, waveform, sample_rate: float, fps: float | None = None,
               max_lag: int = SYNC_MAX_LAG) -> dict:
    """Lip-sync PROXY (not SyncNet): inner-lip aperture vs the audio's 200-4000 Hz log energy per video frame.

    The aperture is :func:`ptalk_models.landmarks.inner_lip_aperture` (inner-lip gap / inter-ocular distance);
    the energy is :func:`ptalk_models.audio.band_log_energy` (Hann windows of 2 frames centred on each video
    frame, dB) of the mono mix. Both are compared over the frames both cover (the shorter of the video and
    ``n_video_frames(audio)``); frames with no face are dropped. Speech opens the mouth while the speech band
    is loud, so a synced talking face correlates positively with the peak near lag 0.

    Args:
        landmarks: the talking face's landmarks. waveform: float ``[samples]`` or ``[channels, samples]``
            (integer PCM is scaled by its full scale). sample_rate: Hz.
        fps: video frame rate; default ``landmarks.fps``. max_lag: search range, frames.

    Returns:
        ``{"corr_lag0", "best_lag" (frames; > 0 = mouth after sound), "best_corr", "corr_by_lag" {lag: r},
        "frames": int, "fps": float, "audio_frames": int}``; correlations NaN when undefined (constant
        aperture, silence, fewer than 8 frames).

    Raises:
        InputError (a ValueError): ``argument`` ``"fps"`` when the frame rate is not > 0, ``"landmarks"`` (see
        :func:`align_landmarks`). ValueError: bad audio (from :func:`ptalk_models.audio.prepare_audio`).
    """
    landmarks = _check_landmarks(landmarks, "landmarks")
    fps = float(landmarks.fps if fps is None or fps <= 0 else fps)
    if not (math.isfinite(fps) and fps > 0):
        raise InputError("fps", "sync proxy: the frame rate is unknown (landmarks.fps is 0);",
                         "pass fps (frames per second)")
    mono = prepare_audio(waveform, sample_rate).samples
    n_audio = n_video_frames(len(mono), TARGET_SR, fps)
    n = min(len(landmarks), n_audio)
    energy = band_log_energy(mono, TARGET_SR, fps, n, band=AUDIO_BAND)
    aperture = inner_lip_aperture(landmarks)[:n]
    corr = lag_correlations(aperture, energy, max_lag, valid=landmarks.present[:n])
    finite = {k: v for k, v in corr.items() if math.isfinite(v)}
    best = max(finite, key=lambda k: (finite[k], -abs(k))) if finite else None
    return {"corr_lag0": corr.get(0, float("nan")), "best_lag": best,
            "best_corr": finite[best] if best is not None else float("nan"), "corr_by_lag": corr,
            "frames": int(n), "video_frames": len(landmarks), "audio_frames": int(n_audio), "fps": fps,
            "aperture": aperture, "energy_db": energy}


# ---------------------------------------------------------------------------------------------- identity
def identity_per_frame(generated_frames: np.ndarray, ground_truth_frame: np.ndarray,
                       generated_landmarks: FaceLandmarks | None = None,
                       ground_truth_landmarks: FaceLandmarks | None = None, backend: str = "dlib",
                       stride: int = 1, **embed_kwargs) -> dict:
    """Face-identity similarity of each generated frame to one ground-truth frame (Face Embed engine).

    Embeds with :func:`ptalk_models.identity.embed_faces` (``backend="dlib"``: the embedded 128-D dlib ResNet,
    offline; ``"insightface"``: ArcFace 512-D when its models are installed, ``embed_kwargs`` such as
    ``insightface_root`` are passed on) and compares with :func:`ptalk_models.identity.identity_similarity`
    (in [0, 1]; > 0.5 = same person) and :func:`ptalk_models.identity.face_distance` (dlib: Euclidean,
    same person <= 0.6).

    Args:
        generated_frames: uint8 RGB ``[T, H, W, 3]``. ground_truth_frame: uint8 RGB ``[H, W, 3]``.
        generated_landmarks: optional landmarks of ``generated_frames`` (T frames; detected when None).
        ground_truth_landmarks: optional one-frame landmarks of ``ground_truth_frame``.
        stride: embed every ``stride``-th generated frame only (frames 0, stride, 2*stride ...; the others are
            NaN in ``per_frame``); the dlib ResNet costs about 0.1 s per frame on a CPU core.

    Returns:
        ``{"backend", "mean", "min", "distance_mean", "same_person_frames", "frames_embedded",
        "frames_without_face", "stride", "per_frame" float64 [T] (NaN where no face or not sampled),
        "per_frame_distance" float64 [T]}``.

    Raises:
        ImportError: the identity engine is missing. InputError (``argument`` ``"stride"``): stride < 1.
        ValueError (incl. NoFaceError): no face in the ground-truth frame or in every generated frame.
        RuntimeError: the backend cannot run (insightface models missing).
    """
    from .identity import embed_faces

    stride = int(stride)
    if stride < 1:
        raise InputError("stride", f"identity stride must be >= 1 frame, got {stride}")
    frames = np.asarray(generated_frames)
    T = len(frames)
    idx = np.arange(0, T, stride)
    lm = None
    if generated_landmarks is not None:
        lm = generated_landmarks.with_points(generated_landmarks.points[idx], present=generated_landmarks.present[idx])
    ref = embed_faces(ground_truth_frame, landmarks=ground_truth_landmarks, backend=backend, **embed_kwargs)
    emb = embed_faces(frames[idx], landmarks=lm, backend=backend, **embed_kwargs)
    present = np.asarray(emb.present, bool)
    sim, dist = np.full(T, np.nan), np.full(T, np.nan)
    sim[idx] = np.where(present, np.asarray(emb.similarity(ref.mean), np.float64), np.nan)
    dist[idx] = np.where(present, np.asarray(emb.distance(ref.mean), np.float64), np.nan)
    return {"backend": backend, "mean": _nanmean(sim), "min": float(np.nanmin(sim)) if present.any() else float("nan"),
            "distance_mean": _nanmean(dist), "threshold": float(emb.threshold),
            "same_person_frames": int((dist[idx][present] <= emb.threshold).sum()), "frames_embedded": int(len(idx)),
            "frames_without_face": int((~present).sum()), "stride": stride, "per_frame": sim,
            "per_frame_distance": dist}


# ---------------------------------------------------------------------------------------------- computation
@dataclass
class Evaluation:
    """The numbers behind an :func:`evaluate` report (:func:`compute_evaluation`; :func:`build_report` formats).

    ``aligned``      :class:`AlignedLandmarks` (ground truth's pixel grid, ``T`` compared frames).
    ``adfd``         :class:`ADFDResult` (Eq. 4 terms and per-frame curves).
    ``mouth_lmd``, ``face_lmd``  :func:`landmark_distance` dicts (pixels and inter-ocular fractions).
    ``jitter_generated``, ``jitter_ground_truth``  :func:`landmark_jitter` dicts (pixels).
    ``aperture_generated``, ``aperture_ground_truth``  float64 ``[T]`` inner-lip aperture / inter-ocular
                     distance (:func:`ptalk_models.landmarks.inner_lip_aperture`), NaN where no face.
    ``fps``          frame rate used, frames per second (0.0 when unknown).
    ``sync``         ``{"generated": ..., "ground_truth": ...}`` :func:`sync_proxy` dicts without their
                     ``aperture`` / ``energy_db`` arrays, or None without audio.
    ``energy_db``    float64 ``[frames]`` 200-4000 Hz log energy of the audio, dB, or None.
    ``identity``     :func:`identity_per_frame` dict plus ``reference_frame``, or None when skipped.
    ``warnings``     list of str, in the order the steps ran.
    """

    aligned: AlignedLandmarks
    adfd: ADFDResult
    mouth_lmd: dict
    face_lmd: dict
    jitter_generated: dict
    jitter_ground_truth: dict
    aperture_generated: np.ndarray
    aperture_ground_truth: np.ndarray
    fps: float
    sync: dict | None = None
    energy_db: np.ndarray | None = None
    identity: dict | None = None
    warnings: list = field(default_factory=list)


def _first_frames(lm: FaceLandmarks, T: int) -> FaceLandmarks:
    """The first ``T`` frames of ``lm`` (the compared ones)."""
    return lm.with_points(lm.points[:T], present=lm.present[:T])


def _lip_aperture(lm: FaceLandmarks) -> np.ndarray:
    """float64 ``[T]`` inner-lip aperture / inter-ocular distance, NaN where ``lm`` has no face."""
    return np.where(lm.present, inner_lip_aperture(lm), np.nan)


def compute_sync(generated: FaceLandmarks, ground_truth: FaceLandmarks, audio: tuple, fps: float,
                 frames: int) -> tuple[dict, np.ndarray, list[str]]:
    """The sync proxy of both sides against one soundtrack (:func:`sync_proxy`).

    Args:
        generated, ground_truth: the compared frames' landmarks (``frames`` each).
        audio: ``(waveform [C, N] or [N], sample_rate Hz)``. fps: frames per second (> 0).
        frames: number of compared video frames, for the coverage warning.

    Returns:
        ``(sync, energy_db, warnings)``: ``sync`` = ``{"proxy", "generated", "ground_truth"}`` (each a
        :func:`sync_proxy` dict without its arrays), ``energy_db`` float64 ``[n]`` dB, ``warnings`` list of str.

    Raises:
        InputError: ``argument`` ``"fps"`` when ``fps`` is not > 0; ``"audio"`` for audio that
        :func:`ptalk_models.audio.prepare_audio` rejects.
    """
    if fps <= 0:
        raise InputError("fps", "fps: the landmarks carry no frame rate and fps is 0;", "set fps for the sync proxy")
    wav, sr = audio
    try:
        sg = sync_proxy(generated, wav, sr, fps)
        sr_ = sync_proxy(ground_truth, wav, sr, fps)
    except ValueError as e:  # prepare_audio: empty waveform, bad sample rate, malformed array (fps checked above)
        raise InputError("audio", f"audio: {e}") from None
    energy = sg.pop("energy_db")
    for d in (sg, sr_):
        d.pop("aperture")
    sr_.pop("energy_db")
    sync = {"proxy": "inner-lip aperture vs 200-4000 Hz log energy (NOT SyncNet)", "generated": sg,
            "ground_truth": sr_}
    warnings = []
    if sg["audio_frames"] < frames - 1 or sg["audio_frames"] > frames + 1:
        warnings.append(f"audio covers {sg['audio_frames']} frames at {fps:g} fps, video {frames}; the sync proxy "
                        f"uses the {sg['frames']} frames both cover")
    if not math.isfinite(sg["corr_lag0"]):
        warnings.append("sync proxy undefined for the generated video (constant mouth, silent audio or < 8 frames)")
    return sync, energy, warnings


def compute_identity(generated_frames: np.ndarray, ground_truth_frames: np.ndarray, generated: FaceLandmarks,
                     ground_truth: FaceLandmarks, backend: str, stride: int = 1,
                     identity_kwargs: dict | None = None) -> tuple[dict | None, list[str]]:
    """:func:`identity_per_frame` against the first ground-truth frame with a face; failures become warnings.

    Args:
        generated_frames: uint8 RGB ``[T, H, W, 3]`` (the compared frames). generated: their landmarks.
        ground_truth_frames: uint8 RGB ``[T', H', W', 3]``; ground_truth: their landmarks (some face present).
        backend, stride, identity_kwargs: see :func:`identity_per_frame`.

    Returns:
        ``(identity, warnings)``: the :func:`identity_per_frame` dict plus ``reference_frame`` (index into
        ``ground_truth_frames``), or None with a warning when the engine is missing or cannot embed.
    """
    first = int(np.flatnonzero(ground_truth.present)[0])
    try:
        identity = identity_per_frame(np.asarray(generated_frames), np.asarray(ground_truth_frames)[first],
                                      generated, ground_truth.frame(first), backend=backend, stride=stride,
                                      **dict(identity_kwargs or {}))
    except ImportError as e:
        return None, [f"identity similarity skipped: the Face Embed engine is unavailable ({e})"]
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        return None, [f"identity similarity skipped: {e}"]
    identity["reference_frame"] = first
    return identity, []


def compute_evaluation(generated: FaceLandmarks, ground_truth: FaceLandmarks, w1: float = 1.0, w2: float = 1.0,
                       audio: tuple | None = None, fps: float | None = None,
                       generated_frames: np.ndarray | None = None, ground_truth_frames: np.ndarray | None = None,
                       identity_backend: str | None = "dlib", motion_vectors: str = "face",
                       identity_kwargs: dict | None = None, identity_stride: int = 1) -> Evaluation:
    """Every metric of :func:`evaluate` as numbers and arrays (:class:`Evaluation`); arguments as there.

    Raises:
        InputError (a ValueError) naming the argument of this function: ``identity_stride`` < 1;
        ``generated`` / ``ground_truth`` (:func:`align_landmarks`); ``w1``, ``w2``, ``motion_vectors``
        (:func:`adfd`); ``fps`` / ``audio`` with ``audio`` (:func:`compute_sync`).
    """
    if int(identity_stride) < 1:
        raise InputError("identity_stride", f"identity_stride must be >= 1 frame, got {identity_stride}")
    al = align_landmarks(generated, ground_truth)  # validates both (InputError naming the side)
    T = len(al)
    gen_t, gt_t = _first_frames(generated, T), _first_frames(ground_truth, T)
    res = adfd(al, w1=w1, w2=w2, motion_vectors=motion_vectors)
    jg = landmark_jitter(al.generated, gen_t.present, al.iod)
    ev = Evaluation(aligned=al, adfd=res, mouth_lmd=landmark_distance(al, MOUTH), face_lmd=landmark_distance(al, FACE),
                    jitter_generated=jg, jitter_ground_truth=landmark_jitter(al.ground_truth, gt_t.present, al.iod),
                    aperture_generated=_lip_aperture(gen_t), aperture_ground_truth=_lip_aperture(gt_t),
                    fps=float(fps) if fps is not None and fps > 0 else (generated.fps or ground_truth.fps or 0.0),
                    warnings=list(al.warnings) + list(res.warnings))
    if jg["triples"] == 0:
        ev.warnings.append("jitter undefined: needs 3 consecutive frames with a face")
    if audio is not None:
        ev.sync, ev.energy_db, w = compute_sync(gen_t, gt_t, audio, ev.fps, T)
        ev.warnings += w
    if identity_backend and generated_frames is not None and ground_truth_frames is not None:
        ev.identity, w = compute_identity(np.asarray(generated_frames)[:T], ground_truth_frames, gen_t, ground_truth,
                                          identity_backend, identity_stride, identity_kwargs)
        ev.warnings += w
    elif identity_backend:
        ev.warnings.append("identity similarity skipped: it needs the frames of both videos (landmarks were given)")
    return ev


# ---------------------------------------------------------------------------------------------- report
def build_report(ev: Evaluation) -> dict:
    """The JSON-ready report of :func:`evaluate` from an :class:`Evaluation` (no computation beyond ratios).

    Returns:
        see :func:`evaluate`; ``per_frame`` keeps numpy arrays (float64 ``[T]``), :func:`report_json` serialises.
    """
    res, al, jg, jr = ev.adfd, ev.aligned, ev.jitter_generated, ev.jitter_ground_truth
    mouth, face, identity = ev.mouth_lmd, ev.face_lmd, ev.identity
    jratio = jg["px"] / jr["px"] if jr["px"] and math.isfinite(jr["px"]) and jr["px"] > 0 else float("nan")
    return {
        "metric": "ADFD (PortraitTalk arXiv 2412.07754, Sec. III-C, Eq. 4) + companions",
        "adfd": res.adfd, "spatial_term": res.spatial, "motion_term": res.motion, "w1": res.w1, "w2": res.w2,
        "reading": {
            "equation": "ADFD = [w1 * mean_t(1 - mean_k ||l_tk_gen - l_tk_gt|| / d)] * "
                        "[w2 * mean_t((1 + cos(m_t_gen, m_t_gt)) / 2)], m_t = L_t - L_(t-1)",
            "landmarks": "MediaPipe 478 (x, y) in the ground truth's pixel grid; d = its diagonal",
            "motion_vectors": ("whole face: one flattened 956-D vector per frame pair" if res.motion_vectors == "face"
                               else "per landmark: 2-D cosines averaged over landmarks"),
            "zero_motion": f"RMS < {STATIC_EPS_PX} px/landmark is still; both still: cos=1, one still: cos=0",
        },
        "motion_pairs": res.motion_pairs,
        "frames": al.counts, "reference_size": list(al.size), "diagonal_px": al.diagonal, "fps": ev.fps,
        "lmd": {"mouth_px": mouth["px"], "mouth_iod": mouth["iod"], "face_px": face["px"], "face_iod": face["iod"],
                "mouth_landmarks": len(MOUTH), "face_landmarks": len(FACE)},
        "jitter": {"generated_px": jg["px"], "ground_truth_px": jr["px"], "generated_iod": jg["iod"],
                   "ground_truth_iod": jr["iod"], "ratio": jratio},
        "identity": None if identity is None else {k: v for k, v in identity.items() if not k.startswith("per_frame")},
        "sync": ev.sync,
        "per_frame": {
            "spatial": res.spatial_per_frame, "motion": res.motion_per_frame,
            "mouth_lmd_px": mouth["per_frame_px"], "face_lmd_px": face["per_frame_px"],
            "aperture_generated": ev.aperture_generated, "aperture_ground_truth": ev.aperture_ground_truth,
            "jitter_generated_px": jg["per_frame_px"], "jitter_ground_truth_px": jr["per_frame_px"],
            "identity": None if identity is None else identity["per_frame"],
            "audio_energy_db": ev.energy_db,
        },
        "warnings": ev.warnings,
    }


def evaluate(generated: FaceLandmarks, ground_truth: FaceLandmarks, w1: float = 1.0, w2: float = 1.0,
             audio: tuple | None = None, fps: float | None = None, generated_frames: np.ndarray | None = None,
             ground_truth_frames: np.ndarray | None = None, identity_backend: str | None = "dlib",
             motion_vectors: str = "face", identity_kwargs: dict | None = None, identity_stride: int = 1) -> dict:
    """ADFD plus LMD, jitter, identity and the sync proxy in one report (``dict``; see :func:`report_json`).

    ``build_report(compute_evaluation(...))``: :func:`compute_evaluation` computes, :func:`build_report` formats.

    Args:
        generated, ground_truth: :class:`FaceLandmarks` of the two videos (``present`` flags respected).
        w1, w2: ADFD weights (Eq. 4). motion_vectors: see :func:`adfd`.
        audio: optional ``(waveform [C, N] or [N], sample_rate Hz)``: the generated video's soundtrack, for the
            sync proxy (computed for the generated and, as a reference, the ground-truth landmarks).
        fps: frame rate when the landmarks carry none (``fps == 0``); needed with ``audio``.
        generated_frames, ground_truth_frames: uint8 RGB ``[T, H, W, 3]``, for the identity metric (skipped,
            with a note, when absent or when ``identity_backend`` is None / the engine is unavailable).
        identity_backend: Face Embed backend for the identity metric (``"dlib"``, ``"insightface"``) or None.
        identity_kwargs: extra arguments for :func:`ptalk_models.identity.embed_faces` (e.g. ``insightface_root``).
        identity_stride: embed every k-th generated frame (see :func:`identity_per_frame`).

    Returns:
        A dict: ``adfd``, ``spatial_term``, ``motion_term``, ``w1``, ``w2``, ``reading`` (Eq. 4 as implemented),
        ``frames`` (counts), ``reference_size``, ``diagonal_px``, ``fps``, ``lmd`` (mouth/face, px and IOD),
        ``jitter`` (generated/ground truth/ratio), ``identity`` (or None), ``sync`` (or None), ``per_frame``
        (lists, None where excluded) and ``warnings`` (list of str). Numpy arrays are kept for ``per_frame``;
        :func:`report_json` serialises.

    Raises:
        InputError (a ValueError) whose ``argument`` names the parameter of this function: see
        :func:`compute_evaluation`.
    """
    return build_report(compute_evaluation(
        generated, ground_truth, w1=w1, w2=w2, audio=audio, fps=fps, generated_frames=generated_frames,
        ground_truth_frames=ground_truth_frames, identity_backend=identity_backend, motion_vectors=motion_vectors,
        identity_kwargs=identity_kwargs, identity_stride=identity_stride))


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _jsonable(x, digits: int):
    if isinstance(x, dict):
        return {str(k): _jsonable(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, digits) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v, digits) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return round(v, digits) if math.isfinite(v) else None
    return x


def report_json(report: dict, digits: int = 6, indent: int | None = 1) -> str:
    """Serialise an :func:`evaluate` report: arrays -> lists, NaN/Inf -> null, floats rounded to ``digits``."""
    return json.dumps(_jsonable(report, digits), indent=indent, allow_nan=False)
