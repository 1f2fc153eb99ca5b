"""Reliability under bad input, through a REAL ComfyUI server process driven over HTTP only (issue 15, part A).

One ComfyUI server per module (``ptalk_harness.server.start``: ``--cpu``, loopback, this pack in
``custom_nodes``; ComfyUI 0.33 with ``PTALK_COMFYUI_DIR``, else the 0.3.75 of the venv), spoken to like a client:
``/upload/image`` for every file, ``/prompt``, ``/history/<id>``, ``/view``, ``/system_stats``. The prompts are the
SHIPPED workflows converted as the frontend does (``harness.workflow_to_prompt``), with only the file widgets (and
where a case needs it one widget) changed:

* ``workflows/talking_photo.json`` (Load Image + Load Audio → Face Landmarks → Audio → Landmarks → Landmark Warp
  Render → Video → Save Video) for images, audio and the audio→motion weights;
* ``workflows/dubbing_long.json`` (Load Video + Load Audio → Dub Video (streamed) → Save Video) for videos;
* the IdentityNet / AnimateNet Loader nodes of ``workflows/talking_photo_diffusion.json`` into core Preview Any for
  pickled weights.

The bad inputs are generated into a temporary folder at test time (``ptalk_harness.bad_media``) from the shared
real media (``../shared/data``): nothing is committed. Each case ends either

* in a clear error: the history's ``execution_error`` is raised by OUR node (its class in ``node_type``), its
  message is ``[PortraitTalk · <node>] input '<input>': <what is wrong> <how to fix it>`` (no traceback text, no
  raw numpy/torch/FFmpeg exception), or
* in a correct result where the input is merely unusual: Save Video's mp4, fetched through ``/view`` and decoded
  with PyAV, has the right frame count (= round(speech seconds × fps)), size and frame rate;

and after every case ``GET /system_stats`` still answers. The same good talking-photo and dubbing jobs run first
on the fresh server, again in the middle and at the end of the module: their decoded frames must be bit-equal.

The matrix (case id: input → expected):

images (talking_photo.json, 2 s of jfk.flac): ``no_face`` (error), ``six_faces`` (astronaut and the GRID still
tiled 3×2: result, the largest face), ``face_112`` (the astronaut at 112×112: result), ``profile`` (no profile photo
exists in the shared data: the astronaut squashed horizontally to 35 % of its width, a narrow strongly-yawed-looking
face: result or error, whichever, but clear), ``rgba``, ``grayscale`` (results), ``one_pixel`` (error), ``8k``
(8192×8192 JPEG: result, 0.4 s of speech), ``jpeg_as_png`` (result), ``truncated_png`` (error);

audio (talking_photo.json, the astronaut): ``silent``, ``white_noise``, ``8khz``, ``48khz_stereo``, ``0.1s``,
``10min`` (beckett.wav repeated to 600 s on the GRID still: 15000 frames), ``clipped``, ``flac_as_wav``,
``truncated_wav`` (results; the truncated file's decodable part), ``nan_inf`` (32-bit float WAV with NaN and Inf
samples: a result, those samples silent);

video (dubbing_long.json, 2 s of beckett.wav): ``no_video_stream`` (error), ``one_frame``, ``vfr``, ``rotated``
(rotation metadata 90°), ``hevc_10bit`` (libx265 yuv420p10le), ``faceless_stretch`` (one second of black frames
in the middle: they pass through unchanged), results;

weights: ``a2m_corrupt``, ``a2m_truncated``, ``a2m_wrong_arch`` (files in ``models/audio2motion`` chosen as
Audio → Landmarks' ``neural_model``), ``identitynet_pickle`` / ``animatenet_pickle`` (a ``.pt`` whose unpickling
would ``touch`` a marker file: an error, and the marker must not exist), ``identitynet_truncated``: errors;

graph: ``wrong_socket`` (Load Audio's AUDIO into Face Landmarks' ``image``): ``POST /prompt`` answers 400 with
``node_errors`` naming our node.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import ptalk_harness as harness
from ptalk_harness import bad_media as bm
from ptalk_harness import server as cs

pytestmark = pytest.mark.reliability

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO_ROOT / "workflows"
A2L, FACE, RENDER, DUB = "PTalkAudioToLandmarks", "PTalkFaceLandmarks", "PTalkLandmarkWarpRenderVideo", "PTalkDubVideo"
DISPLAY = {A2L: "Audio → Landmarks", FACE: "Face Landmarks", RENDER: "Landmark Warp Render → Video",
           DUB: "Dub Video", "PTalkIdentityNetLoader": "IdentityNet Loader",
           "PTalkAnimateNetLoader": "AnimateNet Loader"}
#: exception text that must never be what the user reads (raw library errors, tracebacks)
RAW = ("Traceback", "File \"", "numpy.", "torch.", "RuntimeError:", "IndexError", "KeyError", "AttributeError",
       "ZeroDivisionError", "cv2.error", "av.error", "index out of range", "out of bounds", "NoneType")
SPEECH_S = 2.0
TIMINGS: list[tuple[str, float, str]] = []


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def prompts(comfy):
    """API prompts of the shipped workflows (converted once with the in-process ComfyUI's node schemas)."""
    out = {name: harness.workflow_to_prompt(harness.load_workflow(WORKFLOWS / f"{name}.json"))
           for name in ("talking_photo", "dubbing_long")}
    diff = harness.workflow_to_prompt(harness.load_workflow(WORKFLOWS / "talking_photo_diffusion.json"))
    out["loaders"] = {k: v for k, v in diff.items()
                      if v["class_type"] in ("PTalkIdentityNetLoader", "PTalkAnimateNetLoader")}
    return out


@pytest.fixture(scope="module")
def media(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Every input of the matrix, generated into a temporary folder (about 10 s)."""
    d = tmp_path_factory.mktemp("bad_media")
    ast = bm.read_rgb(shared_data / "photos" / "astronaut.png")
    grid = bm.read_rgb(shared_data / "photos" / "grid_still_lbax4n.png")
    jfk, jsr = bm.read_audio(shared_data / "audio" / "jfk.flac")
    bec, bsr = bm.read_audio(shared_data / "audio" / "beckett.wav")
    speech = bm.audio_clip(jfk, jsr, SPEECH_S, 0.3)
    m: dict[str, Path] = {}
    m["astronaut"] = bm.save_image(d / "astronaut.png", ast)
    m["grid_still"] = bm.save_image(d / "grid_still.png", grid)
    m["speech"] = bm.write_wav(d / "speech.wav", speech, jsr)
    m["speech_short"] = bm.write_wav(d / "speech_short.wav", bm.audio_clip(jfk, jsr, 0.4, 0.5), jsr)
    m["dub_speech"] = bm.write_wav(d / "dub_speech.wav", bm.audio_clip(bec, bsr, SPEECH_S, 0.2), bsr)
    # images
    m["no_face"] = bm.no_face(d / "no_face.png")
    m["six_faces"] = bm.tile_faces(d / "six_faces.png", [ast, grid, ast[:, ::-1], grid[:, ::-1], ast, grid])
    m["face_112"] = bm.resized(d / "face_112.png", ast, 112, 112)
    m["profile"] = bm.squash_face(d / "profile.png", ast, 0.35)
    m["rgba"] = bm.rgba(d / "rgba.png", ast)
    m["grayscale"] = bm.grayscale(d / "grayscale.png", ast)
    m["one_pixel"] = bm.one_pixel(d / "one_pixel.png")
    m["8k"] = bm.huge(d / "huge_8k.jpg", ast, 8192)
    m["jpeg_as_png"] = bm.jpeg_named_png(d / "really_jpeg.png", ast)
    m["truncated_png"] = bm.truncated(d / "truncated.png", ast, 0.4)
    # audio
    m["silent"] = bm.silence(d / "silent.wav", SPEECH_S)
    m["white_noise"] = bm.white_noise(d / "white_noise.wav", SPEECH_S)
    m["8khz"] = bm.write_wav(d / "speech_8k.wav", bm.resample(speech[:1], jsr, 8000), 8000)
    m["48khz_stereo"] = bm.write_wav(d / "speech_48k.wav", bm.resample(speech, jsr, 48000), 48000)
    m["0.1s"] = bm.write_wav(d / "tenth.wav", bm.audio_clip(jfk, jsr, 0.1, 1.0), jsr)
    m["10min"] = bm.write_wav(d / "ten_minutes.wav", bm.repeat_to(bec, bsr, 600.0), bsr)
    nan = speech[:1].copy()
    nan[0, 1000:1100] = np.nan
    nan[0, 5000:5010] = np.inf
    nan[0, 7000:7010] = -np.inf
    m["nan_inf"] = bm.write_float_wav(d / "nan_inf.wav", nan, jsr)
    m["clipped"] = bm.write_wav(d / "clipped.wav", bm.clipped(speech), jsr)
    m["flac_as_wav"] = bm.flac_named_wav(d / "really_flac.wav", speech, jsr)
    full = bm.write_wav(d / "full.wav", bm.audio_clip(jfk, jsr, 2 * SPEECH_S, 0.3), jsr)
    m["truncated_wav"] = bm.truncated_file(d / "truncated.wav", full.read_bytes(), 0.5)
    # video
    src, fps = bm.video_frames(shared_data / "grid_s1" / "bbaf2n.mp4")
    m["dub_good"] = bm.write_video(d / "dub_good.mp4", src, fps)
    m["no_video_stream"] = bm.audio_only_mp4(d / "audio_only.mp4", speech, jsr)
    m["one_frame"] = bm.write_video(d / "one_frame.mp4", src[:1], fps)
    rng = np.random.default_rng(0)
    times = np.cumsum(np.r_[0.0, rng.choice([0.02, 0.04, 0.06], len(src) - 1)])
    m["vfr"] = bm.write_video(d / "vfr.mp4", src, fps, times=times)
    # stored on its side (turned 90° counter-clockwise), with the display matrix of a phone clip that players turn
    # 90° clockwise: shown upright
    m["rotated"] = bm.set_mp4_rotation(bm.write_video(d / "rotated.mp4", np.rot90(src, 1, axes=(1, 2)), fps), 90)
    assert bm.mp4_rotation(m["rotated"]) == 90
    black = src.copy()
    black[15:35] = 0
    m["faceless_stretch"] = bm.write_video(d / "faceless.mp4", black, fps)
    import av

    if "libx265" in av.codecs_available:
        m["hevc_10bit"] = bm.write_video(d / "hevc10.mp4", src, fps, codec="libx265", pix_fmt="yuv420p10le",
                                         options={"x265-params": "log-level=error"})
    return m


def _bad_weights(models: Path, marker: Path) -> None:
    """The weight files of the matrix, written into the server's models folder before it starts."""
    from safetensors.torch import save_file
    import torch

    a2m = models / "audio2motion"
    a2m.mkdir(parents=True, exist_ok=True)
    bm.corrupt_bytes(a2m / "corrupt.safetensors")
    real = REPO_ROOT / "ptalk_models" / "weights" / "audio2motion_logmel.safetensors"
    bm.truncated_file(a2m / "truncated.safetensors", real.read_bytes(), 0.5)
    save_file({"conv.weight": torch.zeros(8, 4, 3), "conv.bias": torch.zeros(8)}, str(a2m / "wrong_arch.safetensors"),
              metadata={"format": "somebody-elses-model"})
    pt = models / "portraittalk"
    pt.mkdir(parents=True, exist_ok=True)
    bm.malicious_pickle(pt / "evil.pt", marker)
    bm.malicious_pickle(pt / "evil_anim.pth", marker)
    bm.truncated_file(pt / "truncated.safetensors", real.read_bytes(), 0.3)


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    """The ComfyUI server process of the module (bad weights already in its models folder)."""
    base = tmp_path_factory.mktemp("server")
    marker = base / bm.MARKER_NAME
    _bad_weights(base / "models", marker)
    t0 = time.monotonic()
    srv = cs.start(base_dir=base, required_nodes=[FACE, A2L, RENDER, DUB])
    srv.marker = marker
    TIMINGS.append(("server start", time.monotonic() - t0, ""))
    try:
        yield srv
    finally:
        cs.stop(srv)
        print(f"\n[reliability] server log: {srv.log_path}")
        for name, secs, note in TIMINGS:
            print(f"[reliability] {name:28s} {secs:6.1f} s  {note}")


# ------------------------------------------------------------------------------------------------ running
_uploads: dict[Path, str] = {}
_counter = [0]


def _upload(srv, path: Path, fresh: bool = False) -> str:
    """Upload ``path`` (once; ``fresh``: under a new name, so that ComfyUI re-runs what depends on it)."""
    if fresh:
        _counter[0] += 1
        return cs.upload_file(srv, path, name=f"r{_counter[0]}_{path.name}")
    if path not in _uploads:
        _uploads[path] = cs.upload_file(srv, path)
    return _uploads[path]


def _prefix(p: dict, value: str) -> None:
    for node in p.values():
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = value


def _node(p: dict, class_type: str) -> dict:
    return next(n for n in p.values() if n["class_type"] == class_type)


def talking_prompt(prompts, srv, image: Path, audio: Path, case: str, fresh=False, **a2l) -> dict:
    p = copy.deepcopy(prompts["talking_photo"])
    _node(p, "LoadImage")["inputs"]["image"] = _upload(srv, image, fresh)
    _node(p, "LoadAudio")["inputs"]["audio"] = _upload(srv, audio, fresh)
    _node(p, A2L)["inputs"].update(a2l)
    _prefix(p, f"reliability/{case}")
    return p


def dub_prompt(prompts, srv, video: Path, audio: Path, case: str, fresh=False) -> dict:
    p = copy.deepcopy(prompts["dubbing_long"])
    _node(p, "LoadVideo")["inputs"]["file"] = _upload(srv, video, fresh)
    _node(p, "LoadAudio")["inputs"]["audio"] = _upload(srv, audio, fresh)
    _prefix(p, f"reliability/{case}")
    return p


def run(srv, prompt: dict, case: str, timeout: float = 300.0) -> dict:
    t0 = time.monotonic()
    entry = cs.wait_history(srv, cs.queue_prompt(srv, prompt), timeout=timeout)
    err = cs.execution_error(entry)
    TIMINGS.append((case, time.monotonic() - t0, "error" if err else "ok"))
    return entry


def assert_alive(srv) -> None:
    assert srv.alive(), f"the server died:\n{srv.log_tail()}"
    stats = cs.get_json(srv, "/system_stats", timeout=10)
    assert "system" in stats and "devices" in stats


def assert_node_error(entry: dict, node_class: str, input_name: str, hints: tuple[str, ...]) -> str:
    """The prompt failed in OUR node ``node_class`` with the pack's message naming ``input_name`` and a fix (one
    of ``hints``, case-insensitive); returns the message."""
    err = cs.execution_error(entry)
    assert err is not None, f"expected an error from {node_class}, the prompt succeeded: {entry.get('outputs')}"
    msg = str(err.get("exception_message", ""))
    where = f"{err.get('node_type')} ({err.get('exception_type')}): {msg}"
    assert err.get("node_type") == node_class, f"the error came from another node: {where}"
    assert str(err.get("exception_type", "")).endswith("NodeInputError"), f"not the pack's input error: {where}"
    assert msg.startswith(f"[PortraitTalk · {DISPLAY[node_class]}] input '{input_name}':"), where
    assert not any(r in msg for r in RAW), f"raw library text in the message: {where}"
    assert any(h.lower() in msg.lower() for h in hints), f"no fix hint ({hints}) in: {msg}"
    return msg


def fetch_video(srv, entry: dict, dest: Path) -> Path:
    err = cs.execution_error(entry)
    assert err is None, f"{err and err.get('node_type')}: {err and err.get('exception_message')}\n" \
                        f"{err and ''.join(err.get('traceback', []))[-2000:]}"
    files = [f for f in cs.output_entries(entry) if f["filename"].endswith(".mp4")]
    assert len(files) == 1, entry.get("outputs")
    dest.mkdir(parents=True, exist_ok=True)
    return cs.fetch_output(srv, files[0], dest)


def decode(path: Path, keep: bool = True) -> tuple[np.ndarray | int, float, tuple[int, int], float]:
    """(frames ``[T, H, W, 3]`` or, with ``keep=False``, their count; fps; (width, height); audio seconds)."""
    import av

    frames, n = [], 0
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = float(v.average_rate)
        size = (v.codec_context.width, v.codec_context.height)
        for f in c.decode(v):
            n += 1
            if keep:
                frames.append(f.to_ndarray(format="rgb24"))
        a = c.streams.audio
        audio_s = float(a[0].duration * a[0].time_base) if a and a[0].duration else 0.0
    return (np.stack(frames) if keep else n), fps, size, audio_s


def frames_for(seconds: float, fps: float) -> int:
    """The frame count of ``seconds`` of speech at ``fps``: ``max(1, round_half_up(seconds × fps))`` (Audio →
    Landmarks, and Dub Video's output length)."""
    return max(1, int(np.floor(seconds * fps + 0.5)))


def audio_seconds(path: Path) -> float:
    wav, sr = bm.read_audio(path)
    return wav.shape[-1] / sr


def assert_video(srv, entry, tmp_path, n_frames: int, fps: float, size=None, keep=True, speech_s=None):
    """Save Video's mp4 decodes to ``n_frames`` frames at ``fps`` (of ``size``), its soundtrack the speech trimmed
    to the video; returns the frames (or their count with ``keep=False``)."""
    out = fetch_video(srv, entry, tmp_path)
    frames, got_fps, got_size, audio_s = decode(out, keep)
    n = len(frames) if keep else frames
    assert abs(got_fps - fps) < 1e-3, (got_fps, fps)
    assert n == n_frames, f"{n} frames, expected {n_frames}"
    if size is not None:
        assert got_size == size, (got_size, size)
    if speech_s is not None:
        want = min(speech_s, n / fps)
        assert want - 0.05 < audio_s < want + 0.08, f"soundtrack {audio_s:.3f} s, expected {want:.3f} s"
    return frames


# ------------------------------------------------------------------------------------------------ baseline
_BASELINE: dict[str, np.ndarray] = {}


def good_jobs(prompts, srv, media, tmp_path, tag: str) -> dict[str, np.ndarray]:
    """The good talking-photo and dubbing jobs (uploaded under fresh names so that nothing is served from
    ComfyUI's cache): their decoded frames."""
    tp = run(srv, talking_prompt(prompts, srv, media["astronaut"], media["speech"], f"good_tp_{tag}", fresh=True),
             f"good talking photo ({tag})")
    dub = run(srv, dub_prompt(prompts, srv, media["dub_good"], media["dub_speech"], f"good_dub_{tag}", fresh=True),
              f"good dub ({tag})")
    n_tp = frames_for(audio_seconds(media["speech"]), 25)
    n_dub = frames_for(audio_seconds(media["dub_speech"]), 25)
    return {"talking_photo": assert_video(srv, tp, tmp_path / "tp", n_tp, 25.0, (512, 512)),
            "dub": assert_video(srv, dub, tmp_path / "dub", n_dub, 25.0, (360, 288))}


def test_good_jobs_on_fresh_server(prompts, server, media, tmp_path):
    """The reference outputs, on the fresh server (first test of the module)."""
    _BASELINE.update(good_jobs(prompts, server, media, tmp_path, "fresh"))
    assert_alive(server)


def _assert_same_as_baseline(prompts, server, media, tmp_path, tag):
    if not _BASELINE:
        pytest.skip("the baseline run failed")
    again = good_jobs(prompts, server, media, tmp_path, tag)
    for k, frames in again.items():
        assert frames.shape == _BASELINE[k].shape, (k, frames.shape, _BASELINE[k].shape)
        diff = np.flatnonzero(np.any(frames != _BASELINE[k], axis=(1, 2, 3)))
        assert diff.size == 0, f"{k}: frames {diff.tolist()[:10]} differ from the fresh server's after the bad inputs"


# ------------------------------------------------------------------------------------------------ the matrix
@dataclass
class Case:
    id: str
    kind: str                      # "tp" (talking_photo.json) | "dub" (dubbing_long.json)
    input: str                     # media key of the bad input
    error: tuple | None = None     # (node class, input name, fix hints) for an expected error
    image: str = "astronaut"
    audio: str | None = None
    a2l: dict = field(default_factory=dict)
    check: Callable | None = None  # extra check of the decoded frames (frames, media) -> None
    keep_frames: bool = True
    timeout: float = 300.0
    note: str = ""


def _faceless_passthrough(frames, media):
    src, _ = bm.video_frames(media["faceless_stretch"])
    # output frame k shows source frame k (the speech is shorter than the video): the black stretch stays black,
    # the frames around it are the speaker's
    assert frames[15:35].max() <= 24, frames[15:35].max()
    assert frames[:15].mean() > 40 and frames[35:].mean() > 40
    assert np.abs(frames[:15].astype(int) - src[:15]).mean() < 8


def _upright(frames, media):
    h, w = frames.shape[1:3]
    assert (w, h) == (360, 288), f"the rotated clip must come out as shown (360x288 upright), got {w}x{h}"
    # the same dub as the upright clip's (the source was encoded twice: small differences only)
    if "dub" in _BASELINE:
        diff = np.abs(frames.astype(np.int16) - _BASELINE["dub"].astype(np.int16)).mean()
        assert diff < 4.0, f"mean difference {diff:.1f} to the upright clip's dub"


NO_FACE_HINTS = ("photo", "face", "clear")
CASES = [
    # ---- images through talking_photo.json
    Case("no_face", "tp", "image", error=(FACE, "image", ("clearer", "frontal"))),
    Case("six_faces", "tp", "image"),
    Case("face_112", "tp", "image"),
    Case("profile", "tp", "image", error=(FACE, "image", ("more frontal",)),
         note="astronaut squashed to 35 % width (no real profile photo in shared data)"),
    Case("rgba", "tp", "image"),
    Case("grayscale", "tp", "image"),
    Case("one_pixel", "tp", "image", error=(FACE, "image", ("larger",))),
    Case("8k", "tp", "image", audio="speech_short", keep_frames=False, timeout=600),
    Case("jpeg_as_png", "tp", "image"),
    # core Load Image reads what there is of a truncated file (Pillow's LOAD_TRUNCATED_IMAGES retry, the rows below
    # the cut grey); 40 % of the PNG holds the face: a video
    Case("truncated_png", "tp", "image"),
    # ---- audio through talking_photo.json
    Case("silent", "tp", "audio"),
    Case("white_noise", "tp", "audio"),
    Case("8khz", "tp", "audio"),
    Case("48khz_stereo", "tp", "audio"),
    Case("0.1s", "tp", "audio"),
    Case("10min", "tp", "audio", image="grid_still", keep_frames=False, timeout=900),
    # NaN/Inf samples are silence (ptalk_models.audio.prepare_audio, a documented fallback with a warning); the
    # soundtrack mutes them (FFmpeg's AAC encoder refused them: Save Video failed before)
    Case("nan_inf", "tp", "audio"),
    Case("clipped", "tp", "audio"),
    Case("flac_as_wav", "tp", "audio"),
    Case("truncated_wav", "tp", "audio"),
    # ---- videos through dubbing_long.json
    Case("no_video_stream", "dub", "video", error=(DUB, "video", ("no video stream", "picture track"))),
    Case("one_frame", "dub", "video"),
    Case("vfr", "dub", "video"),
    Case("rotated", "dub", "video", check=_upright),
    Case("hevc_10bit", "dub", "video"),
    Case("faceless_stretch", "dub", "video", check=_faceless_passthrough),
    # ---- weights chosen as Audio → Landmarks' neural_model
    Case("a2m_corrupt", "tp", "weights", a2l={"backend": "neural (log-mel VAE)", "neural_model": "corrupt.safetensors"},
         error=(A2L, "neural_model", ("choose another", "re-train", "copy it again"))),
    Case("a2m_truncated", "tp", "weights",
         a2l={"backend": "neural (log-mel VAE)", "neural_model": "truncated.safetensors"},
         error=(A2L, "neural_model", ("choose another", "re-train", "copy it again"))),
    Case("a2m_wrong_arch", "tp", "weights",
         a2l={"backend": "neural (log-mel VAE)", "neural_model": "wrong_arch.safetensors"},
         error=(A2L, "neural_model", ("choose another", "re-train"))),
]


FIRST = [c for c in CASES if c.kind == "tp" and not c.a2l]     # images and audio
SECOND = [c for c in CASES if c not in FIRST]                  # videos and weights


@pytest.mark.parametrize("case", FIRST, ids=[c.id for c in FIRST])
def test_bad_image_or_audio(case: Case, prompts, server, media, tmp_path):
    _run_case(case, prompts, server, media, tmp_path)


def test_same_output_midway(prompts, server, media, tmp_path):
    """Half-way through the bad inputs the good jobs' frames are still bit-equal to the fresh server's."""
    _assert_same_as_baseline(prompts, server, media, tmp_path, "midway")


@pytest.mark.parametrize("case", SECOND, ids=[c.id for c in SECOND])
def test_bad_video_or_weights(case: Case, prompts, server, media, tmp_path):
    _run_case(case, prompts, server, media, tmp_path)


def _run_case(case: Case, prompts, server, media, tmp_path):
    if case.input in ("image", "audio", "video") and case.id not in media:
        pytest.skip("PyAV here has no libx265 encoder: no 10-bit HEVC file can be made")
    if case.kind == "tp":
        image = media[case.id] if case.input == "image" else media[case.image]
        audio = media[case.id] if case.input == "audio" else media[case.audio or "speech"]
        prompt = talking_prompt(prompts, server, image, audio, case.id, **case.a2l)
        fps = float(_node(prompt, A2L)["inputs"]["fps"])
    else:
        video, audio = media[case.id], media["dub_speech"]
        prompt = dub_prompt(prompts, server, video, audio, case.id)
        fps = None if case.error else bm.video_frames(video, limit=1)[1]
    entry = run(server, prompt, case.id, timeout=case.timeout)
    try:
        if case.error:
            msg = assert_node_error(entry, *case.error)
            print(f"\n[reliability] {case.id}: {msg}")
        else:
            speech_s = audio_seconds(audio)
            n = frames_for(speech_s, fps)
            if case.kind == "tp":
                from PIL import Image

                with Image.open(image) as im:
                    size = (im.width - im.width % 2, im.height - im.height % 2)  # even_size on
            else:
                size = (360, 288)
            frames = assert_video(server, entry, tmp_path, n, fps, size, keep=case.keep_frames, speech_s=speech_s)
            if case.check:
                case.check(frames, media)
            print(f"\n[reliability] {case.id}: ok, {n} frames at {fps:g} fps")
    finally:
        assert_alive(server)


def test_pickled_weights_do_not_run_code(prompts, server):
    """A ``.pt`` / ``.pth`` whose unpickling would run ``touch <marker>``, chosen in IdentityNet Loader and
    AnimateNet Loader (each into core Preview Any): a clear error, and the code never runs."""
    for class_type, name in (("PTalkIdentityNetLoader", "portraittalk/evil.pt"),
                             ("PTalkAnimateNetLoader", "evil_anim.pth")):
        loader = next(v for v in prompts["loaders"].values() if v["class_type"] == class_type)
        loader = copy.deepcopy(loader)
        loader["inputs"]["weights"] = name
        prompt = {"1": loader, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
        entry = run(server, prompt, f"pickle {class_type}")
        msg = assert_node_error(entry, class_type, "weights", ("weights_only", "safetensors", "re-save", "tensors"))
        assert "pickle" in msg.lower(), msg  # said for what it is, not "truncated"
        print(f"\n[reliability] pickle ({class_type}): {msg}")
        assert not server.marker.exists(), "unpickling the weights ran code: the marker file exists"
        assert_alive(server)


def test_truncated_identitynet(prompts, server):
    loader = copy.deepcopy(next(v for v in prompts["loaders"].values()
                                if v["class_type"] == "PTalkIdentityNetLoader"))
    loader["inputs"]["weights"] = "portraittalk/truncated.safetensors"
    prompt = {"1": loader, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    entry = run(server, prompt, "truncated IdentityNet")
    msg = assert_node_error(entry, "PTalkIdentityNetLoader", "weights", ("copy it again", "download", "re-"))
    print(f"\n[reliability] truncated IdentityNet: {msg}")
    assert_alive(server)


def test_wrong_socket_type(prompts, server, media):
    """Load Audio's AUDIO wired into Face Landmarks' IMAGE input: ComfyUI's validation refuses the prompt (HTTP 400,
    node_errors naming our node); nothing runs."""
    p = talking_prompt(prompts, server, media["astronaut"], media["speech"], "wrong_socket")
    audio_id = next(k for k, v in p.items() if v["class_type"] == "LoadAudio")
    face_id = next(k for k, v in p.items() if v["class_type"] == FACE)
    p[face_id]["inputs"]["image"] = [audio_id, 0]
    with pytest.raises(cs.PromptRejectedError) as e:
        cs.queue_prompt(server, p)
    answer = e.value.response
    assert "HTTP 400" in str(e.value), str(e.value)
    errs = answer.get("node_errors") or {}
    assert face_id in errs and errs[face_id]["class_type"] == FACE, json.dumps(answer)[:1000]
    text = json.dumps(errs[face_id])
    assert "image" in text and ("AUDIO" in text or "mismatch" in text.lower()), text
    assert_alive(server)


def test_same_output_at_end(prompts, server, media, tmp_path):
    """After every bad input the good jobs' frames are bit-equal to the fresh server's."""
    _assert_same_as_baseline(prompts, server, media, tmp_path, "end")
