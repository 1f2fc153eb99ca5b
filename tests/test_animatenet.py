"""AnimateNet Temporal Sampler (paper §III-B) in the real ComfyUI: the tiny random SD1.5 checkpoint, a tiny
AnimateNet initialised from its UNet, real landmarks (MediaPipe on a real photo, driven by real speech through
Audio → Landmarks), ComfyUI's own sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from portraittalk.nodes.glue.patcher import unet_config
from portraittalk.nodes.glue.sampling import sample_latent
from portraittalk.nodes.glue.temporal_sampling import _decode
from portraittalk.ptalk_models.animatenet import AnimateNetConfig, new_animatenet, save_animatenet
from portraittalk.ptalk_models.landmarks import FaceLandmarks

SIZE, FRAMES = 64, 4
COMMON = dict(seed=11, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal", denoise=1.0, strength=1.0,
              start_percent=0.0, end_percent=1.0)


@pytest.fixture(scope="module")
def sd(tiny_sd15_loaded):
    return tiny_sd15_loaded


@pytest.fixture(scope="module")
def reference(astronaut):
    """The astronaut photo at 64x64 as an IMAGE [1, 64, 64, 3]."""
    import cv2

    small = cv2.resize(astronaut, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).float().div(255.0)[None]


@pytest.fixture(scope="module")
def driving(astronaut_lm, beckett):
    """FRAMES frames of Audio → Landmarks on beckett.wav (speech from 1 s on), for the 64x64 reference."""
    from portraittalk.ptalk_models.audio2landmarks import generate_landmarks

    wav, sr = beckett
    lm = generate_landmarks(wav[:, sr: 2 * sr], sr, astronaut_lm, fps=25.0, seed=0)
    return FaceLandmarks.from_points(lm.points[5:5 + FRAMES], (SIZE, SIZE), lm.fps, lm.present[5:5 + FRAMES])


@pytest.fixture(scope="module")
def conds(comfy, sd):
    encode = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkTextEncode"].execute
    return encode(sd[1], "a photo of a person talking").result[0], encode(sd[1], "blurry").result[0]


def _untrained(sd, seed: int = 0):
    """An AnimateNet initialised from the tiny UNet, untrained (zero convs exactly zero)."""
    cfg = AnimateNetConfig.from_unet_config(unet_config(sd[0]))
    net = new_animatenet(cfg, seed=seed, unet_sd=sd[0].model.diffusion_model.state_dict())
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def nets(sd, tiny_animatenet):
    return {"zero": _untrained(sd), "active": tiny_animatenet.net}


def _run(comfy, sd, conds, reference, landmarks, **kw):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkAnimateNetTemporalSampler"]
    args = dict(COMMON, frames_per_window=1, contour_source="previous frame")
    args.update(kw)
    images, fps = node.execute(sd[0], conds[0], conds[1], sd[2], landmarks, reference, **args).result
    return images


def test_zero_initialised_branch_changes_nothing(comfy, sd, conds, reference, driving, nets):
    """An untrained AnimateNet (zero convs) gives exactly the frames of the plain model with the same noise."""
    frames = _run(comfy, sd, conds, reference, driving, animatenet=nets["zero"])
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and torch.isfinite(frames).all()
    model, _, vae = sd
    latents = [sample_latent(model, conds[0], conds[1], {"samples": torch.zeros(1, 4, 8, 8)},
                             COMMON["seed"] + t, 2, 3.0, "euler", "normal", 1.0)["samples"]
               for t in range(FRAMES)]
    assert torch.equal(_decode(vae, torch.cat(latents)), frames)  # decoded as one batch, as the node


def test_frames_follow_landmarks_and_previous_frame(comfy, sd, conds, reference, driving, nets):
    base = _run(comfy, sd, conds, reference, driving, animatenet=nets["active"])
    assert torch.equal(_run(comfy, sd, conds, reference, driving, animatenet=nets["active"]), base), "same seed"
    plain = _run(comfy, sd, conds, reference, driving, animatenet=nets["zero"])
    assert not torch.equal(base, plain), "a trained branch must change the frames"
    # move the mouth/jaw landmarks of frame 1 only: frame 0 is untouched, frame 1 changes (structure), and
    # frame 2 changes too, through its temporal condition (frame 1's latent) and contour (frame 1's image)
    pts = driving.points.copy()
    pts[1, :, 1] += 0.05
    moved = FaceLandmarks.from_points(pts, driving.image_size, driving.fps, driving.present)
    other = _run(comfy, sd, conds, reference, moved, animatenet=nets["active"])
    assert torch.equal(other[0], base[0])
    assert not torch.equal(other[1], base[1]) and not torch.equal(other[2], base[2])


def test_windows_bound_the_batch_and_keep_the_dependency(comfy, sd, conds, reference, driving, nets):
    """frames_per_window 3: frames 0–2 in one batch (frame t's temporal condition is frame t−1's latest
    estimate), frame 3 in the next window. Still one frame per landmark frame, deterministic, and frame 1
    depends on frame 0's conditioning."""
    w3 = _run(comfy, sd, conds, reference, driving, animatenet=nets["active"], frames_per_window=3)
    assert w3.shape == (FRAMES, SIZE, SIZE, 3)
    assert torch.equal(_run(comfy, sd, conds, reference, driving, animatenet=nets["active"], frames_per_window=3), w3)
    pts = driving.points.copy()
    pts[0, :, 0] += 0.05
    moved = FaceLandmarks.from_points(pts, driving.image_size, driving.fps, driving.present)
    other = _run(comfy, sd, conds, reference, moved, animatenet=nets["active"], frames_per_window=3)
    assert not torch.equal(other[1], w3[1])


def test_interrupt_stops_cleanly(comfy, sd, conds, reference, driving, nets):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(comfy, sd, conds, reference, driving, animatenet=nets["active"])
    finally:
        mm.interrupt_current_processing(False)
    assert _run(comfy, sd, conds, reference, driving, animatenet=nets["zero"]).shape[0] == FRAMES


def test_bad_inputs(comfy, sd, conds, reference, driving, nets, tiny_identitynet, tmp_path):
    wrong_size = FaceLandmarks.from_points(driving.points, (SIZE * 2, SIZE), driving.fps)
    with pytest.raises(ValueError, match=r"AnimateNet Temporal Sampler.*'landmarks'.*128x64.*64x64"):
        _run(comfy, sd, conds, reference, wrong_size, animatenet=nets["zero"])
    empty = FaceLandmarks.from_points(np.zeros((0, 478, 3), np.float32), (SIZE, SIZE), 25.0)
    with pytest.raises(ValueError, match="'landmarks'.*empty"):
        _run(comfy, sd, conds, reference, empty, animatenet=nets["zero"])
    with pytest.raises(ValueError, match="'animatenet'.*AnimateNet Loader.*controlnet"):
        _run(comfy, sd, conds, reference, driving)
    with pytest.raises(ValueError, match="'denoise'.*init_frames"):
        _run(comfy, sd, conds, reference, driving, animatenet=nets["zero"], denoise=0.5)
    # the Loader: an IdentityNet file is not an AnimateNet
    load = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkAnimateNetLoader"].execute
    with pytest.raises(ValueError, match=r"AnimateNet Loader.*'weights'"):
        load(tiny_identitynet.name.split("/", 1)[1])
    # an AnimateNet for a different UNet
    big = new_animatenet(AnimateNetConfig(), seed=0)
    with pytest.raises(ValueError, match=r"AnimateNet Temporal Sampler.*'animatenet'"):
        _run(comfy, sd, conds, reference, driving, animatenet=big)


def test_loader_round_trip_and_init_frames(comfy, sd, conds, reference, driving, nets, tiny_identitynet,
                                           astronaut_lm):
    """Save → AnimateNet Loader (models/portraittalk) → same frames; init frames (the warp render of the same
    reference and landmarks) with denoise < 1 and contour from the init frames."""
    path = tiny_identitynet.root / "portraittalk" / "ptalk_tiny_animatenet_copy.safetensors"
    save_animatenet(nets["active"], path)
    loaded = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkAnimateNetLoader"].execute(path.name).result[0]
    a = _run(comfy, sd, conds, reference, driving, animatenet=nets["active"])
    assert torch.equal(_run(comfy, sd, conds, reference, driving, animatenet=loaded), a)
    render = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkLandmarkWarpRender"]
    ref_lm = FaceLandmarks.from_points(astronaut_lm.points, driving.image_size)
    init = render.execute(reference, driving, "cavity_and_teeth", True, ref_lm).result[0]
    b = _run(comfy, sd, conds, reference, driving, animatenet=loaded, init_frames=init, denoise=0.5,
             contour_source="init frames")
    assert b.shape == a.shape and not torch.equal(a, b)


def test_diffusion_workflow_end_to_end(comfy, tiny_sd15, tiny_identitynet, tiny_animatenet, astronaut, beckett,
                                       tmp_path):
    """workflows/talking_photo_diffusion.json on real inputs (a 128-px astronaut, 1 s of beckett.wav) with the tiny
    random models: Face Landmarks → Audio → Landmarks → warp render (init frames) → IdentityNet-applied MODEL +
    AnimateNet Temporal Sampler → Create Video → Save Video: an mp4 with one frame per landmark frame."""
    import cv2

    import ptalk_harness as harness
    from portraittalk.ptalk_models.media import read_video, write_wav

    img = tmp_path / "astronaut_128.png"
    cv2.imwrite(str(img), cv2.cvtColor(cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA),
                                       cv2.COLOR_RGB2BGR))
    wav, sr = beckett
    speech = tmp_path / "speech_1s.wav"
    write_wav(speech, wav[:, sr: 2 * sr], sr)
    ui = harness.load_workflow(harness.REPO_ROOT / "workflows" / "talking_photo_diffusion.json")
    ui = harness.apply_inputs(ui, {
        "Reference portrait": img, "Speech": speech,
        "CheckpointLoaderSimple": {"ckpt_name": tiny_sd15.name},
        "PTalkIdentityNetLoader": {"weights": tiny_identitynet.name},
        "PTalkAnimateNetLoader": {"weights": tiny_animatenet.name},
        "PTalkFaceEmbed": {"backend": "dlib"},
        "PTalkAnimateNetTemporalSampler": {"steps": 2},
    })
    files = harness.run_workflow(ui, out_dir=tmp_path / "out")
    assert len(files) == 1 and files[0].suffix == ".mp4"
    frames, fps = read_video(files[0])
    assert frames.shape[1:] == (128, 128, 3) and abs(fps - 25) < 1e-6 and abs(len(frames) - 25) <= 1


def test_training_free_mode_with_core_controlnets(comfy, sd, conds, reference, driving, tiny_controlnets):
    """No AnimateNet: a landmark ControlNet fed the Draw Landmarks images and a contour ControlNet fed the contour
    guides, both loaded by core ControlNetLoader. Each acts, and the landmarks steer the frames."""
    load = comfy.nodes.NODE_CLASS_MAPPINGS["ControlNetLoader"]().load_controlnet
    lm_cn, contour_cn = load(tiny_controlnets.landmarks)[0], load(tiny_controlnets.contour)[0]
    both = _run(comfy, sd, conds, reference, driving, landmark_controlnet=lm_cn, contour_controlnet=contour_cn,
                frames_per_window=2)
    assert both.shape == (FRAMES, SIZE, SIZE, 3) and torch.isfinite(both).all()
    only_lm = _run(comfy, sd, conds, reference, driving, landmark_controlnet=lm_cn, frames_per_window=2)
    assert not torch.equal(both, only_lm)
    pts = driving.points.copy()
    pts[2, :, 1] += 0.08
    moved = FaceLandmarks.from_points(pts, driving.image_size, driving.fps, driving.present)
    other = _run(comfy, sd, conds, reference, moved, landmark_controlnet=lm_cn, frames_per_window=2)
    assert torch.equal(other[:2], only_lm[:2]) and not torch.equal(other[2], only_lm[2])


def test_temporal_path_and_stage1_nets(comfy, sd, conds, reference, driving, nets):
    """With the contour taken from the reference, frame t−1 reaches frame t only through the temporal condition:
    moving frame 1's landmarks changes frame 2 for a net whose w3 is trained (1), not for a stage-1 net (w3 = 0,
    its initial value: the temporal term is off)."""
    import copy

    pts = driving.points.copy()
    pts[1, :, 1] += 0.05
    moved = FaceLandmarks.from_points(pts, driving.image_size, driving.fps, driving.present)
    kw = dict(contour_source="reference")
    a = _run(comfy, sd, conds, reference, driving, animatenet=nets["active"], **kw)
    b = _run(comfy, sd, conds, reference, moved, animatenet=nets["active"], **kw)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[2], b[2])
    stage1 = copy.deepcopy(nets["active"])
    stage1.__dict__.pop("_ptalk_patcher", None)
    with torch.no_grad():
        for name, p in stage1.named_parameters():
            if name.endswith(".weights"):
                p[2] = 0.0
    c = _run(comfy, sd, conds, reference, driving, animatenet=stage1, **kw)
    d = _run(comfy, sd, conds, reference, moved, animatenet=stage1, **kw)
    assert not torch.equal(c[1], d[1]) and torch.equal(c[2], d[2]) and torch.equal(c[3], d[3])


def test_strength_and_chaining_with_a_core_controlnet(comfy, sd, conds, reference, driving, nets, tiny_controlnets):
    """Strength 0 = the plain model; AnimateNet chains after a ControlNet already on the conditioning (core
    Apply ControlNet), and both act."""
    plain = _run(comfy, sd, conds, reference, driving, animatenet=nets["zero"])
    assert torch.equal(_run(comfy, sd, conds, reference, driving, animatenet=nets["active"], strength=0.0), plain)
    cn = comfy.nodes.NODE_CLASS_MAPPINGS["ControlNetLoader"]().load_controlnet(tiny_controlnets.contour)[0]
    apply = comfy.nodes.NODE_CLASS_MAPPINGS["ControlNetApplyAdvanced"]().apply_controlnet
    hint = reference.clone()
    pos, neg = apply(conds[0], conds[1], cn, hint, 1.0, 0.0, 1.0, vae=sd[2])
    only_anim = _run(comfy, sd, conds, reference, driving, animatenet=nets["active"])
    only_cn = _run(comfy, sd, (pos, neg), reference, driving, animatenet=nets["zero"])
    both = _run(comfy, sd, (pos, neg), reference, driving, animatenet=nets["active"])
    assert not torch.equal(both, only_anim) and not torch.equal(both, only_cn)
