"""Visual dubbing, diffusion path: align the face of each video frame into a square crop, say which part of the
crop is regenerated, and paste the regenerated crop back. Pure numpy/OpenCV/torch (no ComfyUI); the sampling
itself is the AnimateNet Temporal Sampler's loop (``nodes/glue/temporal_sampling.temporal_sample``) with a noise mask.

Pipeline per output frame t (``nodes/dub_diffusion.py``):

1. :func:`align_transforms`: a similarity transform frame pixels → crop pixels (FFHQ-style alignment: eyes
   level, face centred, whole head and jaw inside), smoothed over time so the crop does not jitter;
2. :func:`crop_frames` / :func:`map_landmarks`: the source frame and both landmark sets in the crop;
3. :func:`region_weights`: the lower-face region (the union of the source's and the dubbed lower face,
   dilated, :func:`ptalk_models.dub_render.dub_region_mask`) with its feathered paste weight; ``weight > 0``
   is regenerated (:func:`latent_noise_mask`: the sampler's noise mask), the rest of the crop keeps the
   source latent;
4. :class:`DubConditions`: the sampler's per-frame conditions -- structure = the dubbed landmarks drawn in the
   crop, identity = the head contour of the frame's own source crop;
5. :func:`paste_back`: the generated crop and the weight inverse-warped into the frame, optional Lab colour
   match (:func:`ptalk_models.dub_render.blend_region`); pixels of weight 0 stay bit-identical to the source.

Units: frames uint8 RGB ``[H, W, 3]``; pixel coordinates (x, y) with ``x = x_norm · W``, ``y = y_norm · H`` of
the frames (the landmarks' own ``image_size`` may differ, same aspect ratio); crops ``S × S`` pixels;
transforms float64 ``[T, 2, 3]`` affine matrices, ``crop_xy = M @ (x, y, 1)``.
"""
from __future__ import annotations

import numpy as np
import torch

from .contour import head_contour
from .draw import draw_landmarks
from .dub_render import blend_region, dub_region_mask, lower_face_weights
from .dubbing import smooth_landmarks
from .landmarks import FaceLandmarks
from .temporal import to_chw

#: Eye-corner pairs of the subject's right / left eye (image left / right) and the mouth corners.
_RIGHT_EYE, _LEFT_EYE, _MOUTH = (33, 133), (263, 362), (61, 291)


def _pixels(landmarks: FaceLandmarks, frame_wh: tuple[int, int]) -> np.ndarray:
    """float64 ``[T, 478, 2]`` pixel (x, y) of normalised landmarks on ``frame_wh`` (width, height) frames."""
    return landmarks.points[..., :2].astype(np.float64) * np.asarray(frame_wh, np.float64)


def align_transforms(landmarks: FaceLandmarks, frame_wh: tuple[int, int], size: int, scale: float = 1.2,
                     smoothing: float = 2.0) -> np.ndarray:
    """Per-frame similarity transforms from frame pixels to crop pixels: float64 ``[T, 2, 3]``.

    FFHQ alignment (Karras et al. 2019) from the eye centres (means of the eye corners) and the mouth centre
    (mean of the mouth corners): the crop's x axis is ``eye_to_eye − rot90(eye_to_mouth)`` (eyes level, roll
    removed), its centre ``eye_mid + 0.1 · eye_to_mouth`` and its side ``scale · max(4 |eye_to_eye|,
    3.6 |eye_to_mouth|)`` pixels of the frame, mapped to ``size`` crop pixels. ``scale`` 1.2 (FFHQ's crop
    is 1.0) matches the AnimateNet training crops (1.8 × the landmark box, ``scripts/prepare_animatenet_data.py``)
    and keeps the whole head and jaw inside. The landmarks are first smoothed over time
    (:func:`ptalk_models.dubbing.smooth_landmarks`, Gaussian ``sigma = smoothing`` frames, per run of frames with
    a face), so the crop follows the head without jitter. Frames with ``present`` False get the transform of
    the nearest frame with a face.

    Args:
        landmarks: normalised :class:`FaceLandmarks` of the frames (T frames; e.g. Dub Landmarks' aligned_source).
        frame_wh: (width, height) in pixels of the frames the transforms apply to (same aspect as the landmarks).
        size: crop side S in pixels.
    Raises:
        ValueError: no frame has a face, or non-positive ``size`` / ``scale``, negative ``smoothing``.
    """
    present = np.asarray(landmarks.present, bool)
    if not present.any():
        raise ValueError("no frame has a face: nothing to align")
    if size <= 0 or scale <= 0:
        raise ValueError(f"size and scale must be positive, got {size}, {scale}")
    px = _pixels(smooth_landmarks(landmarks, smoothing), frame_wh)
    eye_r, eye_l = px[:, _RIGHT_EYE].mean(1), px[:, _LEFT_EYE].mean(1)
    eye_mid, e2e = (eye_r + eye_l) / 2.0, eye_l - eye_r
    e2m = px[:, _MOUTH].mean(1) - eye_mid
    x_axis = e2e - np.stack([-e2m[:, 1], e2m[:, 0]], 1)
    phi = np.arctan2(x_axis[:, 1], x_axis[:, 0])
    side = scale * np.maximum(4.0 * np.linalg.norm(e2e, axis=1), 3.6 * np.linalg.norm(e2m, axis=1))
    centre = eye_mid + 0.1 * e2m
    k = size / np.maximum(side, 1e-6)
    cos, sin = k * np.cos(phi), k * np.sin(phi)
    lin = np.stack([np.stack([cos, sin], 1), np.stack([-sin, cos], 1)], 1)           # k · R(−phi), [T, 2, 2]
    shift = size / 2.0 - np.einsum("tij,tj->ti", lin, centre)
    m = np.concatenate([lin, shift[..., None]], 2)
    have = np.flatnonzero(present)
    nearest = have[np.rint(np.interp(np.arange(len(m)), have, np.arange(len(have)))).astype(np.int64)]
    return m[nearest]


def crop_frames(frames, transforms: np.ndarray, size: int) -> np.ndarray:
    """Aligned crops ``uint8 [T, S, S, 3]`` of ``frames`` (uint8 ``[T, H, W, 3]`` or a sequence of ``[H, W, 3]``)
    with ``transforms`` (``[T, 2, 3]``, :func:`align_transforms`); bicubic, borders replicated (a crop that
    leaves the frame repeats its edge pixels)."""
    import cv2

    return np.stack([cv2.warpAffine(np.ascontiguousarray(f), m, (size, size), flags=cv2.INTER_CUBIC,
                                    borderMode=cv2.BORDER_REPLICATE) for f, m in zip(frames, transforms)])


def map_landmarks(landmarks: FaceLandmarks, transforms: np.ndarray, frame_wh: tuple[int, int],
                  size: int) -> FaceLandmarks:
    """``landmarks`` (normalised on ``frame_wh`` frames) moved into the crops: a :class:`FaceLandmarks` normalised
    on ``(size, size)``, same fps / present / meta. x, y go through the frame's transform; z (MediaPipe depth,
    on x's scale) is scaled by the transform's scale."""
    xy = _pixels(landmarks, frame_wh)
    lin, shift = transforms[:, :, :2], transforms[:, :, 2]
    crop_xy = np.einsum("tij,tnj->tni", lin, xy) + shift[:, None]
    k = np.sqrt(np.abs(np.linalg.det(lin)))
    z = landmarks.points[..., 2:].astype(np.float64) * frame_wh[0] * k[:, None, None]
    pts = np.concatenate([crop_xy, z], 2) / size
    return FaceLandmarks.from_points(pts.astype(np.float32), (size, size), landmarks.fps, landmarks.present.copy(),
                                     landmarks.meta)


def region_weights(source: FaceLandmarks, target: FaceLandmarks, dilate: float = 0.12,
                   feather: float = 0.25) -> np.ndarray:
    """Paste weight of the regenerated lower-face region in each crop: float32 ``[T, S, S]`` in [0, 1].

    ``source`` / ``target``: crop landmarks (:func:`map_landmarks`, ``image_size`` (S, S)) of the source frame
    and of the dubbed mouth. As in Dub Render, only the target's lower-face deviation from the source counts
    (:func:`ptalk_models.dub_render.lower_face_weights`); the region is the union of both lower faces dilated
    by ``dilate`` and feathered over ``feather`` inter-ocular distances (:func:`dub_region_mask`): 0 outside,
    rising to 1 inside. ``weight > 0`` is the region the sampler regenerates (:func:`latent_noise_mask`). Frames where
    either set is not present get all zeros.
    """
    s = source.image_size
    out = np.zeros((len(source), s[1], s[0]), np.float32)
    src_px, dst_px = _pixels(source, s), _pixels(target, s)
    for t in np.flatnonzero(source.present & target.present):
        eff = src_px[t] + lower_face_weights(src_px[t])[:, None] * (dst_px[t] - src_px[t])
        w, (x0, y0, x1, y1) = dub_region_mask((s[1], s[0]), src_px[t], eff, dilate=dilate, feather=feather)
        out[t, y0:y1, x0:x1] = w
    return out


def latent_noise_mask(weights: np.ndarray, factor: int = 8) -> torch.Tensor:
    """The sampler's noise mask from :func:`region_weights`: float32 ``[T, 1, S/factor, S/factor]``, the fraction
    of each ``factor`` × ``factor`` latent cell (8 px for SD's VAE) covered by the region (``weight > 0``): 1 =
    regenerated, 0 = the source latent kept, between = blended (core Set Latent Noise Mask semantics)."""
    T, S = weights.shape[0], weights.shape[1]
    if S % factor or weights.shape[2] != S:
        raise ValueError(f"weights must be [T, S, S] with S a multiple of {factor}, got {weights.shape}")
    n = S // factor
    cover = (weights > 0).reshape(T, n, factor, n, factor).mean((2, 4), dtype=np.float32)
    return torch.from_numpy(cover)[:, None]


class DubConditions:
    """Per-frame conditions of the AnimateNet Temporal Sampler for dubbing (the interface of
    :class:`ptalk_models.temporal.FrameConditions`): ``structure`` = the dubbed landmarks drawn in the crop
    (Draw Landmarks, ControlNet style); ``identity`` = the head contour (:func:`ptalk_models.contour.head_contour`)
    of the frame's *own* source crop with its own landmarks -- the frame exists, so no previous frame is needed
    (the dubbed jaw is in the structure drawing; the source image with the dubbed landmarks misleads the
    contour's segmentation).

    Args:
        crops: uint8 ``[T, S, S, 3]`` source crops.
        source: the source crop landmarks, ``dubbed``: the dubbed crop landmarks (T frames each, normalised on
            (S, S), :func:`map_landmarks`).
        contour_detail: Contour Guide's ``detail`` (px of the work image).
    """

    needs_previous_frame = False

    def __init__(self, crops: np.ndarray, source: FaceLandmarks, dubbed: FaceLandmarks, contour_detail: int = 128):
        self.crops, self.source, self.dubbed, self.detail = crops, source, dubbed, contour_detail

    def structure(self, start: int, stop: int) -> torch.Tensor:
        """float ``[n, 3, S, S]`` in [0, 1]: dubbed-landmark drawings of frames ``[start, stop)``."""
        return to_chw(draw_landmarks(self.dubbed.frames(start, stop), style="controlnet"))

    def identity(self, start: int, stop: int, previous_frame=None) -> torch.Tensor:
        """float ``[n, 3, S, S]`` in [0, 1]: contour guides (white outline on black) of frames ``[start, stop)``;
        ``previous_frame`` is not used."""
        edges, _ = head_contour(self.crops[start:stop], self.source.frames(start, stop), detail=self.detail)
        return to_chw(np.repeat(edges[..., None], 3, axis=-1))


def paste_back(frame: np.ndarray, crop: np.ndarray, weight: np.ndarray, transform: np.ndarray,
               color_match: bool = True) -> np.ndarray:
    """The generated ``crop`` pasted into ``frame`` with the crop-space ``weight``: a new uint8 ``[H, W, 3]``.

    Args:
        frame: uint8 ``[H, W, 3]`` source frame.
        crop: uint8 ``[S, S, 3]`` generated crop (aligned by ``transform``).
        weight: float32 ``[S, S]`` paste weight in [0, 1] (:func:`region_weights`).
        transform: float64 ``[2, 3]`` frame pixels → crop pixels (:func:`align_transforms`).
        color_match: match the pasted region's Lab mean/std to the source's in the feather ring (0 < w < 1).
    Crop and weight are inverse-warped into the bounding box of the region (bicubic / bilinear, outside the
    crop the weight is 0). Pixels whose warped weight is 0 are ``frame``'s, bit for bit.
    """
    import cv2

    out = frame.copy()
    ys, xs = np.nonzero(weight > 0)
    if not len(xs):
        return out
    H, W = frame.shape[:2]
    corners = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.min() - 1], [xs.min() - 1, ys.max() + 1],
                        [xs.max() + 1, ys.max() + 1]], np.float64)
    inv = cv2.invertAffineTransform(transform)
    fc = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.maximum(np.floor(fc.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(fc.max(0)).astype(int) + 2, (W, H))
    if x1 <= x0 or y1 <= y0:
        return out
    m = transform.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)     # box pixel (x, y) = frame pixel (x + x0, y + y0)
    inverse = cv2.WARP_INVERSE_MAP
    a = cv2.warpAffine(weight, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | inverse,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    gen = cv2.warpAffine(crop.astype(np.float32), m, (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC | inverse,
                         borderMode=cv2.BORDER_REPLICATE)
    gen = np.clip(gen, 0.0, 255.0)
    out[y0:y1, x0:x1] = blend_region(frame[y0:y1, x0:x1], gen, a, color_match)
    return out
