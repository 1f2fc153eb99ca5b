"""The pack in the REAL ComfyUI frontend: a ComfyUI server process (``ptalk_harness.server``) and Chromium driven
by Playwright.

* every shipped workflow (workflows/*.json) loads in the frontend with every node type registered, every link
  kept, no alert of the frontend's workflow-schema validation, no JavaScript exception, only nodes flagged whose
  model file the test server lacks, and the API prompt the frontend builds (``app.graphToPrompt()``) equal, node
  by node (class_type and inputs), to the one the headless runner builds from the same file
  (``harness.workflow_to_prompt``) -- except the frontend-only inputs listed in ``FRONTEND_ONLY_INPUTS``
  (printed);
* the layout on the canvas once the media previews have loaded and grown their nodes (Load Image's image, Load
  Video's .mp4; after a run Save Video's mp4): no two nodes overlap (``frontend.LAYOUT_TOLERANCE`` px), and every node,
  its DOM widgets and previews included, lies inside exactly one group and reaches into no other (notes: no
  group) -- after loading every workflow and after every run below (``layout.json`` in ``tmp_path``);
* the pack's loaders (IdentityNet Loader, AnimateNet Loader) in talking_photo_diffusion.json,
  dubbing_diffusion.json and attribute_editing.json carry web/portraittalk.js's live, unsaved
  ``properties.models = [{name: <weights>, directory: <models folder>}]`` (nothing of it in the saved graph,
  which loads again without a schema alert); in frontend 1.49 the error toast's "View details" opens the
  "Missing Models" panel, which files the IdentityNet file under ipadapter, the AnimateNet file under
  portraittalk and the checkpoint under checkpoints, none under "Unknown" (frontend 1.32 has no such panel);
  a loader added by hand follows its widget value;
* talking_photo.json (streamed), talking_photo_batch.json (IMAGE batch) and dubbing_long.json queued with the UI's Run button on uploaded
  real media give an mp4 (video frames, the speech's duration within a frame, an audio stream) that the UI
  previews;
* a faceless image queued from the UI gives an error the user can read in the UI, naming our node, the input and
  the fix, with the exception type ``PortraitTalk.NodeInputError`` (no file path), and the server keeps working.

Screenshots of every loaded workflow, finished run and Missing Models panel go into each test's ``tmp_path``
(keep them with ``--basetemp``); ``-s`` shows what the tests print (graphToPrompt's Save Video inputs, run times,
the error text, the Missing Models panel's text, layout problems).

Needs Chromium (``apt-get install chromium``, or ``$PTALK_CHROMIUM``) and the ``playwright`` Python package; without
them the tests skip (fail under CI). Playwright's own browser download is not used. The page helpers, and the
console errors that are not failures (everything else fails a test) with their reasons, are in
``ptalk_harness.frontend``; the ``browser`` fixture is in conftest.py.
"""
from __future__ import annotations

import json
import math
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

import ptalk_harness as harness
from ptalk_harness import frontend as fe
from ptalk_harness import server as cs

pytestmark = pytest.mark.frontend

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))

#: what the frontend says when a loaded workflow does not match its workflow schema
_SCHEMA_ERROR = re.compile(r"Invalid workflow against zod schema|Workflow does not contain a valid version")
#: stand-ins (shared media) for file names a workflow mentions that the shared data does not have
STAND_INS = {".png": "photos/astronaut.png", ".jpg": "photos/astronaut.png", ".wav": "audio/jfk.flac",
             ".flac": "audio/jfk.flac", ".mp4": "video/retalking_face_5.mp4", ".mpg": "video/lbax4n.mpg"}

#: inputs that graphToPrompt may put into the API prompt although the node does not declare them (ComfyUI's
#: validation and execution ignore undeclared inputs), with the reason; ignored in the comparison only when the
#: server's /object_info confirms the node does not declare them.
FRONTEND_ONLY_INPUTS = {
    "video-preview": "the frontend's (1.32.9 and 1.49.6) LoadVideo preview: a DOM widget added once Chromium has loaded the video "
                     "(onloadeddata: .mp4 yes, MPEG-1 .mpg never); it is marked serialize=false for the saved "
                     "workflow but not options.serialize=false, so graphToPrompt sends it with value ''",
}


# --------------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(comfy, shared_data, tmp_path_factory):
    """A ComfyUI server process for this pack (module-scoped; stopped, with its process group, at teardown), with
    the media the shipped workflows name uploaded under those names (so that every workflow loads without
    missing-file errors)."""
    srv = cs.start(base_dir=tmp_path_factory.mktemp("server"), settings=fe.SETTINGS,
                   required_nodes=comfy.pack_nodes)
    try:
        for name, src in sorted(_workflow_media(shared_data).items()):
            cs.upload_file(srv, src, name=name)
        yield srv
    finally:
        cs.stop(srv)
        print(f"\n[frontend] server log: {srv.log_path}")


def _workflow_media(shared_data: Path) -> dict[str, Path]:
    """File name -> shared media file, for every file widget value in the shipped workflows."""
    out = {}
    for path in WORKFLOWS:
        for n in json.loads(path.read_text())["nodes"]:
            if n.get("type") in fe.FILE_WIDGETS and isinstance(n.get("widgets_values"), list) and n["widgets_values"]:
                name = n["widgets_values"][0]
                if not isinstance(name, str) or not name:
                    continue
                hits = [p for sub in ("photos", "audio", "video") for p in (shared_data / sub).glob(name)]
                stand_in = STAND_INS.get(Path(name).suffix.lower())
                if hits:
                    out[name] = hits[0]
                elif stand_in:
                    out[name] = shared_data / stand_in
    return out


@pytest.fixture(scope="module")
def ui(browser, server):
    """``(page, events, startup_errors)``: one frontend page for the module, the app ready."""
    ctx, page, ev = fe.open_page(browser, server)
    startup = ev.unexpected_errors(startup=True)
    ev.clear()
    yield page, ev, startup
    if ev.external or ev.blocked:
        print(f"\n[frontend] requests to other hosts, blocked: {sorted(set(ev.external) | ev.blocked)}")
    ctx.close()


# --------------------------------------------------------------------------------------------------------
# helpers (page JavaScript)
# --------------------------------------------------------------------------------------------------------
_JS_GRAPH = """() => {
  const g = window.app.graph;
  const links = (g.links instanceof Map ? [...g.links.values()] : Object.values(g.links || {})).filter(Boolean);
  const problems = [];
  for (const l of links) {
    const o = g.getNodeById(l.origin_id), t = g.getNodeById(l.target_id);
    if (!o) problems.push(`link ${l.id}: origin node ${l.origin_id} does not exist`);
    else if (!o.outputs || !o.outputs[l.origin_slot]) problems.push(`link ${l.id}: node ${l.origin_id} has no output ${l.origin_slot}`);
    if (!t) problems.push(`link ${l.id}: target node ${l.target_id} does not exist`);
    else if (!t.inputs || !t.inputs[l.target_slot]) problems.push(`link ${l.id}: node ${l.target_id} has no input ${l.target_slot}`);
    else if (t.inputs[l.target_slot].link !== l.id) problems.push(`link ${l.id}: node ${l.target_id} input ${l.target_slot} holds link ${t.inputs[l.target_slot].link}`);
  }
  return {
    nodes: g._nodes.map(n => ({id: n.id, type: n.type, registered: !!window.LiteGraph.registered_node_types[n.type],
                               has_errors: !!n.has_errors,
                               widgets: (n.widgets || []).map(w => [w.name, w.value === undefined ? null :
                                   (typeof w.value === 'object' && w.value !== null ? String(w.value) : w.value)])})),
    links: links.length, link_ids: links.map(l => l.id), problems,
  };
}"""
_JS_PROMPT = "async () => (await window.app.graphToPrompt()).output"
_JS_OVERLAYS = """() => [...document.querySelectorAll(
    '[data-testid="error-overlay"], .p-dialog, [role="dialog"], .p-toast-message')]
  .filter(e => e.offsetParent !== null || e.getClientRects().length).map(e => e.innerText)"""
_JS_CLOSE_PANEL = """async () => {  // frontend 1.49: the Errors panel opened by "View details" (no-op on 1.32)
  try { await window.app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', false); } catch (e) {}
}"""
_JS_TEXT = """() => document.body.innerText + '\\n' +
  [...document.querySelectorAll('textarea, pre, code')].map(e => e.value || e.textContent || '').join('\\n')"""


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (type(a) is type(b) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def prompt_diff(frontend: dict, runner: dict, object_info: dict | None = None,
                ignored: list[str] | None = None) -> list[str]:
    """Readable differences (class_type and inputs, per node id) between the frontend's and the runner's API
    prompts; empty when they agree. Frontend-only inputs (:data:`FRONTEND_ONLY_INPUTS`) that the node does not
    declare in ``object_info`` are left out and described in ``ignored``."""
    lines = []
    ids = sorted(set(frontend) | set(runner), key=lambda k: (len(str(k)), str(k)))
    for nid in ids:
        f, r = frontend.get(nid), runner.get(nid)
        if f is None:
            lines.append(f"node {nid} ({r.get('class_type')}): in the runner's prompt only")
            continue
        if r is None:
            lines.append(f"node {nid} ({f.get('class_type')}): in the frontend's prompt only: {f.get('inputs')}")
            continue
        if f.get("class_type") != r.get("class_type"):
            lines.append(f"node {nid}: class_type frontend {f.get('class_type')!r} != runner {r.get('class_type')!r}")
        fi, ri = f.get("inputs") or {}, r.get("inputs") or {}
        declared = set()
        for part in ("required", "optional"):
            declared |= set(((object_info or {}).get(f.get("class_type"), {}).get("input", {}) or {}).get(part) or {})
        for k in sorted(set(fi) | set(ri)):
            if k not in ri and k in FRONTEND_ONLY_INPUTS and object_info is not None and k not in declared:
                if ignored is not None:
                    ignored.append(f"node {nid} ({f.get('class_type')}) input {k!r} = {fi[k]!r}: "
                                   f"{FRONTEND_ONLY_INPUTS[k]}")
                continue
            if k not in ri:
                lines.append(f"node {nid} ({f.get('class_type')}) input {k!r}: frontend {fi[k]!r}, runner (absent)")
            elif k not in fi:
                lines.append(f"node {nid} ({f.get('class_type')}) input {k!r}: frontend (absent), runner {ri[k]!r}")
            elif not _same(fi[k], ri[k]):
                lines.append(f"node {nid} ({f.get('class_type')}) input {k!r}: frontend {fi[k]!r}, runner {ri[k]!r}")
    return lines


def _wait_video_preview(page, filename: str, timeout_ms: int = 30_000):
    page.wait_for_function(
        "(fn) => [...document.querySelectorAll('video')].some(v => { const s = v.currentSrc || v.src || '';"
        " return s.includes(fn) || s.includes(encodeURIComponent(fn)); })", arg=filename, timeout=timeout_ms)


def _media_duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        n = sum(f.samples for f in c.decode(s))
        return n / s.rate


def check_mp4(path: Path, audio_seconds: float) -> dict:
    """Decode the mp4 with PyAV; assert video frames, a duration equal to ``audio_seconds`` within one frame, and an
    audio stream whose decoded length matches too. Returns what was measured."""
    import av

    with av.open(str(path)) as c:
        assert c.streams.video, f"{path.name}: no video stream"
        assert c.streams.audio, f"{path.name}: no audio stream"
        vs = c.streams.video[0]
        fps = float(vs.average_rate)
        frames = 0
        size = None
        for f in c.decode(vs):
            frames += 1
            size = (f.width, f.height)
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(a))
        arate = a.rate
    assert frames > 0 and fps > 0, f"{path.name}: no video frames"
    video_s = frames / fps
    assert abs(video_s - audio_seconds) <= 1.0 / fps + 1e-6, (
        f"{path.name}: video lasts {video_s:.3f} s ({frames} frames at {fps:g} fps), the speech {audio_seconds:.3f} s")
    # AAC adds up to ~2 frames of 1024 samples of priming/padding
    assert abs(samples / arate - audio_seconds) <= 1.0 / fps + 2048 / arate, (
        f"{path.name}: audio stream lasts {samples / arate:.3f} s, the speech {audio_seconds:.3f} s")
    return {"frames": frames, "fps": fps, "size": size, "video_s": video_s, "audio_s": samples / arate}


# --------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------
def test_frontend_starts_without_errors(ui, server):
    """The frontend served by the server starts with the pack's nodes registered and no unexpected JS error."""
    page, ev, startup = ui
    assert not startup, "errors while the frontend started:\n" + "\n".join(startup)
    registered = set(page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
    info = cs.get_json(server, "/object_info")
    ours = {k for k, v in info.items() if str(v.get("category", "")).startswith("PortraitTalk")}
    assert ours and ours <= registered, f"pack nodes not registered in the frontend: {sorted(ours - registered)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_in_the_frontend(ui, server, comfy, path, tmp_path):
    """The workflow loads with all node types known and all links kept, no JS error, no schema alert, and
    graphToPrompt == the headless runner's prompt. Every check runs; the failures are reported together."""
    page, ev, _ = ui
    wf = json.loads(path.read_text())
    ev.clear()
    fe.load_graph(page, wf)
    g = page.evaluate(_JS_GRAPH)
    overlays = page.evaluate(_JS_OVERLAYS)
    problems: list[str] = []
    if overlays:
        print(f"[frontend] {path.name}: the UI shows: {overlays}")
    # the layout once the media previews have loaded (and grown their nodes)
    problems += fe.check_layout(page, path.name, tmp_path)
    page.screenshot(path=str(tmp_path / f"{path.stem}.png"))

    # the frontend's workflow schema (an alert in frontend 1.32, and in 1.49 with Comfy.Validation.Workflows on)
    schema = [t for t in overlays if _SCHEMA_ERROR.search(t)] + \
        [f"console {typ}: {text}" for typ, text, _ in ev.console if _SCHEMA_ERROR.search(text)]
    if schema:
        problems.append("the frontend rejects the file against its workflow schema: " + " | ".join(
            " ".join(t.split()) for t in schema))
    # node types
    missing = [(n["id"], n["type"]) for n in g["nodes"] if not n["registered"]]
    if missing:
        problems.append(f"node types the frontend does not know: {missing}")
    problems += [f"the UI reports: {' '.join(t.split())}" for t in overlays if re.search(r"missing node", t, re.I)]
    if len(g["nodes"]) != len(wf["nodes"]):
        problems.append(f"{len(g['nodes'])} nodes loaded of the file's {len(wf['nodes'])}")
    # links
    file_links = sorted(lk[0] if isinstance(lk, list) else lk["id"] for lk in wf["links"])
    if g["links"] != len(wf["links"]) or sorted(g["link_ids"]) != file_links:
        problems.append(f"the frontend holds {g['links']} links {sorted(g['link_ids'])}, the file "
                        f"{len(file_links)} {file_links}")
    problems += [f"dangling link: {p}" for p in g["problems"]]
    # nodes the frontend flags must only miss a file (a model the test server does not have)
    info = cs.get_json(server, "/object_info")
    for n in (n for n in g["nodes"] if n["has_errors"]):
        spec = info.get(n["type"], {}).get("input", {})
        combos = {k: v[0] if isinstance(v[0], list) else (v[1] or {}).get("options")
                  for part in ("required", "optional") for k, v in (spec.get(part) or {}).items()
                  if isinstance(v, list) and v and (isinstance(v[0], list) or v[0] == "COMBO")}
        absent = [(name, val) for name, val in n["widgets"] if name in combos and combos[name] is not None
                  and val not in combos[name]]
        if absent:
            print(f"[frontend] {path.name}: node {n['id']} ({n['type']}) flagged, missing file(s) {absent}")
        else:
            problems.append(f"the frontend flags node {n['id']} ({n['type']}) but none of its files is missing")
    # the prompt
    frontend_prompt = page.evaluate(_JS_PROMPT)
    runner_prompt = {str(k): v for k, v in
                     harness.workflow_to_prompt(harness.load_workflow(path)).items()}
    for nid, node in frontend_prompt.items():
        if node.get("class_type") == "SaveVideo":
            widgets = next((n["widgets"] for n in g["nodes"] if str(n["id"]) == str(nid)), None)
            print(f"[frontend] {path.name}: graphToPrompt SaveVideo {nid}: {node.get('inputs')}; widgets {widgets}; "
                  f"runner: {runner_prompt.get(nid, {}).get('inputs')}")
    (tmp_path / "frontend_prompt.json").write_text(json.dumps(frontend_prompt, indent=1))
    (tmp_path / "runner_prompt.json").write_text(json.dumps(runner_prompt, indent=1))
    ignored: list[str] = []
    diff = prompt_diff(frontend_prompt, runner_prompt, info, ignored)
    for line in ignored:
        print(f"[frontend] {path.name}: not compared: {line}")
    if diff:
        problems.append(f"the frontend's graphToPrompt and the headless runner disagree (prompts in {tmp_path}):"
                        f"\n    " + "\n    ".join(diff))
    # JavaScript
    problems += ev.unexpected_errors()
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


#: the pack's loaders and the ComfyUI/models folder of a weights value (web/portraittalk.js MODEL_FOLDERS):
#: IdentityNet Loader's options are "portraittalk/<file>" / "ipadapter/<file>"
PACK_LOADERS = {"PTalkIdentityNetLoader": lambda v: v.split("/", 1)[0],
                "PTalkAnimateNetLoader": lambda v: "portraittalk"}
#: core loaders of the shipped workflows the frontend files by itself: (type, widget) -> folder
CORE_LOADERS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints"}
MODEL_WORKFLOWS = [p for p in WORKFLOWS
                   if any(n["type"] in PACK_LOADERS for n in json.loads(p.read_text())["nodes"])]

_JS_PACK_LOADERS = """(types) => window.app.graph._nodes.filter(n => types.includes(n.type)).map(n => {
  const w = (n.widgets || []).find(w => w.name === 'weights');
  const d = Object.getOwnPropertyDescriptor(n.properties || {}, 'models');
  return {id: n.id, type: n.type, value: w ? (w.value ?? null) : null, models: (n.properties || {}).models ?? null,
          enumerable: d ? !!d.enumerable : null, keys: Object.keys(n.properties || {})};
})"""
#: what gets saved: LGraph.serialize() (the file the frontend writes) and graphToPrompt's workflow (what a run
#: embeds in its outputs)
_JS_SAVED = """async () => JSON.stringify({graph: window.app.graph.serialize(),
                                       workflow: (await window.app.graphToPrompt()).workflow})"""  # as written to a file
_JS_MISSING_MODELS_PANEL = """() => {  // frontend 1.49: the right side panel's "Missing Models" group, row by row
  const s = document.querySelector('[data-testid="error-group-missing-model"]');
  if (!s) return null;
  const rows = [...s.querySelectorAll('button[title]')].filter(b => !b.hasAttribute('aria-label')).map(b => {
    const name = b.getAttribute('title'), row = b.closest('span.flex-col') || b.parentElement.parentElement;
    return {name, lines: row.innerText.split('\\n').map(t => t.trim()).filter(t => t && t !== name)};
  });
  return {text: s.innerText, rows};
}"""
_JS_ADD_BY_HAND = """(steps) => {  // add a loader the way the node library does and pick weights in its combo
  const LG = window.LiteGraph, g = window.app.graph, c = window.app.canvas, out = [];
  for (const [type, values] of Object.entries(steps)) {
    const n = LG.createNode(type);
    n.pos = [100 + 400 * out.length, 100];
    g.add(n);
    const w = (n.widgets || []).find(w => w.name === 'weights');
    const snap = () => ({value: w ? (w.value ?? null) : null, models: n.properties.models ?? null,
                         keys: Object.keys(n.properties), saved: n.serialize().properties ?? {}});
    const seen = [snap()];
    for (const v of values) {
      const opts = w.options && w.options.values;
      if (Array.isArray(opts) && !opts.includes(v)) opts.push(v);  // a file that appeared in models/ (Refresh)
      w.value = v;
      if (w.callback) w.callback(v, c, n);
      seen.push(snap());
    }
    out.push({type, id: n.id, seen});
  }
  g.setDirtyCanvas(true, true);
  return out;
}"""
EMPTY_WORKFLOW = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                  "extra": {}, "version": 0.4}


def _saved_models(saved: dict, types) -> list[str]:
    """``models`` entries of the pack's loaders in a serialized graph, and top-level ones naming their files."""
    out = []
    for where in ("graph", "workflow"):
        wf = saved.get(where) or {}
        for n in wf.get("nodes") or []:
            if n.get("type") in types and "models" in (n.get("properties") or {}):
                out.append(f"{where}: node {n['id']} ({n['type']}) saves properties.models = "
                           f"{n['properties']['models']}")
        ours = {str(v) for n in wf.get("nodes") or [] if n.get("type") in types for v in n.get("widgets_values") or []}
        out += [f"{where}: top-level models entry {m}" for m in wf.get("models") or [] if m.get("name") in ours]
    return out


@pytest.mark.parametrize("path", MODEL_WORKFLOWS, ids=[p.stem for p in MODEL_WORKFLOWS])
def test_missing_models_panel_files_the_pack_weights_in_their_folder(ui, path, tmp_path):
    """web/portraittalk.js gives the pack's loaders a live, unsaved ``properties.models = [{name, directory}]``:
    every pack loader of the loaded workflow has it (name = its weights value, directory = the models folder),
    nothing of it is saved (LGraph.serialize(), graphToPrompt's workflow) and the saved graph loads again
    without a schema alert.

    Frontend 1.49.6: the error toast's "View details" opens the right side panel, whose "Missing Models" group
    files the IdentityNet file under ipadapter, the AnimateNet file under portraittalk, the checkpoint under
    checkpoints -- none under "Unknown" (screenshot: ``<workflow>_missing_models.png``).
    Frontend 1.32.9 has no such panel (its missing-models dialog lists only models with a download URL, which
    these weights lack): there only the properties and the saved graph are checked."""
    page, ev, _ = ui
    wf = json.loads(path.read_text())
    version = fe.page_frontend_version(page)
    ev.clear()
    fe.load_graph(page, wf)
    types = list(PACK_LOADERS)
    expected = {}  # file name -> folder
    for n in wf["nodes"]:
        if n["type"] in PACK_LOADERS:
            expected[n["widgets_values"][0]] = PACK_LOADERS[n["type"]](n["widgets_values"][0])
        for (typ, widget), folder in CORE_LOADERS.items():
            if n["type"] == typ:
                expected[n["widgets_values"][0]] = folder
    problems = []
    # the live properties
    live = page.evaluate(_JS_PACK_LOADERS, types)
    print(f"[frontend] {path.name} (frontend {'.'.join(map(str, version))}): pack loaders {live}")
    want_ids = sorted(str(n["id"]) for n in wf["nodes"] if n["type"] in PACK_LOADERS)
    if sorted(str(n["id"]) for n in live) != want_ids:
        problems.append(f"pack loaders in the frontend {[(n['id'], n['type']) for n in live]}, in the file {want_ids}")
    for n in live:
        want = [{"name": n["value"], "directory": PACK_LOADERS[n["type"]](str(n["value"]))}]
        if n["models"] != want:
            problems.append(f"node {n['id']} ({n['type']}): properties.models = {n['models']}, expected {want}")
        if n["enumerable"] is not False or "models" in n["keys"]:
            problems.append(f"node {n['id']} ({n['type']}): properties.models is enumerable (would be saved): "
                            f"keys {n['keys']}")
    # nothing saved, and the saved graph loads without a schema alert
    saved = json.loads(page.evaluate(_JS_SAVED))
    problems += _saved_models(saved, types)
    (tmp_path / "saved_graph.json").write_text(json.dumps(saved["graph"], indent=1))

    # frontend 1.49: the missing-models panel, opened the way a user does
    if version >= (1, 49):
        overlay = page.locator('[data-testid="error-overlay"]')
        overlay.first.wait_for(state="visible", timeout=15_000)
        overlay.first.get_by_role("button", name="View details").click()
        section = page.locator('[data-testid="error-group-missing-model"]')
        section.first.wait_for(state="visible", timeout=15_000)
        try:
            page.wait_for_function(f"(names) => {{ const p = ({_JS_MISSING_MODELS_PANEL})(); "
                                   f"return !!p && names.every(n => p.text.includes(n)); }}",
                                   arg=sorted(expected), timeout=15_000)
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: what the panel shows is reported below
            pass
        page.wait_for_timeout(300)
        page.screenshot(path=str(tmp_path / f"{path.stem}_missing_models.png"))
        panel = page.locator('[data-testid="properties-panel"]')
        if panel.count():
            panel.first.screenshot(path=str(tmp_path / f"{path.stem}_missing_models_panel.png"))
        shown = page.evaluate(_JS_MISSING_MODELS_PANEL)
        print(f"[frontend] {path.name}: the Missing Models panel shows: {shown['text']!r}")
        # each model: its name, the line below it its folder ("<folder> · <size>" where a download size is known)
        lines = [t.strip() for t in shown["text"].split("\n") if t.strip()]
        filed = {name: lines[i + 1].split(" · ")[0] if i + 1 < len(lines) else None
                 for i, name in enumerate(lines) if name in expected}
        filed.update({r["name"]: r["lines"][0].split(" · ")[0] for r in shown["rows"] if r["lines"]})
        for name, folder in expected.items():
            if filed.get(name) != folder:
                problems.append(f"the Missing Models panel files {name!r} under {filed.get(name)!r}, not {folder!r}")
        if re.search(r"\bUnknown\b", shown["text"]):
            problems.append(f"the Missing Models panel files something under 'Unknown': {shown['text']!r}")
        page.evaluate(_JS_CLOSE_PANEL)
        page.keyboard.press("Escape")
    else:
        print(f"[frontend] {path.name}: frontend {'.'.join(map(str, version))} has no missing-models panel; "
              f"properties and the saved graph checked only")

    ev.clear()
    fe.load_graph(page, saved["graph"])
    overlays = page.evaluate(_JS_OVERLAYS)
    problems += [f"the saved graph, loaded again: {' '.join(t.split())}" for t in overlays if _SCHEMA_ERROR.search(t)]
    problems += [f"the saved graph, loaded again: console {typ}: {text}" for typ, text, _ in ev.console
                 if _SCHEMA_ERROR.search(text)]
    again = page.evaluate(_JS_PACK_LOADERS, types)
    if [n["models"] for n in again] != [n["models"] for n in live]:
        problems.append(f"the saved graph, loaded again: properties.models {[n['models'] for n in again]}, "
                        f"before {[n['models'] for n in live]}")
    problems += ev.unexpected_errors()
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_pack_loader_added_by_hand_follows_its_widget(ui, tmp_path):
    """A pack loader added by hand (``LiteGraph.createNode`` + ``graph.add``, what the node library does):
    ``properties.models`` names its current weights value and that value's folder, follows the widget when the
    user picks another file, and is never saved (the node's and the graph's serialization, a save/load round
    trip)."""
    page, ev, _ = ui
    ev.clear()
    page.evaluate(fe.JS_CLOSE_TOASTS)
    page.evaluate(fe.JS_LOAD, EMPTY_WORKFLOW)  # no fit view: frontend 1.49 says "Empty canvas" to that
    steps = {"PTalkAnimateNetLoader": ["my_animatenet.safetensors", "sub/other_animatenet.safetensors"],
             "PTalkIdentityNetLoader": ["portraittalk/my_identitynet.safetensors", "ipadapter/ip-adapter-faceid_sd15.bin"]}
    added = page.evaluate(_JS_ADD_BY_HAND, steps)
    print(f"[frontend] pack loaders added by hand: {added}")
    problems = []
    for node in added:
        typ, seen = node["type"], node["seen"]
        first = seen[0]  # the value the combo starts with: the first file of the folder, none on the test server
        want = [{"name": first["value"], "directory": PACK_LOADERS[typ](first["value"])}] \
            if isinstance(first["value"], str) and first["value"] else None
        if first["models"] != want and not (want is None and first["models"] in (None, [])):
            problems.append(f"{typ} as added: properties.models = {first['models']}, expected {want}")
        for value, snap in zip(steps[typ], seen[1:]):
            want = [{"name": value, "directory": PACK_LOADERS[typ](value)}]
            if snap["value"] != value or snap["models"] != want:
                problems.append(f"{typ} with weights {value!r}: widget {snap['value']!r}, properties.models = "
                                f"{snap['models']}, expected {want}")
        for snap in seen:
            if "models" in snap["keys"] or "models" in snap["saved"]:
                problems.append(f"{typ}: properties.models would be saved: keys {snap['keys']}, "
                                f"serialize() {snap['saved']}")
    saved = json.loads(page.evaluate(_JS_SAVED))
    problems += _saved_models(saved, list(PACK_LOADERS))
    (tmp_path / "saved_graph.json").write_text(json.dumps(saved["graph"], indent=1))
    page.evaluate(fe.JS_FIT)
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "added_by_hand.png"))
    # save / load round trip: the loaded nodes describe their (saved) widget values again, still unsaved
    fe.load_graph(page, saved["graph"])
    again = {n["type"]: n for n in page.evaluate(_JS_PACK_LOADERS, list(PACK_LOADERS))}
    for typ, values in steps.items():
        want = [{"name": values[-1], "directory": PACK_LOADERS[typ](values[-1])}]
        got = again.get(typ) or {}
        if got.get("models") != want or got.get("enumerable") is not False:
            problems.append(f"{typ} after a save/load round trip: properties.models = {got.get('models')} "
                            f"(enumerable {got.get('enumerable')}), expected {want}")
    problems += ev.unexpected_errors()
    assert not problems, "\n".join(problems)


UI_RUNS = {  # workflow -> {upload node type: shared media}
    "talking_photo": {"LoadImage": "photos/astronaut.png", "LoadAudio": "audio/jfk.flac"},
    "talking_photo_batch": {"LoadImage": "photos/astronaut.png", "LoadAudio": "audio/jfk.flac"},
    "dubbing_long": {"LoadVideo": "video/lbax4n.mpg", "LoadAudio": "audio/jfk.flac"},
}


@pytest.mark.parametrize("name", list(UI_RUNS))
def test_queue_from_the_ui(ui, server, shared_data, name, tmp_path):
    """Upload real media, point the loaded workflow's widgets at it, press Run: the mp4 has the speech's length,
    video frames and an audio stream, and the UI previews it."""
    page, ev, _ = ui
    files = {t: cs.upload_file(server, shared_data / rel) for t, rel in UI_RUNS[name].items()}
    ev.clear()
    fe.load_graph(page, json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text()))
    done = page.evaluate(fe.JS_SET_FILES, {"widgets": fe.FILE_WIDGETS, "files": files})
    assert sorted(t for _, t, _, _ in done) == sorted(files), f"file widgets set: {done}"
    t0 = time.monotonic()
    prompt_id = fe.queue_from_ui(page)
    entry = cs.wait_history(server, prompt_id, timeout=400)
    seconds = time.monotonic() - t0
    err = cs.execution_error(entry)
    assert err is None and entry["status"]["status_str"] == "success", (
        f"{name}: the run failed: {err and (err.get('node_id'), err.get('node_type'), err.get('exception_type'), err.get('exception_message'))}"
        f"\nserver log tail:\n{server.log_tail(40)}")
    outs = [o for o in cs.output_entries(entry) if o["filename"].endswith(".mp4")]
    assert len(outs) == 1, f"{name}: outputs {cs.output_entries(entry)}"
    _wait_video_preview(page, outs[0]["filename"])
    page.wait_for_timeout(1000)
    layout = fe.check_layout(page, f"{name} after the run", tmp_path)  # Save Video grown by its preview
    page.screenshot(path=str(tmp_path / f"{name}_finished.png"))
    mp4 = cs.fetch_output(server, outs[0], tmp_path)
    info = check_mp4(mp4, _media_duration(shared_data / UI_RUNS[name]["LoadAudio"]))
    print(f"[frontend] {name}: run {seconds:.1f} s, {info}")
    errors = ev.unexpected_errors()
    assert not errors, f"{name}: JavaScript errors:\n" + "\n".join(errors)
    assert not layout, f"{name}: the layout once the mp4 preview shows:\n" + "\n".join(layout)


def _gradient_png(path: Path, size: int = 256) -> Path:
    from PIL import Image

    x = np.linspace(0.0, 1.0, size)
    img = np.stack([np.add.outer(x, x) * 100 + 40, np.add.outer(x, 1 - x) * 90 + 50,
                    np.add.outer(1 - x, x) * 80 + 60], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def _speech_clip(src: Path, dst: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src`` as a 16-bit mono WAV."""
    import av

    chunks, rate = [], None
    with av.open(str(src)) as c:
        for f in c.decode(audio=0):
            rate = f.sample_rate
            a = f.to_ndarray().astype(np.float32)
            if f.format.is_planar:
                a = a.mean(axis=0)
            else:
                a = a.reshape(-1, len(f.layout.channels)).mean(axis=1)
            if np.issubdtype(f.to_ndarray().dtype, np.integer):
                a = a / 32768.0
            chunks.append(a)
    wav = np.concatenate(chunks)[: int(round(seconds * rate))]
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
    return dst


def _error_text_in_ui(page, needle: str, timeout_ms: int = 30_000) -> str:
    """Wait for the error UI and open its details the way a user would; return all text the page shows.

    Frontend 1.32 opens a dialog with the message (its "Show Report" button adds the report); frontend 1.49 shows
    an error overlay "<node> failed" whose "View details" opens the Errors panel with an error log."""
    page.wait_for_function(
        "() => !!document.querySelector('[data-testid=\"error-overlay\"]') || "
        "[...document.querySelectorAll('.p-dialog, [role=\"dialog\"]')].some(d => d.innerText.includes('PortraitTalk'))",
        timeout=timeout_ms)
    overlay = page.locator('[data-testid="error-overlay"]')
    if overlay.count():
        overlay.first.get_by_text("View details").click()
    else:
        report = page.get_by_text("Show Report")
        if report.count():
            report.first.click()
    page.wait_for_function(f"(n) => ({_JS_TEXT})().includes(n)", arg=needle, timeout=timeout_ms)
    page.wait_for_timeout(500)
    return page.evaluate(_JS_TEXT)


def test_faceless_image_error_in_the_ui(browser, server, shared_data, tmp_path):
    """A faceless image queued from the UI: the UI shows our message (node, input, fix) and the exception type
    PortraitTalk.NodeInputError; the server keeps serving and runs the next job."""
    ctx, page, ev = fe.open_page(browser, server)
    try:
        wf = json.loads((REPO_ROOT / "workflows" / "talking_photo.json").read_text())
        faceless = cs.upload_file(server, _gradient_png(tmp_path / "ptalk_faceless_gradient.png"))
        speech = cs.upload_file(server, _speech_clip(shared_data / "audio" / "jfk.flac",
                                                     tmp_path / "ptalk_jfk_2s.wav", 2.0))
        ev.clear()
        fe.load_graph(page, wf)
        page.evaluate(fe.JS_SET_FILES, {"widgets": fe.FILE_WIDGETS, "files": {"LoadImage": faceless, "LoadAudio": speech}})
        prompt_id = fe.queue_from_ui(page)
        entry = cs.wait_history(server, prompt_id, timeout=120)
        err = cs.execution_error(entry)
        assert entry["status"]["status_str"] == "error" and err is not None, f"expected a failed run: {entry['status']}"
        # /history
        assert err["node_type"] == "PTalkFaceLandmarks", err
        assert err["exception_type"] == "PortraitTalk.NodeInputError", err["exception_type"]
        msg = err["exception_message"].strip()
        assert msg.startswith("[PortraitTalk · Face Landmarks] input 'image': "), msg
        assert "no face" in msg and "on_missing" in msg, msg  # what is wrong and the fix
        # the UI
        text = _error_text_in_ui(page, "[PortraitTalk · Face Landmarks] input 'image'")
        page.screenshot(path=str(tmp_path / "faceless_error.png"))
        flat = " ".join(text.split())
        assert " ".join(msg.split()) in flat, f"the UI does not show the whole message {msg!r}; it shows:\n{text}"
        shown_types = re.findall(r"Exception Type:\W*([^\s*]+)", text)
        print(f"[frontend] error UI text (excerpt): {flat[flat.find('PortraitTalk') - 200:][:900]}")
        print(f"[frontend] exception type(s) shown: {shown_types}")
        for t in shown_types:
            assert t == "PortraitTalk.NodeInputError", f"the UI shows the exception type {t!r}"
            assert "/" not in t and "\\" not in t, t
        # 'PortraitTalk.NodeInputError: [PortraitTalk ...' where the UI prefixes the message with its type
        for m in re.finditer(r"(\S+)NodeInputError", text):
            assert "/" not in m.group(1) and "\\" not in m.group(1) and "_x_" not in m.group(1), m.group(0)
        errors = ev.unexpected_errors()
        assert not errors, "JavaScript errors:\n" + "\n".join(errors)
        # the server keeps serving, and runs a good job queued from the same UI
        assert cs.get_json(server, "/system_stats")["system"]
        for _ in range(3):
            page.keyboard.press("Escape")
        page.evaluate(_JS_CLOSE_PANEL)
        page.evaluate(fe.JS_SET_FILES, {"widgets": fe.FILE_WIDGETS, "files": {"LoadImage": "astronaut.png"}})
        entry = cs.wait_history(server, fe.queue_from_ui(page), timeout=300)
        assert entry["status"]["status_str"] == "success", cs.execution_error(entry)
        out = [o for o in cs.output_entries(entry) if o["filename"].endswith(".mp4")][0]
        check_mp4(cs.fetch_output(server, out, tmp_path), 2.0)
        _wait_video_preview(page, out["filename"])
        page.wait_for_timeout(1000)
        layout = fe.check_layout(page, "talking_photo after the good run", tmp_path)
        page.screenshot(path=str(tmp_path / "after_error_good_run.png"))
        assert not layout, "the layout once the mp4 preview shows:\n" + "\n".join(layout)
    finally:
        if ev.external or ev.blocked:
            print(f"\n[frontend] requests to other hosts, blocked: {sorted(set(ev.external) | ev.blocked)}")
        ctx.close()
