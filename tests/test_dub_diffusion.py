"""Visual dubbing, diffusion path: the crop / align / paste-back engine (ptalk_models.dub_crop) on a real GRID clip
(lbax4n), and Dub Diffusion Render in the real ComfyUI with the tiny random SD1.5 + AnimateNet, driven by a
real Audio → Dub Landmarks run (lwbsza's speech); workflows/dubbing_diffusion.json end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ptalk_harness as harness
from portraittalk.ptalk_models.dub_crop import align_transforms, crop_frames, map_landmarks, paste_back, region_weights
from portraittalk.ptalk_models.landmarks import FaceLandmarks

FIRST, FRAMES = 20, 6        # lbax4n frames 20..25 (speaking)
CROP = 64                    # node crop size (8 x 8 latents for the tiny model)
SPEECH = (0.6, 1.0)          # seconds of lwbsza.mpg: 10 frames of speech at 25 fps, trimmed to FRAMES
RUN = dict(seed=3, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal", crop_size=CROP, frames_per_window=3,
           strength=1.0, dilate=0.12, feather=0.25, color_match=True)


@pytest.fixture(scope="module")
def clip(shared_data):
    """(frames uint8 [FRAMES, 288, 360, 3], fps, their MediaPipe landmarks, lwbsza audio (wav, sr))."""
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import read_audio, read_video

    frames, fps = read_video(shared_data / "video" / "lbax4n.mpg")
    frames = np.ascontiguousarray(frames[FIRST:FIRST + FRAMES])
    return frames, fps, detect_landmarks(frames, fps=fps), read_audio(shared_data / "video" / "lwbsza.mpg")


@pytest.fixture(scope="module")
def plan(comfy, clip):
    """The dubbing plan of Audio → Dub Landmarks on the clip with lwbsza's speech (trim)."""
    frames, fps, lm, (wav, sr) = clip
    plan, dub, aligned, _ = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubLandmarks"].execute(
        landmarks=lm, audio={"waveform": torch.from_numpy(wav[:, int(SPEECH[0] * sr):int(SPEECH[1] * sr)])[None],
                             "sample_rate": sr},
        length_policy="trim", smoothing=1.0, persona=True, expressiveness=1.0, backend="phonemes (pocketsphinx)",
        transcript="").result
    assert len(dub) == FRAMES and plan.source_index.tolist() == list(range(FRAMES))
    assert plan.fps == fps and plan.source is aligned and plan.target is dub
    return plan


@pytest.fixture(scope="module")
def dubbed(plan):
    """(aligned_source, dubbed_landmarks) of the plan."""
    return plan.source, plan.target


def _wh(frames):
    return frames.shape[2], frames.shape[1]


# ------------------------------------------------------------------------------------------------ engine
def test_crop_landmarks_match_a_redetection(clip):
    """MediaPipe run on the aligned crops finds the landmarks where map_landmarks puts them (mean error < 1% of
    the crop side), with the eyes level and the head inside the crop."""
    from portraittalk.ptalk_models.face import detect_landmarks

    frames, _, lm, _ = clip
    m = align_transforms(lm, _wh(frames), 256)
    assert m.shape == (FRAMES, 2, 3) and m.dtype == np.float64
    crops = crop_frames(frames, m, 256)
    mapped = map_landmarks(lm, m, _wh(frames), 256)
    assert crops.shape == (FRAMES, 256, 256, 3) and crops.dtype == np.uint8 and mapped.image_size == (256, 256)
    again = detect_landmarks(crops)
    err = np.linalg.norm(again.pixels() - mapped.pixels(), axis=-1).mean()
    assert err < 2.56, err
    px = mapped.pixels()
    eyes = px[:, [33, 263]]
    assert np.abs(eyes[:, 0, 1] - eyes[:, 1, 1]).max() < 0.02 * 256          # eyes level
    assert px.min() > 0.1 * 256 and px.max() < 0.9 * 256                     # face well inside the crop


def test_transforms_are_smooth_and_faceless_frames_take_the_nearest(clip):
    """Temporal smoothing removes frame-to-frame jitter of the crop (second differences of the matrix entries)
    while following the face; a frame without a face gets its nearest face frame's transform."""
    frames, _, lm, _ = clip
    raw = align_transforms(lm, _wh(frames), 256, smoothing=0.0)
    smooth = align_transforms(lm, _wh(frames), 256, smoothing=2.0)
    jitter = [np.abs(np.diff(m, 2, axis=0)).sum() for m in (raw, smooth)]
    assert jitter[1] < 0.5 * jitter[0], jitter
    eyes_raw = map_landmarks(lm, raw, _wh(frames), 256).pixels()[:, [33, 263]]
    eyes = map_landmarks(lm, smooth, _wh(frames), 256).pixels()[:, [33, 263]]
    assert np.abs(eyes - eyes_raw).max() < 0.03 * 256
    present = lm.present.copy()
    present[[0, -2, -1]] = False
    gaps = FaceLandmarks.from_points(lm.points, lm.image_size, lm.fps, present)
    m = align_transforms(gaps, _wh(frames), 256)
    assert np.array_equal(m[0], m[1]) and np.array_equal(m[-2], m[-3]) and np.array_equal(m[-1], m[-3])
    assert not np.array_equal(m[1], m[2])
    with pytest.raises(ValueError, match="no frame has a face"):
        align_transforms(FaceLandmarks.from_points(lm.points, lm.image_size, lm.fps, np.zeros(FRAMES, bool)),
                         _wh(frames), 256)


def test_paste_back_round_trip_is_bit_identical_outside_the_region(clip, dubbed):
    """Pasting a crop back: every pixel outside the (inverse-warped) region is the source's, bit for bit; the
    unmodified source crop comes back close to the source inside (two resamplings); a changed crop changes
    only the lower face."""
    import cv2

    frames, _, _, _ = clip
    aligned, dub = dubbed
    m = align_transforms(aligned, _wh(frames), 256)
    crops = crop_frames(frames, m, 256)
    src, tgt = (map_landmarks(x, m, _wh(frames), 256) for x in (aligned, dub))
    w = region_weights(src, tgt)
    assert w.shape == (FRAMES, 256, 256) and w.dtype == np.float32 and 0.0 <= w.min() and w.max() == 1.0
    mouth = np.rint(tgt.pixels()[:, 13]).astype(int)                          # inner upper lip: inside
    assert (w[np.arange(FRAMES), mouth[:, 1], mouth[:, 0]] == 1).all()
    assert (w[:, : int(src.pixels()[:, [33, 263], 1].max())] == 0).all()      # nothing at or above the eyes
    for t in (0, FRAMES - 1):
        inside = cv2.warpAffine(w[t], m[t], _wh(frames), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP) > 0
        same = paste_back(frames[t], crops[t], w[t], m[t], color_match=False)
        assert np.array_equal(same[~inside], frames[t][~inside])
        assert np.abs(same.astype(int) - frames[t]).mean(-1)[inside].mean() < 3.0
        grey = np.full_like(crops[t], 128)
        changed = paste_back(frames[t], grey, w[t], m[t], color_match=True)
        diff = np.any(changed != frames[t], axis=-1)
        assert diff.sum() > 1000 and not diff[~inside].any()
        ys = np.flatnonzero(diff.any(1))
        assert ys.min() > aligned.pixels()[t, [33, 263], 1].max()  # below the eyes
    faceless = region_weights(FaceLandmarks.from_points(src.points, src.image_size, 0, np.zeros(FRAMES, bool)), tgt)
    assert not faceless.any()
    assert np.array_equal(paste_back(frames[0], crops[0], faceless[0], m[0]), frames[0])


# ------------------------------------------------------------------------------------------------ node
@pytest.fixture(scope="module")
def sd(comfy, tiny_sd15_loaded):
    """(MODEL, positive, negative, VAE) of the tiny random SD1.5."""
    model, clip_model, vae = tiny_sd15_loaded
    encode = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkTextEncode"].execute
    return model, encode(clip_model, "a man talking").result[0], encode(clip_model, "blurry").result[0], vae


def test_temporal_sample_noise_mask(sd, clip, dubbed, tiny_animatenet):
    """The sampler's noise mask (pixel or latent size): all 0 keeps the encoded init frames (the output is their
    VAE round trip), all 1 is the unmasked run, bit for bit."""
    from portraittalk.nodes.glue.temporal_sampling import _decode, temporal_sample
    from portraittalk.ptalk_models.dub_crop import DubConditions

    frames, _, _, _ = clip
    aligned, dub = dubbed
    n = 2
    m = align_transforms(aligned, _wh(frames), CROP)[:n]
    crops = crop_frames(frames, m, CROP)
    src, tgt = (map_landmarks(x.frames(0, n), m, _wh(frames), CROP) for x in (aligned, dub))
    init = torch.from_numpy(crops).float().div(255.0)
    model, pos, neg, vae = sd
    conditions = DubConditions(crops, src, tgt)

    def run(mask, init_frames=init):
        return temporal_sample(model, pos, neg, vae, n, (CROP, CROP), init[:1], conditions, 5, 2, 3.0,
                               "euler", "normal", 1.0, n, animatenet=tiny_animatenet.net,
                               init_frames=init_frames, noise_mask=mask)

    kept = run(torch.zeros(n, 1, CROP, CROP))
    with torch.inference_mode():
        round_trip = _decode(vae, vae.encode(init))
    assert torch.allclose(kept, round_trip, atol=2e-3), (kept - round_trip).abs().max()
    assert torch.equal(run(torch.ones(n, 1, CROP // 8, CROP // 8)), run(None))
    with pytest.raises(ValueError, match="noise_mask needs init_frames"):
        run(torch.ones(n, 1, CROP, CROP), init_frames=None)


def _render(comfy, sd, clip, plan, **kw):
    frames, _, _, _ = clip
    args = dict(RUN)
    args.update(kw)
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubDiffusionRender"]
    images = torch.from_numpy(frames).float().div(255.0)
    out = node.execute(sd[0], sd[1], sd[2], sd[3], images, plan, **args).result[0]
    return (out.numpy() * 255.0 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def rendered(comfy, sd, clip, plan, tiny_animatenet):
    return _render(comfy, sd, clip, plan, animatenet=tiny_animatenet.net)


def test_node_regenerates_only_the_mouth_region(clip, dubbed, rendered):
    frames, _, _, _ = clip
    aligned, dub = dubbed
    assert rendered.shape == frames.shape
    px = aligned.pixels()
    changed = np.any(rendered != frames, axis=-1)
    for t in range(FRAMES):
        eyes_y = px[t, [33, 263], 1].max()
        oval = px[t, [234, 454, 152], :]                                       # cheek sides and chin
        iod = np.linalg.norm(px[t, 33] - px[t, 263])
        ys, xs = np.nonzero(changed[t])
        assert len(ys) and ys.min() > eyes_y and ys.max() < oval[2, 1] + 0.3 * iod
        assert xs.min() > oval[0, 0] - 0.3 * iod and xs.max() < oval[1, 0] + 0.3 * iod
        lips = np.rint(px[t, [61, 291, 0, 17]]).astype(int)                    # mouth corners, lip midpoints
        box = (slice(lips[2, 1], lips[3, 1] + 1), slice(lips[0, 0], lips[1, 0] + 1))
        assert np.abs(rendered[t][box].astype(int) - frames[t][box]).mean() > 8.0   # the mouth is regenerated


def test_node_is_deterministic_per_seed(comfy, sd, clip, plan, dubbed, rendered, tiny_animatenet):
    again = _render(comfy, sd, clip, plan, animatenet=tiny_animatenet.net)
    assert np.array_equal(again, rendered)
    other = _render(comfy, sd, clip, plan, animatenet=tiny_animatenet.net, seed=4)
    assert not np.array_equal(other, rendered)
    above = int(dubbed[0].pixels()[:, [33, 263], 1].min())                    # rows above the eyes: the source
    assert np.array_equal(other[:, :above], rendered[:, :above])


def test_node_bad_inputs(comfy, sd, clip, plan, tiny_animatenet):
    """Bad inputs are node errors naming the input; the plan is checked against the frames by the one rule
    (ptalk_models.dubbing.check_dub_inputs: same video length, aspect within 1 %)."""
    from portraittalk.ptalk_models.dubbing import DubPlan

    aligned, dub = plan.source, plan.target
    net = dict(animatenet=tiny_animatenet.net)
    with pytest.raises(ValueError, match=r"Dub Diffusion Render.*'crop_size'.*multiple of 64"):
        _render(comfy, sd, clip, plan, crop_size=100, **net)
    with pytest.raises(ValueError, match=r"Dub Diffusion Render.*'animatenet'.*controlnet"):
        _render(comfy, sd, clip, plan)

    def lm(x, size=dub.image_size, present=None):
        return FaceLandmarks.from_points(x.points, size, x.fps, x.present if present is None else present, x.meta)

    wide = DubPlan(lm(dub, (640, 360)), lm(aligned, (640, 360)), plan.source_index, plan.fps, plan.source_frames,
                   (640, 360))
    with pytest.raises(ValueError, match=r"'images'.*640x360.*360x288"):
        _render(comfy, sd, clip, wide, **net)
    none = DubPlan(lm(dub, present=np.zeros(FRAMES, bool)), aligned, plan.source_index, plan.fps,
                   plan.source_frames, plan.source_size)
    with pytest.raises(ValueError, match=r"'plan'.*no frame has a face"):
        _render(comfy, sd, clip, none, **net)
    with pytest.raises(ValueError, match=r"'images'.*same"):
        _render(comfy, sd, clip, plan.with_source_index(plan.source_index, FRAMES + 4), **net)
    with pytest.raises(ValueError, match=r"'plan'.*dubbing plan"):
        _render(comfy, sd, clip, dub, **net)


def test_dubbing_diffusion_workflow_end_to_end(comfy, shared_data, tiny_sd15, tiny_identitynet, tiny_animatenet,
                                               clip, tmp_path):
    """workflows/dubbing_diffusion.json with the tiny random models: Load Video (lbax4n) + 0.4 s of lwbsza's
    speech (trim) → Face Landmarks → Audio → Dub Landmarks, Face Embed of the video's frames → IdentityNet Apply
    + Text Encode, AnimateNet → Dub Diffusion Render → Create Video → Save Video: an mp4 at the source size and
    fps, one frame per audio frame."""
    from portraittalk.ptalk_models.media import read_video, write_wav

    wav, sr = clip[3]
    speech = tmp_path / "speech.wav"
    write_wav(speech, wav[:, int(SPEECH[0] * sr):int(SPEECH[1] * sr)], sr)
    ui = harness.load_workflow(harness.REPO_ROOT / "workflows" / "dubbing_diffusion.json")
    ui = harness.apply_inputs(ui, {
        "Source video": shared_data / "video" / "lbax4n.mpg", "New speech": speech,
        "CheckpointLoaderSimple": {"ckpt_name": tiny_sd15.name},
        "PTalkIdentityNetLoader": {"weights": tiny_identitynet.name},
        "PTalkAnimateNetLoader": {"weights": tiny_animatenet.name},
        "PTalkFaceEmbed": {"backend": "dlib"},
        "PTalkDubLandmarks": {"length_policy": "trim"},
        "PTalkDubDiffusionRender": {"steps": 1, "crop_size": 64},
    })
    files = harness.run_workflow(ui, out_dir=tmp_path / "out")
    assert len(files) == 1 and files[0].suffix == ".mp4"
    frames, fps = read_video(files[0])
    assert frames.shape == (10, 288, 360, 3) and abs(fps - 25.0) < 1e-3
