"""The speaker's own mouth in visual dubbing (ptalk_models.mouth_texture, issue 14 item 1) on real media.

GRID ``lbax4n`` (a young man with glasses, 75 frames, 360x288) is dubbed with another GRID speaker's sentence
(``lwbsza``) through the plan the nodes use (:func:`plan_dub`); rendered frames are re-detected with MediaPipe.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ptalk_harness as harness

from portraittalk.ptalk_models import landmarks as L


@pytest.fixture(scope="module")
def grid(shared_data):
    """(frames uint8 [75, 288, 360, 3], fps, MediaPipe landmarks, plan dubbing it with lwbsza's speech)."""
    from portraittalk.ptalk_models.dubbing import plan_dub
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import read_audio, read_video

    frames, fps = read_video(shared_data / "video" / "lbax4n.mpg")
    lm = detect_landmarks(frames, on_missing="keep", fps=fps)
    wav, sr = read_audio(shared_data / "video" / "lwbsza.mpg")
    plan = plan_dub(lm, wav, sr, "trim")
    return frames, fps, lm, plan


@pytest.fixture(scope="module")
def bank(grid):
    from portraittalk.ptalk_models.mouth_texture import build_mouth_bank

    frames, _, _, plan = grid
    return build_mouth_bank(plan.source, lambda ids: (frames[i] for i in ids), plan.source_index)


def _costs(bank, target):
    from portraittalk.ptalk_models.landmarks import to_pixels
    from portraittalk.ptalk_models.mouth_texture import mouth_descriptors, shape_costs

    desc, gap, rot = mouth_descriptors(to_pixels(target.points, target.image_size), bank.canon)
    return shape_costs(desc, gap, rot, *bank.arrays()), gap


def test_chosen_mouths_match_the_target_better_than_random(grid, bank):
    """The selected candidates' mouth shape (pose-normalised lip points, aperture) is closer to the target's than
    a random candidate's, and their inner-lip aperture follows the target's."""
    from portraittalk.ptalk_models.mouth_texture import select_candidates

    _, _, _, plan = grid
    choice = select_candidates(bank, plan.target)
    assert (choice >= 0).all() and choice.max() < len(bank)
    cost, gap = _costs(bank, plan.target)
    t = np.arange(len(choice))
    chosen = cost[t, choice].mean()
    rng = np.random.default_rng(0)
    rand = np.mean([cost[t, rng.integers(0, len(bank), len(t))].mean() for _ in range(20)])
    assert chosen < 0.5 * rand, (chosen, rand)
    cand_gap = bank.arrays()[1][choice]
    assert np.corrcoef(cand_gap, gap)[0, 1] > 0.8
    assert np.abs(cand_gap - gap).mean() < 0.03  # IOD


def test_selection_is_temporally_consistent(grid, bank):
    """Viterbi over the top-k candidates switches texture far less often than the per-frame cheapest choice, at
    a small extra shape cost."""
    from portraittalk.ptalk_models.mouth_texture import select_candidates

    _, _, _, plan = grid
    vit = select_candidates(bank, plan.target)
    greedy = select_candidates(bank, plan.target, greedy=True)
    sw_v, sw_g = int((np.diff(vit) != 0).sum()), int((np.diff(greedy) != 0).sum())
    assert sw_v <= 0.6 * sw_g, (sw_v, sw_g)
    cost, _ = _costs(bank, plan.target)
    t = np.arange(len(vit))
    assert cost[t, vit].mean() < cost[t, greedy].mean() + 0.02
    # a higher switch cost switches less; 0 is the greedy choice
    assert (np.diff(select_candidates(bank, plan.target, switch_cost=0.2)) != 0).sum() <= sw_v
    assert np.array_equal(select_candidates(bank, plan.target, switch_cost=0.0), greedy)


def test_source_mouth_does_not_show_through(grid, bank):
    """Dubbed to silence (the driven mouth rests closed: the closed-mouth frame's mouth in every frame's pose),
    the re-detected mouth stays closed in the frames where the speaker's own mouth was open (measured: inner-lip
    aperture 0.005 IOD vs 0.145 in the source; the old warp: 0.012) and the source's dark mouth interior is gone."""
    from portraittalk.ptalk_models.dub_render import render_dub
    from portraittalk.ptalk_models.dubbing import closed_mouth_frame, dub_landmarks
    from portraittalk.ptalk_models.face import detect_landmarks

    frames, fps, _, plan = grid
    src = plan.source
    rest = src.frame(closed_mouth_frame(src))
    driven = rest.with_points(np.repeat(rest.points, len(src), 0), present=np.ones(len(src), bool))
    silent = dub_landmarks(src, driven, rest=rest, persona=False)
    own_gap = L.inner_lip_aperture(src)
    was_open = src.present & (own_gap > 0.12)
    assert was_open.sum() >= 10
    video = frames[plan.source_index]
    new = render_dub(video, src, silent, mouth_source="own_frames", bank=bank)
    old = render_dub(video, src, silent, mouth_source="warp")
    gap_new = L.inner_lip_aperture(detect_landmarks(new[was_open]))
    gap_old = L.inner_lip_aperture(detect_landmarks(old[was_open]))
    assert gap_new.mean() < 0.04 and gap_new.max() < 0.08
    assert gap_new.mean() < gap_old.mean()
    # no dark interior left where the source mouth was open: pixels inside the source's own inner-lip polygon
    # darker than half the median grey of the mouth box
    import cv2

    dark = {"source": [], "own": [], "warp": []}
    for k, t in enumerate(np.flatnonzero(was_open)):
        p = src.pixels(t)
        m = np.zeros(video.shape[1:3], np.uint8)
        cv2.fillPoly(m, [np.rint(p[L.LIPS_INNER]).astype(np.int32)], 1)
        x0, y0 = np.floor(p[L.LIPS_OUTER].min(0)).astype(int)
        x1, y1 = np.ceil(p[L.LIPS_OUTER].max(0)).astype(int)
        for name, arr in (("source", video[t]), ("own", new[was_open][k]), ("warp", old[was_open][k])):
            g = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY).astype(float)
            dark[name].append((g[m > 0] < 0.5 * np.median(g[y0:y1, x0:x1])).sum())
    dark = {k: float(np.mean(v)) for k, v in dark.items()}
    assert dark["own"] < 0.1 * dark["source"]


def test_pixels_outside_the_region_identical_and_faceless_frames_pass_through(grid, bank):
    """Every changed pixel lies inside the lower-face region or the mouth region; frames whose source or target has
    no face come back unchanged (and the bank never holds a faceless frame)."""
    from portraittalk.ptalk_models.dub_render import dub_region_mask, iter_dub, lower_face_weights
    from portraittalk.ptalk_models.mouth_texture import build_mouth_bank, mouth_region

    frames, _, _, plan = grid
    video = frames[plan.source_index]
    src_lm = plan.source.with_points(plan.source.points, present=plan.source.present.copy())
    src_lm.present[[3, 4, 40]] = False
    tgt = plan.target.with_points(plan.target.points, present=plan.target.present.copy())
    tgt.present[[10, 11]] = False
    b = build_mouth_bank(src_lm, lambda ids: (frames[i] for i in ids), plan.source_index)
    assert not {3, 4, 40} & {c.frame for c in b.candidates}
    out = list(iter_dub(video, src_lm, tgt, mouth_source="own_frames", bank=b))
    H, W = video.shape[1:3]
    for t in (3, 4, 10, 11, 40):
        assert np.array_equal(out[t], video[t])
    changed_total = 0
    for t in (0, 20, 30, 50, 60):
        s = src_lm.pixels(t).astype(np.float64)
        d = tgt.pixels(t).astype(np.float64)
        eff = s + lower_face_weights(s)[:, None] * (d - s)
        region = np.zeros((H, W), bool)
        w1, (x0, y0, x1, y1) = dub_region_mask((H, W), s, eff)
        region[y0:y1, x0:x1] |= w1 > 0
        w2, (x0, y0, x1, y1) = mouth_region((H, W), s, eff)
        region[y0:y1, x0:x1] |= w2 > 0
        changed = np.any(out[t] != video[t], -1)
        assert not (changed & ~region).any()
        changed_total += int(changed.sum())
    assert changed_total > 2000


def test_bank_and_memory_bounded_and_streamed(grid):
    """A 3000-position plan (the clip shown 40 times, slightly jittered) gives a bank of at most ``capacity``
    candidates holding a few MB, decodes only those frames, and the render consumes its frame iterator one frame
    at a time."""
    from portraittalk.ptalk_models.dub_render import iter_dub
    from portraittalk.ptalk_models.landmarks import FaceLandmarks
    from portraittalk.ptalk_models.mouth_texture import build_mouth_bank

    frames, fps, _, plan = grid
    n = len(plan.source)
    reps = 40
    rng = np.random.default_rng(1)
    pts = np.tile(plan.source.points, (reps, 1, 1)) + rng.normal(0, 2e-4, (reps * n, 478, 3)).astype(np.float32)
    long_src = FaceLandmarks.from_points(pts, plan.source.image_size, fps, np.tile(plan.source.present, reps))
    asked = []

    def fetch(ids):
        asked.extend(ids.tolist())
        return (frames[plan.source_index[i % n]] for i in ids)

    b = build_mouth_bank(long_src, fetch, capacity=32)
    assert len(b) == 32 and len(asked) == 32
    assert b.nbytes < 3e6, b.nbytes
    big = build_mouth_bank(long_src, fetch, capacity=400)
    assert len(big) == 400 and big.nbytes < 400 * 120_000
    # streamed: one frame taken from the iterator per frame yielded
    taken = []

    def gen():
        for t in range(n):
            taken.append(t)
            yield frames[plan.source_index[t]]

    it = iter_dub(gen(), plan.source, plan.target, mouth_source="own_frames", bank=b, workers=1)
    next(it)
    next(it)
    assert len(taken) == 2
    taken.clear()  # with a thread pool: at most 2 x workers frames decoded ahead
    it = iter_dub(gen(), plan.source, plan.target, mouth_source="own_frames", bank=b, workers=2)
    next(it)
    next(it)
    assert len(taken) <= 2 + 4, len(taken)
    it.close()
    from portraittalk.ptalk_models.errors import InputError

    with pytest.raises(InputError, match="bank"):
        next(iter_dub(gen(), plan.source, plan.target, mouth_source="own_frames"))
    with pytest.raises(InputError, match="mouth_source"):
        next(iter_dub(frames, plan.source, plan.target, mouth_source="paint"))


def test_node_option_through_the_executor(comfy, shared_data, tmp_path):
    """workflows/dubbing.json run by ComfyUI's executor with Dub Render's mouth_source = own frames and = warp (GRID
    lbax4n + beckett.wav, trim): both give the clip; the mouths differ, the upper face does not; an unknown
    option is rejected, naming the input."""
    from portraittalk.ptalk_models.media import read_video

    base = harness.load_workflow(harness.REPO_ROOT / "workflows" / "dubbing.json")
    outs = {}
    for option in ("own frames", "warp"):
        ui = harness.apply_inputs(base, {"Source video": shared_data / "video" / "lbax4n.mpg",
                                         "New speech": shared_data / "audio" / "beckett.wav",
                                         "PTalkDubLandmarks": {"length_policy": "trim"},
                                         "PTalkDubRender": {"mouth_source": option}})
        files = harness.run_workflow(ui, out_dir=tmp_path / option.replace(" ", "_"))
        outs[option], _ = read_video(files[0])
    a, b = outs["own frames"].astype(int), outs["warp"].astype(int)
    assert a.shape == b.shape and a.shape[1:] == (288, 360, 3)
    upper = np.abs(a[:, :100] - b[:, :100]).mean()
    mouth = np.abs(a[:, 160:220, 140:220] - b[:, 160:220, 140:220]).mean()
    assert upper < 2.0 and mouth > 2.5 * upper, (upper, mouth)  # measured 1.09 (H.264 noise) and 4.32
    ui = harness.apply_inputs(base, {"Source video": shared_data / "video" / "lbax4n.mpg",
                                     "New speech": shared_data / "audio" / "beckett.wav",
                                     "PTalkDubRender": {"mouth_source": "paint"}})
    with pytest.raises((harness.PromptValidationError, harness.PromptExecutionError), match="mouth_source"):
        harness.run_workflow(ui, out_dir=tmp_path / "bad")


def test_dub_render_node_option_directly(comfy, grid):
    """Dub Render's execute with each option: 'warp' is the previous renderer bit for bit (engine default), 'own
    frames' changes the mouth only."""
    from portraittalk.ptalk_models.dub_render import render_dub

    frames, _, _, plan = grid
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubRender"]
    images = torch.from_numpy(frames).float().div(255.0)
    warp = node.execute(images, plan, 0.25, True, "warp").result[0]
    ref = render_dub(frames[plan.source_index], plan.source, plan.target)
    assert np.array_equal((warp.numpy() * 255.0 + 0.5).astype(np.uint8), ref)
    own = node.execute(images, plan, 0.25, True).result[0]  # the default: own frames
    d = (own - warp).abs().amax(-1)
    assert d[:, :100].max() == 0 and d.mean() > 0


def test_thread_pool_gives_the_same_frames(grid):
    """iter_dub renders frames in a thread pool (workers=2, the default on 2+ cores): bit-identical to one thread,
    in order; an error in the frame source surfaces at its place."""
    from portraittalk.ptalk_models.dub_render import iter_dub, render_dub

    frames, fps, _, plan = grid
    src = frames[plan.source_index]
    one = render_dub(src, plan.source, plan.target, mouth_source="own_frames", workers=1)
    two = render_dub(src, plan.source, plan.target, mouth_source="own_frames", workers=2)
    assert np.array_equal(one, two) and not np.array_equal(one, src)

    def broken():
        yield from src[:5]
        raise RuntimeError("decoder died at frame 5")

    got = []
    with pytest.raises(RuntimeError, match="frame 5"):
        for f in iter_dub(broken(), plan.source, plan.target, mouth_source="warp", workers=2):
            got.append(f)
    assert len(got) <= 5 and all(np.array_equal(g, o) for g, o in zip(got, render_dub(
        src[:len(got)], plan.source.frames(0, len(got)), plan.target.frames(0, len(got)), workers=1)))


def test_selection_in_blocks_is_the_same(grid, bank, monkeypatch):
    """The selection costs are computed COST_BLOCK target frames at a time (memory bounded in the video's
    length): with blocks of 7 frames (boundaries inside the 75-frame dub) the costs and the Viterbi path are
    the same as in one block."""
    from portraittalk.ptalk_models import mouth_texture as mt

    target = grid[3].target
    monkeypatch.setattr(mt, "COST_BLOCK", 10 ** 6)
    whole_cost, _ = _costs(bank, target)
    whole = mt.select_candidates(bank, target)
    monkeypatch.setattr(mt, "COST_BLOCK", 7)
    blocked_cost, _ = _costs(bank, target)
    assert np.array_equal(blocked_cost, whole_cost)
    assert np.array_equal(mt.select_candidates(bank, target), whole)
    assert len(set(whole[whole >= 0].tolist())) > 1  # a real path through several textures
