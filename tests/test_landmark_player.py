"""The in-node landmark player (web/landmark_player.js) in the REAL ComfyUI frontend: a ComfyUI server process
(``ptalk_harness.server``) and Chromium driven by Playwright (``ptalk_harness.frontend``).

Run for two frontends: the one the ComfyUI under test pins (``pinned``: comfyui-frontend-package 1.49.6 with
ComfyUI 0.33, 1.32.9 with 0.3.75) and the newest one (``latest``: comfyui-frontend-package 1.58.1, served with
``--front-end-root``) found at ``$PTALK_FRONTEND_ROOT`` or ``<venv>/frontend-latest/comfyui_frontend_package/static``
(what ``scripts/setup_env.sh`` installs); without it the ``latest`` tests skip (fail under CI). The newest frontend
needs ComfyUI's jobs API (``/api/jobs``, ComfyUI 0.33; 0.3.75 has none): on a ComfyUI without it they skip.

talking_photo.json queued with the UI's Run button on astronaut.png + jfk.flac:

* the player appears on Audio → Landmarks (and a one-frame mesh view on Face Landmarks), the graph's layout stays
  clean with the grown nodes (no overlap, every node inside its group), the preview files are in ComfyUI's temp
  folder only;
* its ``<audio>`` lasts as long as the speech (decoded with PyAV), to the sample;
* pressing play advances the frames (frame counter and canvas pixels change over time);
* scrubbing to a frame draws that frame's mouth opening: the filled mouth's area and its gap under the lip
  midpoints, measured in the canvas pixels, match the inner-lip polygon of the landmarks the node sent, and follow
  the engine's mouth-opening curve (``inner_lip_aperture``) from closed to the widest frame;
* the ▾/▸ toggle folds the player to its controls row (the node shrinks; the choice is kept in the node's
  properties) and unfolds it to the node's former height;
* where the API it needs is missing (a node without ``addDOMWidget``, no ``DecompressionStream``) the player is
  left out and nothing throws;
* no console error, no uncaught exception (``ptalk_harness.frontend.Events``).

Screenshots (the graph after the run, the player at the widest-open and a closed frame, while playing, folded) go
into each test's ``tmp_path`` (keep them with ``--basetemp``); ``-s`` prints the measurements.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from portraittalk.ptalk_models import preview as P
from portraittalk.ptalk_models.landmarks import LIPS_INNER, LOWER_LIP_INNER_MID, UPPER_LIP_INNER_MID
import ptalk_harness as harness
from ptalk_harness import frontend as fe
from ptalk_harness import server as cs

pytestmark = pytest.mark.frontend

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = REPO_ROOT / "workflows" / "talking_photo.json"
MEDIA = {"LoadImage": "photos/astronaut.png", "LoadAudio": "audio/jfk.flac"}
LATEST_VERSION = "1.58.1"  # scripts/setup_env.sh installs this one
#: the mouth opening's fill colour (web/landmark_player.js COLORS.mouth) and how far a pixel may be from it
MOUTH_RGB = (255, 0, 170)
MOUTH_TOLERANCE = 60


def latest_frontend_root() -> Path | None:
    """The static folder of the newest frontend: ``$PTALK_FRONTEND_ROOT`` or the one setup_env.sh installs."""
    env = os.environ.get("PTALK_FRONTEND_ROOT")
    root = Path(env) if env else Path(sys.prefix) / "frontend-latest" / "comfyui_frontend_package" / "static"
    return root if (root / "index.html").is_file() else None


def comfyui_has_jobs_api() -> bool:
    """Whether the ComfyUI under test serves ``/api/jobs`` (its ``server.py`` declares the route), which the newest
    frontend needs."""
    server = harness.find_comfyui_dir() / "server.py"
    return server.is_file() and '"/api/jobs"' in server.read_text(encoding="utf-8", errors="replace")


def _expected_version(kind: str, root: Path | None) -> str:
    if kind == "pinned":
        return importlib.metadata.version("comfyui-frontend-package")
    dist = sorted(root.parent.parent.glob("comfyui_frontend_package-*.dist-info"))
    return dist[-1].name[len("comfyui_frontend_package-"):-len(".dist-info")] if dist else LATEST_VERSION


@pytest.fixture(scope="module", params=["pinned", "latest"])
def frontend(request, tmp_path_factory, shared_data):
    """``(kind, server, expected frontend version, uploaded media names)``: a ComfyUI server serving the pinned
    or the newest frontend, with astronaut.png and jfk.flac uploaded."""
    kind = request.param
    extra, root = [], None
    if kind == "latest":
        if not comfyui_has_jobs_api():
            pytest.skip(f"frontend {LATEST_VERSION} reads the queue and history from /api/jobs, which this ComfyUI "
                        "does not serve (ComfyUI 0.3.75 has no jobs API; 0.33 has): the newest frontend is tested on "
                        "ComfyUI 0.33")
        root = latest_frontend_root()
        if root is None:
            msg = (f"no comfyui-frontend-package {LATEST_VERSION} to serve with --front-end-root: set "
                   f"PTALK_FRONTEND_ROOT to its comfyui_frontend_package/static folder, or run scripts/setup_env.sh "
                   f"(installs it into <venv>/frontend-latest)")
            if os.environ.get("CI"):
                pytest.fail(msg + " (CI must provide it)")
            pytest.skip(msg)
        extra = ["--front-end-root", str(root)]
    srv = cs.start(base_dir=tmp_path_factory.mktemp(f"server_{kind}"), settings=fe.SETTINGS, extra_args=extra,
                   required_nodes=["PTalkFaceLandmarks", "PTalkAudioToLandmarks"])
    if kind == "latest" and not _serves(srv, "/api/jobs?limit=1"):
        cs.stop(srv)
        pytest.skip(f"frontend {_expected_version(kind, root)} reads the queue and history from /api/jobs, which this "
                    f"ComfyUI ({srv.comfy_dir}) does not serve (ComfyUI 0.3.75 has no jobs API; 0.33 has): the newest "
                    f"frontend is tested on ComfyUI 0.33")
    try:
        files = {t: cs.upload_file(srv, shared_data / rel) for t, rel in MEDIA.items()}
        yield kind, srv, _expected_version(kind, root), files
    finally:
        cs.stop(srv)
        print(f"\n[player] {kind} server log: {srv.log_path}")


@pytest.fixture(scope="module")
def run(browser, frontend, shared_data, tmp_path_factory):
    """talking_photo.json queued from the UI of a fresh page: ``dict(page, events, kind, server, entry, payload,
    node ids, speech seconds, version, startup errors)``."""
    kind, srv, version, files = frontend
    ctx, page, ev = fe.open_page(browser, srv)
    startup = ev.unexpected_errors(startup=True)
    ev.clear()
    try:
        shown = ".".join(map(str, fe.page_frontend_version(page)))
        fe.load_graph(page, json.loads(WORKFLOW.read_text()))
        page.evaluate(fe.JS_SET_FILES, {"widgets": fe.FILE_WIDGETS, "files": files})
        temp_before = _files(srv.base_dir / "temp")
        t0 = time.monotonic()
        entry = cs.wait_history(srv, fe.queue_from_ui(page), timeout=400)
        err = cs.execution_error(entry)
        assert err is None and entry["status"]["status_str"] == "success", (err, srv.log_tail(40))
        ids = {n["class_type"]: k for k, n in entry["prompt"][2].items()}
        a2l, face = ids["PTalkAudioToLandmarks"], ids["PTalkFaceLandmarks"]
        payload = entry["outputs"][a2l]["ptalk_preview"][0]
        print(f"\n[player] frontend {shown} ({kind}); run {time.monotonic() - t0:.1f} s; Audio → Landmarks payload "
              f"{P.payload_size(payload)} bytes for {payload['frames']} frames")
        yield {"page": page, "events": ev, "kind": kind, "server": srv, "entry": entry, "payload": payload,
               "a2l": a2l, "face": face, "speech_s": _decoded_seconds(shared_data / MEDIA["LoadAudio"]),
               "version": (shown, version), "startup": startup, "new_temp": _files(srv.base_dir / "temp") - temp_before}
    finally:
        if ev.external or ev.blocked:
            print(f"\n[player] requests to other hosts, blocked: {sorted(set(ev.external) | ev.blocked)}")
        ctx.close()


def _serves(srv, path: str) -> bool:
    try:
        cs.get_json(srv, path)
        return True
    except cs.ComfyServerError:
        return False


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def _decoded_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return sum(f.samples for f in c.decode(s)) / s.rate


# ------------------------------------------------------------------------------------------------ page JavaScript
_JS_PLAYER = """(id) => {  // the player of node ``id``: its state as the user sees it
  const n = window.app.graph.getNodeById(Number(id)) || window.app.graph.getNodeById(id);
  const w = n && (n.widgets || []).find(w => w.name === 'ptalk_player');
  const root = w && w.element;
  if (!root || !root.isConnected) return null;
  const q = s => root.querySelector(s), audio = q('.ptalk-audio'), face = q('.ptalk-face');
  const shown = e => !!e && getComputedStyle(e).display !== 'none';
  return {frames: Number(root.dataset.frames), frame: Number(root.dataset.frame), kind: root.dataset.kind,
          counter: q('.ptalk-counter').textContent, play: shown(q('.ptalk-play')), strip: shown(q('.ptalk-strip')),
          audio: audio.getAttribute('src') ? {src: audio.currentSrc || audio.src, readyState: audio.readyState,
                 duration: audio.duration, paused: audio.paused, currentTime: audio.currentTime} : null,
          view: face.dataset.view ? JSON.parse(face.dataset.view) : null, face: [face.width, face.height],
          serialize: [w.serialize, w.options && w.options.serialize], height: n.size[1],
          setting: (n.properties || {}).ptalk_player ?? null};
}"""
_JS_FACE_PIXELS = """(id) => {  // the face canvas: RGBA bytes as base64, and its size (device px)
  const n = window.app.graph.getNodeById(Number(id)) || window.app.graph.getNodeById(id);
  const c = n.widgets.find(w => w.name === 'ptalk_player').element.querySelector('.ptalk-face');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  return {w: c.width, h: c.height, rgba: btoa(s)};
}"""
_JS_SCRUB = """([id, k]) => {  // drag the scrub bar to frame k (what the range input reports while dragged)
  const n = window.app.graph.getNodeById(Number(id)) || window.app.graph.getNodeById(id);
  const r = n.widgets.find(w => w.name === 'ptalk_player').element.querySelector('.ptalk-scrub');
  r.value = String(k);
  r.dispatchEvent(new Event('input', {bubbles: true}));
  r.dispatchEvent(new Event('change', {bubbles: true}));
}"""
_JS_FOCUS = """(id) => {  // the canvas at 1:1 with the node near the top left of the view
  const c = window.app.canvas, n = window.app.graph.getNodeById(Number(id)) || window.app.graph.getNodeById(id);
  c.ds.scale = 1;
  c.ds.offset = [80 - n.pos[0], 80 - n.pos[1]];
  c.setDirty(true, true);
}"""
_JS_DEGRADE = """async ([type, output]) => {  // the player's hook where the APIs it needs are missing
  const out = {errors: []};
  const proto = window.LiteGraph.registered_node_types[type].prototype;
  // 1. a node object without addDOMWidget (a frontend without DOM widgets)
  try { proto.onExecuted.call({size: [300, 100], widgets: [], inputs: []}, output); } catch (e) { out.errors.push(String(e)); }
  // 2. a real node, in a browser without DecompressionStream
  const saved = window.DecompressionStream;
  const n = window.LiteGraph.createNode(type);
  window.app.graph.add(n);
  try {
    window.DecompressionStream = undefined;
    n.onExecuted(output);
    await new Promise(r => setTimeout(r, 300));
  } catch (e) { out.errors.push(String(e)); }
  finally { window.DecompressionStream = saved; }
  out.noDecompress = (n.widgets || []).some(w => w.name === 'ptalk_player');
  // 3. an output without the pack's key, and a payload of an unknown version
  try { n.onExecuted({}); n.onExecuted({ptalk_preview: [{format: 'ptalk-preview', version: 99}]}); } catch (e) { out.errors.push(String(e)); }
  await new Promise(r => setTimeout(r, 300));
  out.unknown = (n.widgets || []).some(w => w.name === 'ptalk_player');
  window.app.graph.remove(n);
  return out;
}"""


def _wait_player(page, node_id, timeout_ms=30_000) -> dict:
    page.wait_for_function(f"(id) => {{ const s = ({_JS_PLAYER})(id); return !!s && s.frames > 0 && s.view; }}",
                           arg=node_id, timeout=timeout_ms)
    return page.evaluate(_JS_PLAYER, node_id)


def _face_pixels(page, node_id) -> np.ndarray:
    import base64

    d = page.evaluate(_JS_FACE_PIXELS, node_id)
    return np.frombuffer(base64.b64decode(d["rgba"]), np.uint8).reshape(d["h"], d["w"], 4)


def _mouth_mask(rgba: np.ndarray) -> np.ndarray:
    diff = rgba[..., :3].astype(np.int32) - np.array(MOUTH_RGB)
    return np.sqrt((diff ** 2).sum(-1)) < MOUTH_TOLERANCE


def _canvas_points(payload: dict, frame: int, view) -> np.ndarray:
    """The payload's points of ``frame`` in the face canvas's device pixels (the player's mapping)."""
    vx, vy, s = view
    q = P.decode_points(payload["points"], payload["frames"], payload["n_points"])[frame].astype(np.float64)
    return np.stack([vx + q[:, 0] * s / (payload["levels"] - 1), vy + q[:, 1] * s / (payload["levels"] - 1)], -1)


def _polygon(pts: np.ndarray) -> tuple[float, float]:
    """(area, perimeter) of a closed polygon."""
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return float(area), float(np.linalg.norm(pts - np.roll(pts, -1, axis=0), axis=1).sum())


def _measure(page, run, frame: int, view) -> dict:
    """Scrub to ``frame``; the filled mouth measured in the canvas and what the landmarks say it should be."""
    page.evaluate(_JS_SCRUB, [run["a2l"], frame])
    page.wait_for_function(f"([id, k]) => ({_JS_PLAYER})(id).frame === k", arg=[run["a2l"], frame], timeout=5000)
    mask = _mouth_mask(_face_pixels(page, run["a2l"]))
    pts = _canvas_points(run["payload"], frame, view)
    area, perimeter = _polygon(pts[LIPS_INNER])
    top, bottom = pts[UPPER_LIP_INNER_MID], pts[LOWER_LIP_INNER_MID]
    col = int(round((top[0] + bottom[0]) / 2))
    return {"frame": frame, "area_px": int(mask.sum()), "area_expected": area, "perimeter": perimeter,
            "gap_px": int(mask[:, col].sum()), "gap_expected": float(np.hypot(*(bottom - top)))}


# ------------------------------------------------------------------------------------------------ tests
def test_player_appears_with_the_speech(run, tmp_path):
    page, ev = run["page"], run["events"]
    shown, expected = run["version"]
    assert not run["startup"], "errors while the frontend started:\n" + "\n".join(run["startup"])
    assert shown == expected, f"{run['kind']}: the page runs frontend {shown}, expected {expected}"
    state = _wait_player(page, run["a2l"])
    face = _wait_player(page, run["face"])
    print(f"[player] {run['kind']}: Audio → Landmarks player {state}; Face Landmarks player {face}")
    assert state["kind"] == "landmarks" and state["frames"] == run["payload"]["frames"] and state["play"] and state["strip"]
    assert state["serialize"] == [False, False], "the player must not be saved or sent in the prompt"
    assert face["frames"] == 1 and not face["play"] and not face["strip"]  # a still: the mesh over the photo
    # the speech: a temp file served by /view, as long as the speech
    page.wait_for_function(f"(id) => {{ const a = ({_JS_PLAYER})(id).audio; return a && a.readyState >= 1; }}",
                           arg=run["a2l"], timeout=20_000)
    audio = page.evaluate(_JS_PLAYER, run["a2l"])["audio"]
    assert "/view?" in audio["src"] and "type=temp" in audio["src"], audio
    assert audio["duration"] == pytest.approx(run["speech_s"], abs=1e-3), (audio, run["speech_s"])
    # the layout with the grown nodes, at fit view (as test_frontend checks it after every run)
    layout = fe.check_layout(page, f"talking_photo with the players ({run['kind']})", tmp_path)
    page.screenshot(path=str(tmp_path / f"graph_after_run_{run['kind']}.png"))
    # preview files: ComfyUI's temp folder only
    assert run["new_temp"] and {Path(f).suffix for f in run["new_temp"]} <= {".flac", ".jpg"}, run["new_temp"]
    assert not layout, "\n".join(layout)
    assert not ev.unexpected_errors(), ev.unexpected_errors()


def test_play_advances_frames(run, tmp_path):
    page, ev = run["page"], run["events"]
    _wait_player(page, run["a2l"])
    page.evaluate(_JS_FOCUS, run["a2l"])
    page.wait_for_timeout(500)
    root = page.locator(".ptalk-player").filter(has=page.locator(".ptalk-play:visible")).first
    before, px0 = page.evaluate(_JS_PLAYER, run["a2l"]), _face_pixels(page, run["a2l"])
    t0 = time.monotonic()
    root.locator(".ptalk-play").click()
    page.wait_for_timeout(600)
    mid, px1 = page.evaluate(_JS_PLAYER, run["a2l"]), _face_pixels(page, run["a2l"])
    root.screenshot(path=str(tmp_path / f"player_playing_{run['kind']}.png"))
    page.wait_for_timeout(900)
    after, px2 = page.evaluate(_JS_PLAYER, run["a2l"]), _face_pixels(page, run["a2l"])
    elapsed = time.monotonic() - t0
    root.locator(".ptalk-play").click()  # pause
    print(f"[player] {run['kind']}: frames {before['frame']} -> {mid['frame']} -> {after['frame']} in {elapsed:.2f} s; "
          f"audio {after['audio']}")
    fps = run["payload"]["fps"]
    assert before["frame"] < mid["frame"] < after["frame"], (before, mid, after)
    assert after["frame"] - before["frame"] >= 0.5 * 1.5 * fps, "playback runs at about the frame rate"
    assert after["frame"] - before["frame"] <= (elapsed + 0.5) * fps
    assert np.any(px0 != px1) and np.any(px1 != px2), "the canvas pixels change while playing"
    assert after["counter"].startswith(f"{after['frame'] + 1} / {run['payload']['frames']}"), after["counter"]
    assert not ev.unexpected_errors(), ev.unexpected_errors()


def test_scrubbing_draws_the_frames_mouth_opening(run, tmp_path):
    page, ev, payload = run["page"], run["events"], run["payload"]
    state = _wait_player(page, run["a2l"])
    page.evaluate(_JS_FOCUS, run["a2l"])
    page.wait_for_timeout(300)
    mouth = P.decode_curve(next(c for c in payload["curves"] if c["name"] == "mouth"))  # inner_lip_aperture
    order = np.argsort(mouth)
    frames = sorted({int(order[0]), int(order[len(order) // 4]), int(order[len(order) // 2]),
                     int(order[3 * len(order) // 4]), int(order[-2]), int(order[-1])})
    view = state["view"]
    rows = [_measure(page, run, k, view) for k in frames]
    for r in rows:
        print(f"[player] {run['kind']}: frame {r['frame']}: mouth opening {mouth[r['frame']]:.3f} × IOD; filled area "
              f"{r['area_px']} px (landmarks {r['area_expected']:.0f}), gap {r['gap_px']} px (landmarks "
              f"{r['gap_expected']:.1f})")
    root = page.locator(".ptalk-player").filter(has=page.locator(".ptalk-play:visible")).first
    _measure(page, run, int(order[-1]), view)
    root.screenshot(path=str(tmp_path / f"player_widest_{run['kind']}.png"))
    _measure(page, run, int(order[0]), view)
    root.screenshot(path=str(tmp_path / f"player_closed_{run['kind']}.png"))
    for r in rows:
        # the fill is the landmarks' inner-lip polygon: its area within half a pixel along the outline
        assert abs(r["area_px"] - r["area_expected"]) <= 0.6 * r["perimeter"] + 0.05 * r["area_expected"] + 4, r
        assert abs(r["gap_px"] - r["gap_expected"]) <= 2.0, r
    # from the closed mouth to the widest: the pixels follow the engine's mouth-opening curve
    area = np.array([r["area_px"] for r in rows], float)
    ap = mouth[[r["frame"] for r in rows]]
    assert rows[0]["area_px"] < 0.2 * max(area) and area[np.argmax(ap)] == max(area)
    assert np.corrcoef(area, ap)[0, 1] > 0.95, list(zip(ap, area))
    assert not ev.unexpected_errors(), ev.unexpected_errors()


def test_player_collapses_and_expands(run, tmp_path):
    """The ▾/▸ toggle hides the face view and the strip (the node shrinks to its widgets), keeps the choice in the
    node's properties (saved with the workflow), and shows them again at the node's former height."""
    page, ev = run["page"], run["events"]
    before = _wait_player(page, run["a2l"])
    page.evaluate(_JS_FOCUS, run["a2l"])
    root = page.locator(".ptalk-player").filter(has=page.locator(".ptalk-play:visible")).first
    root.locator(".ptalk-toggle").click()
    page.wait_for_timeout(300)
    small = page.evaluate(_JS_PLAYER, run["a2l"])
    root.screenshot(path=str(tmp_path / f"player_collapsed_{run['kind']}.png"))
    root.locator(".ptalk-toggle").click()
    page.wait_for_timeout(300)
    again = page.evaluate(_JS_PLAYER, run["a2l"])
    print(f"[player] {run['kind']}: node height {before['height']} -> collapsed {small['height']} -> {again['height']}")
    assert small["setting"] == "collapsed" and not small["strip"] and small["play"]
    assert small["height"] < before["height"] - 150
    assert again["setting"] == "expanded" and again["strip"] and again["height"] == before["height"]
    assert not ev.unexpected_errors(), ev.unexpected_errors()


def test_missing_api_leaves_the_player_out(run):
    page, ev = run["page"], run["events"]
    output = run["entry"]["outputs"][run["a2l"]]
    ev.clear()
    res = page.evaluate(_JS_DEGRADE, ["PTalkAudioToLandmarks", output])
    assert res == {"errors": [], "noDecompress": False, "unknown": False}, res
    assert not ev.unexpected_errors(), ev.unexpected_errors()
