"""On real media: the talking photo in bounded memory for any photo and speech length, IMAGE-batch
nodes that stop before they run out of memory, and a dubbing default that keeps the person alive.

* The streamed default graph (Landmark Warp Render → Video → Save Video) on a 970x2204 "phone" portrait — made
  here by upscaling photos/astronaut.png with OpenCV (bicubic, 970x970) and replicating its top and bottom rows to
  2204 rows — with 10 s and 1 minute of real speech (jfk.flac and beckett.wav alternated, 16 kHz): the peak RSS
  of the whole ComfyUI process (a child process, ``os.wait4``'s ``ru_maxrss``) stays under 2.5 GB and does not
  grow with the speech length. A benchmark-style check with generous margins, not a timing; the 10-minute figure
  is bench/bench_memory.py's.
* Only the face crop is rendered per frame (what keeps a large photo's cost at a 512x512 one's, encode aside),
  and the encoder's YUV compositing gives the frames the full-frame path gives.
* The pre-flight: Landmark Warp Render (IMAGE batch) with ten minutes of landmarks on the large photo, and the
  IMAGE-batch graph with 3 minutes of speech on it, stop with an error naming the node, the estimate and the
  streamed node — no allocation, no out-of-memory kill; Dub Render, Draw Landmarks and Contour Guide likewise
  (memory pinned low with ``PTALK_MEMORY_AVAILABLE_GB``).
* Dubbing: a 3 s GRID clip with 11 s of speech under the default length policy — the head keeps moving after the
  clip's end (upper-face landmarks re-detected on the output vary as much as in the clip, without a jump), where
  ``hold`` freezes them; ping-pong over a long clip stays within its frame buffer.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soxr
import torch

REPO = Path(__file__).resolve().parent.parent
BACKEND = "phonemes (pocketsphinx)"
LARGE = (970, 2204)   # width, height of the "phone" portrait
BOUND_GB = 2.5        # the memory target: 10 minutes of speech on a 970x2204 photo in at most 2.5 GB peak RSS


#: the default graph (Landmark Warp Render → Video → Save Video) and the IMAGE-batch variant
STREAMED_WORKFLOW = REPO / "workflows" / "talking_photo.json"
BATCH_WORKFLOW = REPO / "workflows" / "talking_photo_batch.json"


# ----------------------------------------------------------------------------------------------- media
@pytest.fixture(scope="module")
def large_photo(shared_data, tmp_path_factory) -> Path:
    """photos/astronaut.png upscaled with OpenCV (bicubic) to 970x970 and extended to 970x2204 by replicating its
    top and bottom rows: a phone-style portrait, written as PNG to a temporary folder."""
    from portraittalk.ptalk_models.media import read_image

    w, h = LARGE
    img = cv2.resize(read_image(shared_data / "photos" / "astronaut.png"), (w, w), interpolation=cv2.INTER_CUBIC)
    img = cv2.copyMakeBorder(img, (h - w) // 2, h - w - (h - w) // 2, 0, 0, cv2.BORDER_REPLICATE)
    path = tmp_path_factory.mktemp("large") / "phone_portrait.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


def speech(shared_data, seconds: float, sr: int = 16000) -> np.ndarray:
    """Real speech to ``seconds``: jfk.flac and beckett.wav alternated (mono, 16 kHz), float32 ``[1, N]``."""
    from portraittalk.ptalk_models.media import read_audio

    parts = []
    for name in ("jfk.flac", "beckett.wav"):
        wav, rate = read_audio(shared_data / "audio" / name)
        parts.append(soxr.resample(wav.mean(0), rate, sr).astype(np.float32))
    reps = int(np.ceil(seconds * sr / sum(map(len, parts))))
    return np.concatenate(parts * reps)[None, : int(seconds * sr)]


#: Runs its arguments as a child and prints the child's peak RSS (KiB). Linux keeps a process's peak RSS across
#: fork and exec (``ru_maxrss`` starts at the forking process's RSS), so a job forked straight from this pytest
#: process — GBs after the suite's earlier tests — would report at least that; forked from this small launcher
#: it reports its own.
_PEAK_RSS_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
                      "_, st, ru = os.wait4(p.pid, 0); print(ru.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(st))")


def run_workflow_process(workflow: Path, image: Path, audio: Path, out: Path) -> tuple[int, str, float]:
    """scripts/run_workflow.py in a child process: (exit status, stderr, its peak RSS in GB)."""
    cmd = [sys.executable, "-c", _PEAK_RSS_LAUNCHER, sys.executable, str(REPO / "scripts" / "run_workflow.py"),
           str(workflow), "--image", str(image), "--audio", str(audio), "--out", str(out)]
    err_path = out.with_suffix(".stderr")
    with open(err_path, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    return proc.returncode, err_path.read_text(), int(proc.stdout.split()[-1]) * 1024 / 1e9


def _video_stream(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return v.codec_context.width, v.codec_context.height, v.frames


# ------------------------------------------------------------------------------- bounded memory, streamed
def test_streamed_graph_on_a_large_photo_stays_under_the_bound(shared_data, large_photo, tmp_path):
    """The streamed default graph on the 970x2204 portrait: peak RSS of the whole ComfyUI process under 2.5 GB
    with a minute of speech, and within 0.2 GB of the 10 s run (the 10-minute figure: bench/bench_memory.py)."""
    from portraittalk.ptalk_models.media import write_wav

    rss = {}
    for seconds in (10, 60):
        wav = write_wav(tmp_path / f"speech{seconds}.wav", speech(shared_data, seconds)[0], 16000)
        code, err, rss[seconds] = run_workflow_process(STREAMED_WORKFLOW, large_photo, wav, tmp_path / "out.mp4")
        assert code == 0, err[-3000:]
        w, h, frames = _video_stream(tmp_path / "out.mp4")
        assert (w, h) == LARGE and abs(frames - 25 * seconds) <= 1
    assert rss[60] < BOUND_GB, rss
    assert rss[60] - rss[10] < 0.2, rss


def test_only_the_face_crop_is_rendered_and_the_encoder_composites_it(shared_data, large_photo, tmp_path):
    """On the large photo every streamed frame is the photo plus a face-crop patch (a small part of the photo);
    composited they equal the full-frame renderer's frames bit for bit, and the mp4 write_mp4 makes from them
    (YUV compositing) matches the one made from full RGB frames."""
    from portraittalk.ptalk_models.audio2landmarks import generate_landmarks
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import PatchedFrame, iter_video, read_image, write_mp4
    from portraittalk.ptalk_models.render import WarpRenderer, iter_render

    img = read_image(large_photo)
    ref = detect_landmarks(img)
    seq = generate_landmarks(speech(shared_data, 2.0), 16000, ref, fps=25.0, seed=0)
    seq = seq.with_points(seq.points, present=np.arange(len(seq)) != 5)  # one faceless frame: the photo itself
    r = WarpRenderer(img, ref)
    patched = list(iter_render(r, seq, even_size=True, patches=True))
    full = list(iter_render(r, seq, even_size=True))
    assert all(isinstance(f, PatchedFrame) and f.background is patched[0].background for f in patched)
    area = max(f.patch.shape[0] * f.patch.shape[1] for f in patched)
    assert 0 < area < 0.1 * img.shape[0] * img.shape[1]                       # the face crop, not the photo
    assert patched[5].patch.size == 0
    for p, f in zip(patched, full):
        assert np.array_equal(np.asarray(p), f)
    del full
    write_mp4(tmp_path / "patched.mp4", patched, 25.0, *LARGE, crf=19, preset="medium")
    write_mp4(tmp_path / "full.mp4", (np.asarray(p) for p in patched), 25.0, *LARGE, crf=19, preset="medium")
    n, sse = 0, 0.0
    for (a, _), (b, _) in zip(iter_video(tmp_path / "patched.mp4"), iter_video(tmp_path / "full.mp4")):
        assert a.shape == b.shape == (LARGE[1], LARGE[0], 3)
        sse += float(np.sum((a.astype(np.int32) - b.astype(np.int32)) ** 2))
        n += 1
    assert n == len(seq)
    psnr = 10 * np.log10(255 ** 2 / (sse / (n * a.size)))
    assert psnr > 40, psnr   # two encodings of the same frames (the RGB→YUV conversions differ by 1 level)


def test_yuv_compositing_equals_converting_the_whole_frame(astronaut, grid_still):
    """write_mp4's compositor (the photo converted to I420 once, each patch widened to even coordinates and
    converted alone) gives exactly the I420 of the composited RGB frame, wherever the patch lies (odd offsets and
    sizes, image edges, empty), and puts the background back where the previous patch was."""
    from portraittalk.ptalk_models.media import PatchedFrame, _I420Compositor

    comp = _I420Compositor()
    for x, y, w, h in ((3, 5, 31, 17), (0, 0, 512, 512), (10, 11, 1, 1), (511, 511, 1, 1), (200, 301, 211, 97),
                       (0, 0, 0, 0)):
        f = PatchedFrame(astronaut, np.ascontiguousarray(grid_still[:h, :w]), x, y)
        assert np.array_equal(comp.frame(f), cv2.cvtColor(np.asarray(f), cv2.COLOR_RGB2YUV_I420)), (x, y, w, h)


# ------------------------------------------------------------------------------------------ pre-flight
def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


def _audio(wav, sr):
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None], "sample_rate": sr}


def _landmarks(comfy, image_u8: np.ndarray, wav, sr):
    """Face Landmarks + Audio → Landmarks nodes on a real photo and speech: (photo IMAGE, reference, sequence)."""
    image = torch.from_numpy(image_u8)[None].float() / 255
    ref = _node(comfy, "PTalkFaceLandmarks").execute(image, "auto", "largest", 0, "error", 0.0, 0.5)[0]
    seq = _node(comfy, "PTalkAudioToLandmarks").execute(_audio(wav, sr), ref, BACKEND, 25.0, 0, 1.0, True, True)[0]
    return image, ref, seq


def test_warp_render_batch_preflight_on_ten_minutes_of_a_large_photo(comfy, shared_data, large_photo):
    """Ten minutes of landmarks (a real 10 s sequence repeated) on the 970x2204 photo would be a 385 GB IMAGE batch:
    Landmark Warp Render says so, names the streamed node and allocates nothing."""
    from portraittalk.ptalk_models.media import read_image

    image, ref, seq = _landmarks(comfy, read_image(large_photo), speech(shared_data, 10.0), 16000)
    ten_min = seq.with_points(np.tile(seq.points, (60, 1, 1)))
    assert len(ten_min) == 15000
    gb = (15000 * LARGE[0] * LARGE[1] * 3 * 4 + LARGE[0] * LARGE[1] * 3 * 5) / 1e9
    with pytest.raises(ValueError) as e:
        _node(comfy, "PTalkLandmarkWarpRender").execute(image, ten_min, "cavity_and_teeth", True,
                                                        reference_landmarks=ref)
    msg = str(e.value)
    assert msg.startswith("[PortraitTalk · Landmark Warp Render] input 'landmarks'"), msg
    assert f"{gb:.1f} GB" in msg and "15000 frames of 970x2204" in msg
    assert "Landmark Warp Render → Video" in msg and "Save Video" in msg


def test_batch_graph_stops_with_the_preflight_error_not_an_oom_kill(shared_data, large_photo, tmp_path):
    """The IMAGE-batch graph with 3 minutes of speech on the 970x2204 photo (a 115 GB batch): the run ends with
    the node's message (exit 1), not killed, and without ever holding much memory."""
    from portraittalk.ptalk_models.media import write_wav

    wav = write_wav(tmp_path / "speech180.wav", speech(shared_data, 180.0)[0], 16000)
    code, err, rss = run_workflow_process(BATCH_WORKFLOW, large_photo, wav, tmp_path / "out.mp4")
    assert code == 1, (code, err[-3000:])
    assert "Landmark Warp Render" in err and "input 'landmarks'" in err and "Landmark Warp Render → Video" in err
    assert "4500 frames of 970x2204" in err and "GB" in err
    assert rss < BOUND_GB, rss


def test_warp_render_batch_fits_or_stops_by_the_available_memory(comfy, astronaut, jfk, monkeypatch):
    """jfk.flac on the 512x512 astronaut is a 0.87 GB batch: with 0.5 GB available the node stops (naming both
    figures), with plenty it renders — frames bit-identical to the engine's render_sequence and to the streamed
    node's VIDEO components."""
    from portraittalk.ptalk_models.render import render_sequence

    image, ref, seq = _landmarks(comfy, astronaut, *jfk)
    node = _node(comfy, "PTalkLandmarkWarpRender")
    monkeypatch.setenv("PTALK_MEMORY_AVAILABLE_GB", "0.5")
    with pytest.raises(ValueError, match=r"Landmark Warp Render\] input 'landmarks': The IMAGE batch of 275 frames "
                                         r"of 512x512 .* needs 0\.9 GB, but only 0\.5 GB"):
        node.execute(image, seq, "cavity_and_teeth", True, reference_landmarks=ref)
    monkeypatch.setenv("PTALK_MEMORY_AVAILABLE_GB", "64")
    part = seq.frames(0, 40)
    (out,) = node.execute(image, part, "cavity_and_teeth", True, reference_landmarks=ref).args
    want = torch.from_numpy(render_sequence(astronaut, ref, part, even_size=True)).float().div_(255.0)
    assert out.dtype == torch.float32 and torch.equal(out, want)
    # the streamed node's VIDEO, when a consumer asks for its components, gives the same IMAGE batch
    (video,) = _node(comfy, "PTalkLandmarkWarpRenderVideo").execute(image, part, "cavity_and_teeth", True,
                                                                     reference_landmarks=ref).args
    assert torch.equal(video.get_components().images, want)


def test_other_batch_nodes_preflight(comfy, shared_data, grid_still, monkeypatch):
    """Dub Render, Draw Landmarks and Contour Guide check their batch against the available memory too."""
    from portraittalk.ptalk_models.media import read_audio, read_video

    frames, fps = read_video(shared_data / "video" / "lbax4n.mpg")
    images = torch.from_numpy(frames).float().div(255.0)
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    lm = m["PTalkFaceLandmarks"].execute(images, "auto", "largest", 0, "keep", fps, 0.5).result[0]
    plan, dub, aligned, _ = m["PTalkDubLandmarks"].execute(lm, _audio(*read_audio(shared_data / "audio" /
                                                                             "jfk.flac")),
                                                           "ping-pong", 1.0, True, 1.0, BACKEND, "").result
    monkeypatch.setenv("PTALK_MEMORY_AVAILABLE_GB", "0.05")
    with pytest.raises(ValueError, match=r"Dub Render\] input 'plan': The dubbed IMAGE batch of 275 frames of "
                                         r"360x288 .* needs 0\.4 GB.*Dub Video \(streamed\)"):
        m["PTalkDubRender"].execute(images, plan, 0.25, True)
    with pytest.raises(ValueError, match=r"Draw Landmarks\] input 'landmarks': Drawing 275 frames of 360x288"):
        m["PTalkDrawLandmarks"].execute(dub, "controlnet", 0)
    with pytest.raises(ValueError, match=r"Contour Guide\] input 'images': Outlining 75 frames of 360x288"):
        m["PTalkContourGuide"].execute(images, 128, 0.06, 0, True, "this frame", "empty", landmarks=lm)
    monkeypatch.setenv("PTALK_MEMORY_AVAILABLE_GB", "64")
    out = m["PTalkDubRender"].execute(images, plan, 0.25, True).result[0]
    assert tuple(out.shape) == (275, 288, 360, 3) and out.dtype == torch.float32
    drawn = m["PTalkDrawLandmarks"].execute(dub.frames(0, 3), "controlnet", 0).result[0]
    assert tuple(drawn.shape) == (3, 288, 360, 3)


# ------------------------------------------------------------------------------------------- dubbing
def _dub_video(comfy, path, audio, policy):
    from comfy_api.latest import InputImpl

    node = _node(comfy, "PTalkDubVideo")
    return node.execute(InputImpl.VideoFromFile(str(path)), _audio(*audio), "largest", 0, policy, 1.0, True, 1.0,
                        BACKEND, 0.25, True, "").result


def _upper_face_motion(frames: np.ndarray, clip_frames: int) -> dict:
    """MediaPipe on the output frames; the dubbing's STABLE_POINTS (eye corners, nose bridge, forehead, temples):
    per-point standard deviation over time (mean over points) and the largest frame-to-frame step (mean over
    points), inside the clip and after its end, in inter-ocular distances."""
    from portraittalk.ptalk_models.dubbing import STABLE_POINTS
    from portraittalk.ptalk_models.face import detect_landmarks

    lm = detect_landmarks(frames, on_missing="keep")
    assert lm.present.all()
    px = lm.pixels()
    iod = float(np.median(np.linalg.norm(px[:, 33] - px[:, 263], axis=1)))
    pts = px[:, list(STABLE_POINTS)] / iod
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=2).mean(1)
    return {"clip_std": float(pts[:clip_frames].std(0).mean()), "tail_std": float(pts[clip_frames:].std(0).mean()),
            "clip_step": float(steps[:clip_frames - 1].max()), "tail_step": float(steps[clip_frames - 1:].max())}


def test_dubbing_default_keeps_the_head_moving_after_the_clip(comfy, shared_data):
    """GRID lbax4n (3 s, 75 frames) dubbed with jfk.flac (11 s, 275 frames) under Dub Video's default length
    policy: after the clip's end the upper face moves as much as inside the clip (measured when written: 0.0145
    vs 0.0141 IOD) and never jumps more than the clip itself does; ``hold`` freezes it (0.0036)."""
    from portraittalk.ptalk_models.dubbing import DEFAULT_LENGTH_POLICY
    from portraittalk.ptalk_models.media import read_audio

    schema = _node(comfy, "PTalkDubVideo").define_schema()
    default = next(i for i in schema.inputs if i.id == "length_policy").default
    assert default == DEFAULT_LENGTH_POLICY == "ping-pong"
    path = shared_data / "video" / "lbax4n.mpg"
    audio = read_audio(shared_data / "audio" / "jfk.flac")
    got = {}
    for policy in (default, "hold"):
        video, _, dub, _ = _dub_video(comfy, path, audio, policy)
        assert video.get_frame_count() == 275
        frames = (video.get_components().images.numpy() * 255.0 + 0.5).astype(np.uint8)
        got[policy] = _upper_face_motion(frames, 75)
    alive, frozen = got[default], got["hold"]
    assert alive["tail_std"] > 0.6 * alive["clip_std"], got
    assert alive["tail_step"] < 1.5 * alive["clip_step"], got       # no seam: motion reverses, it never jumps
    assert frozen["tail_std"] < 0.5 * alive["tail_std"], got


def test_ping_pong_frames_within_a_bounded_buffer(shared_data):
    """frames_at over a real clip played ping-pong: with a buffer of 8 frames (the window mode long / HD clips
    get) the frames are the same as holding the whole clip."""
    from portraittalk.ptalk_models.dubbing import apply_length_policy
    from portraittalk.ptalk_models.media import frames_at, video_info

    path = shared_data / "video" / "lbax4n.mpg"
    w, h = video_info(path)[:2]
    idx = apply_length_policy(75, 275, "ping-pong")
    held = list(frames_at(path, idx))
    windowed = frames_at(path, idx, max_buffer_bytes=8 * w * h * 3)
    for k, (a, b) in enumerate(zip(held, windowed)):
        assert np.array_equal(a, b), k
    assert k == len(idx) - 1
