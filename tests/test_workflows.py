"""Tests of the in-process ComfyUI harness (``ptalk_harness``) on the real ComfyUI 0.3.75 schemas.

* every shipped workflow (workflows/*.json) passes ``check_workflow`` and, converted with
  ``workflow_to_prompt``, ComfyUI's own ``execution.validate_prompt``;
* every shipped workflow is laid out for a newcomer: one Markdown note (what to load, which model goes in
  which folder, what to expect on a CPU) at the top left, a numbered group per stage with every node inside
  exactly one group, no overlapping nodes or groups, links running left to right, a fit view that keeps the
  text; every model-file widget belongs to a loader with a known models folder that the note names, and no
  model metadata in a file fails the frontends' workflow schema;
* a core-only UI workflow written the way the frontend saves it (Reroute, PrimitiveNode, a bypassed and a
  muted node, a Note, a seed widget with its control value) converts to the exact API prompt, validates,
  and runs end to end through ``run_workflow`` into a PNG and an mp4 with an audio stream;
* the checker and ComfyUI's validation catch an unknown node type, an IMAGE link into an AUDIO input, an
  INT out of range, a bad combo value, a missing required input and inconsistent link ids; a node that
  fails at run time is reported with its id and class;
* the widget layout agrees with the workflows shipped in ComfyUI's own template package.
"""
from __future__ import annotations

import copy
import glob
import importlib.util
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import ptalk_harness as ch

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))

EMPTY_COLOR = 0x3366CC  # EmptyImage colour (R=0x33, G=0x66, B=0xCC)


# --------------------------------------------------------------------------------------------------------
# a core-only UI workflow, in the format ComfyUI frontend 1.32 saves (workflow version 0.4)
# --------------------------------------------------------------------------------------------------------
def _w(name, typ):
    return {"name": name, "type": typ, "widget": {"name": name}, "link": None}


def core_workflow(image_name: str, audio_name: str) -> dict:
    """LoadImage -> ImageScale -> Reroute -> SaveImage (+ muted PreviewImage);
    EmptyImage -> ImageInvert (bypassed) -> CreateVideo(fps from a PrimitiveNode, audio from LoadAudio)
    -> SaveVideo; an unconnected RandomNoise (seed + control widget) and a Note."""
    nodes = [
        {"id": 1, "type": "LoadImage", "title": "Photo", "mode": 0, "inputs": [_w("image", "COMBO")],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": []}],
         "properties": {"Node name for S&R": "LoadImage"}, "widgets_values": [image_name, "image"]},
        {"id": 2, "type": "ImageScale", "mode": 0,
         "inputs": [{"name": "image", "type": "IMAGE", "link": 1}, _w("upscale_method", "COMBO"), _w("width", "INT"),
                    _w("height", "INT"), _w("crop", "COMBO")],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2, 9]}],
         "widgets_values": ["bilinear", 128, 96, "disabled"]},
        {"id": 3, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 2}],
         "outputs": [{"name": "", "type": "IMAGE", "links": [3]}],
         "properties": {"showOutputText": False, "horizontal": False}},
        {"id": 4, "type": "SaveImage", "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 3}, _w("filename_prefix", "STRING")],
         "outputs": [], "widgets_values": ["ptalk_test/still"]},
        {"id": 5, "type": "EmptyImage", "mode": 0,
         "inputs": [_w("width", "INT"), _w("height", "INT"), _w("batch_size", "INT"), _w("color", "INT")],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}],
         "widgets_values": [64, 48, 25, EMPTY_COLOR]},
        {"id": 6, "type": "ImageInvert", "mode": 4, "inputs": [{"name": "image", "type": "IMAGE", "link": 4}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [5]}], "widgets_values": []},
        {"id": 7, "type": "LoadAudio", "title": "Speech", "mode": 0, "inputs": [_w("audio", "COMBO")],
         "outputs": [{"name": "AUDIO", "type": "AUDIO", "links": [6]}], "widgets_values": [audio_name, None, None]},
        {"id": 8, "type": "CreateVideo", "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 5},
                    {"name": "audio", "type": "AUDIO", "shape": 7, "link": 6},
                    {"name": "fps", "type": "FLOAT", "widget": {"name": "fps"}, "link": 7}],
         "outputs": [{"name": "VIDEO", "type": "VIDEO", "links": [8]}], "widgets_values": [12]},
        {"id": 9, "type": "PrimitiveNode", "title": "fps", "mode": 0, "inputs": [],
         "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [7], "widget": {"name": "fps"}}],
         "properties": {"Run widget replace on values": False}, "widgets_values": [25, "fixed"]},
        {"id": 10, "type": "SaveVideo", "mode": 0,
         "inputs": [{"name": "video", "type": "VIDEO", "link": 8}, _w("filename_prefix", "STRING"),
                    _w("format", "COMBO"), _w("codec", "COMBO")],
         "outputs": [], "widgets_values": ["ptalk_test/video", "auto", "auto"]},
        {"id": 11, "type": "PreviewImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 9}],
         "outputs": [], "widgets_values": []},
        {"id": 12, "type": "RandomNoise", "mode": 0, "inputs": [_w("noise_seed", "INT")],
         "outputs": [{"name": "NOISE", "type": "NOISE", "links": []}], "widgets_values": [123456789, "randomize"]},
        {"id": 13, "type": "Note", "mode": 0, "inputs": [], "outputs": [], "widgets_values": ["harness test graph"]},
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 5, 0, 6, 0, "IMAGE"],
             [5, 6, 0, 8, 0, "IMAGE"], [6, 7, 0, 8, 1, "AUDIO"], [7, 9, 0, 8, 2, "FLOAT"], [8, 8, 0, 10, 0, "VIDEO"],
             [9, 2, 0, 11, 0, "IMAGE"]]
    return {"id": "00000000-0000-4000-8000-000000000001", "revision": 0, "last_node_id": 13, "last_link_id": 9,
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def expected_prompt(image_name: str, audio_name: str) -> dict:
    """What the real frontend's ``graphToPrompt`` sends for :func:`core_workflow` (seen in frontend 1.32.9 on
    ComfyUI 0.3.75 and 1.49.6 on ComfyUI 0.33)."""
    p = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 128,
                                                     "height": 96, "crop": "disabled"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ptalk_test/still"}},
        "5": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 25,
                                                     "color": EMPTY_COLOR}},
        "7": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
        "8": {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "audio": ["7", 0], "fps": 25}},
        "10": {"class_type": "SaveVideo", "inputs": {"video": ["8", 0], "filename_prefix": "ptalk_test/video",
                                                     "format": "auto", "codec": "auto"}},
        "12": {"class_type": "RandomNoise", "inputs": {"noise_seed": 123456789}},
    }
    if ch.frontend_version() < (1, 49):  # 1.32 sends the display-only audioUI widget
        p["7"]["inputs"]["audioUI"] = ""
    else:  # ComfyUI 0.33: Create Video's bit_depth (default filled in), Save Video's format is a dynamic combo
        p["8"]["inputs"]["bit_depth"] = 8
        p["10"]["inputs"]["format.codec"] = "auto"
    return p


def _strip_meta(prompt: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in prompt.items()}


def _validate(comfy, prompt: dict):
    """ComfyUI 0.3.75: ``async validate_prompt(prompt_id, prompt, partial_execution_list)``."""
    import asyncio
    return asyncio.run(comfy.execution.validate_prompt("test", copy.deepcopy(prompt), None))


@pytest.fixture(scope="module")
def staged(comfy, shared_data):
    """Real media copied into the ComfyUI input dir: (image name, audio name, image path, audio path)."""
    img, aud = shared_data / "photos" / "astronaut.png", shared_data / "audio" / "beckett.wav"
    return ch.stage_input_file(img), ch.stage_input_file(aud), img, aud


# --------------------------------------------------------------------------------------------------------
# shipped workflows
# --------------------------------------------------------------------------------------------------------
def test_workflows_are_shipped():
    assert WORKFLOWS, "workflows/ holds no *.json; `make demo` needs workflows/talking_photo.json"


def _stage_for_upload_nodes(ui: dict, shared_data: Path) -> dict:
    """Point every upload-combo node at a real file of its kind (the file names saved in a workflow refer
    to the author's ComfyUI input folder)."""
    by_kind = {"image_upload": shared_data / "photos" / "astronaut.png",
               "animated_image_upload": shared_data / "photos" / "astronaut.png",
               "audio_upload": shared_data / "audio" / "jfk.flac",
               "video_upload": sorted((shared_data / "video").glob("*.mpg"))[0]}
    inputs = {}
    for n in ui["nodes"]:
        if n.get("type") in ch.FRONTEND_ONLY_TYPES or n.get("mode", 0) in (2, 4):
            continue
        for s in ch.widget_layout(n["type"]):
            kind = next((k for k in by_kind if s.kind == "value" and s.options.get(k)), None)
            if kind:
                inputs[str(n["id"])] = {s.name: ch.stage_input_file(by_kind[kind])}
    return ch.apply_inputs(ui, inputs)


#: Model-file widgets of shipped workflows: (node type, widget) → the fixture giving the test's random model.
MODEL_WIDGETS = {("CheckpointLoaderSimple", "ckpt_name"): "tiny_sd15",
                 ("PTalkIdentityNetLoader", "weights"): "tiny_identitynet",
                 ("PTalkAnimateNetLoader", "weights"): "tiny_animatenet"}


def _stage_models(ui: dict, request) -> dict:
    """Point model-file combos (the author's SD1.5 checkpoint, IdentityNet weights) at the tiny random models
    the tests build, since no real weights exist offline."""
    inputs = {}
    for n in ui["nodes"]:
        for (node_type, widget), fixture in MODEL_WIDGETS.items():
            if n.get("type") == node_type and n.get("mode", 0) not in (2, 4):
                inputs[str(n["id"])] = {widget: request.getfixturevalue(fixture).name}
    return ch.apply_inputs(ui, inputs) if inputs else ui


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflow_checks_and_validates(comfy, shared_data, path, request):
    ui = _stage_models(ch.load_workflow(path), request)
    assert ch.check_workflow(ui) == []
    prompt = ch.workflow_to_prompt(_stage_for_upload_nodes(ui, shared_data))
    ok, error, outputs, node_errors = _validate(comfy, prompt)
    assert ok and not node_errors, (error, node_errors)
    assert outputs, "no output node validated"


# --------------------------------------------------------------------------------------------------------
# shipped workflows as a newcomer meets them in the frontend (1.32.9 of ComfyUI 0.3.75, 1.49.6 of 0.33.0)
# --------------------------------------------------------------------------------------------------------
#: LiteGraph.NODE_TITLE_HEIGHT in both frontends: a node's title bar is drawn above ``pos``.
NODE_TITLE_HEIGHT = 30
#: Node types that are notes (no group needed); the headless runner drops them (FRONTEND_ONLY_TYPES).
NOTE_TYPES = {"Note", "MarkdownNote"}
#: What the frontend takes for a model file in a combo (1.49.6 ``isModelFileName``): it lists such widget
#: values as missing models, filed under a folder from its own table of core loaders or from the node's
#: ``properties.models`` entry of the same ``name`` (anything else lands under "Unknown").
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")
#: (node type, widget) → the ``ComfyUI/models/<folder>`` the loader reads. IdentityNet Loader's options are
#: ``portraittalk/<file>`` / ``ipadapter/<file>``: its folder is the value's first path component.
MODEL_DIRECTORIES = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
                     ("ControlNetLoader", "control_net_name"): "controlnet",
                     ("DiffControlNetLoader", "control_net_name"): "controlnet",
                     ("VAELoader", "vae_name"): "vae",
                     ("LoraLoader", "lora_name"): "loras",
                     ("LoraLoaderModelOnly", "lora_name"): "loras",
                     ("CLIPVisionLoader", "clip_name"): "clip_vision",
                     ("UpscaleModelLoader", "model_name"): "upscale_models",
                     ("PTalkAnimateNetLoader", "weights"): "portraittalk",
                     ("PTalkIdentityNetLoader", "weights"): None}
#: Fit view (``Comfy.Canvas.FitView``, also what a file without ``extra.ds`` opens at): scale = 0.75 ×
#: min(canvas w / bounds w, canvas h / bounds h) over the node boxes + 10 px. Below 8 px / NODE_TEXT_SIZE 14
#: (LiteGraph's default ``min_font_size_for_lod``, device pixel ratio 1) nodes lose their text and DOM widgets
#: (the note) are hidden.
FIT_ZOOM, LOW_QUALITY_SCALE, CANVAS = 0.75, 8 / 14, (1600, 1000)


def _box(n: dict) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of a node as drawn: its size plus the title bar above ``pos``."""
    (x, y), (w, h) = n["pos"], n["size"]
    return x, y - NODE_TITLE_HEIGHT, x + w, y + h


def _group_box(g: dict) -> tuple[float, float, float, float]:
    x, y, w, h = g["bounding"]
    return x, y, x + w, y + h


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _group_content(g: dict) -> tuple[float, float, float, float]:
    """A group's box below its title band (1.49.6: NODE_TITLE_HEIGHT; 1.32.9: font_size × 1.4)."""
    x0, y0, x1, y1 = _group_box(g)
    return x0, y0 + max(NODE_TITLE_HEIGHT, g.get("font_size", 24) * 1.4), x1, y1


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflow_has_a_note_and_a_group_per_stage(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1, "one Markdown note per workflow"
    text = notes[0]["widgets_values"][0]
    assert isinstance(text, str) and len(text.split()) >= 30, text
    assert "**Load:**" in text and "On a CPU" in text, "the note says what to load and what to expect on a CPU"
    groups = ui.get("groups") or []
    assert len(groups) >= 3, "a group per stage"
    titles = [g["title"] for g in groups]
    assert len(set(titles)) == len(titles), titles
    for g in groups:
        assert g["title"].strip() and g.get("color"), g
        assert len(g["bounding"]) == 4 and g["bounding"][2] > 0 and g["bounding"][3] > 0, g
    # numbered stages 1 · …, 2 · …, … in order, the inputs first
    numbers = sorted(int(t.split(" · ", 1)[0]) for t in titles)
    assert numbers == list(range(1, len(groups) + 1)), titles
    assert next(t for t in titles if t.startswith("1 · ")) == "1 · Inputs", titles
    # no saved view: both frontends then open the file at fit view
    assert "ds" not in (ui.get("extra") or {})


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflow_nodes_do_not_overlap(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    nodes = ui["nodes"]
    assert not [n["id"] for n in nodes if (n.get("flags") or {}).get("collapsed")], "collapsed nodes hide their widgets"
    boxes = [(n["id"], n["type"], _box(n)) for n in nodes]
    clashes = [(a[:2], b[:2]) for i, a in enumerate(boxes) for b in boxes[i + 1:] if _overlap(a[2], b[2])]
    assert not clashes, clashes
    groups = ui["groups"]
    clashes = [(a["title"], b["title"]) for i, a in enumerate(groups) for b in groups[i + 1:]
               if _overlap(_group_box(a), _group_box(b))]
    assert not clashes, f"overlapping groups {clashes}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflow_nodes_lie_inside_exactly_one_group(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for n in ui["nodes"]:
        box = _box(n)
        inside = [g["title"] for g in ui["groups"] if _inside(box, _group_content(g))]
        touching = [g["title"] for g in ui["groups"] if _overlap(box, _group_box(g)) and g["title"] not in inside]
        if touching:
            problems.append(f"node {n['id']} ({n['type']}) overlaps group(s) {touching} it is not in")
        if n["type"] in NOTE_TYPES:
            if len(inside) > 1:
                problems.append(f"note {n['id']} lies in {inside}")
        elif len(inside) != 1:
            problems.append(f"node {n['id']} ({n['type']}) lies inside {len(inside)} groups: {inside}")
    assert not problems, problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_shipped_workflow_reads_left_to_right_at_fit_view(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in ui["nodes"]}
    backwards = []
    for lk in ui["links"]:
        src, dst = nodes[lk[1]], nodes[lk[3]]
        (sx, sy), (dx, dy) = src["pos"], dst["pos"]
        if not (sx < dx or (sx == dx and sy < dy)):  # rightwards, or down the same column
            backwards.append((lk[0], src["type"], dst["type"]))
    assert not backwards, f"links running right to left / upwards: {backwards}"
    # the first thing at the top left is the note
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert notes, "no note"
    note = notes[0]
    x0 = min(_box(n)[0] for n in ui["nodes"]); y0 = min(_box(n)[1] for n in ui["nodes"])
    assert _box(note)[:2] == (x0, y0), "the note sits at the top left"
    # the whole graph at fit view on a 1600x1000 canvas keeps its text (above the low-quality zoom)
    x1 = max(_box(n)[2] for n in ui["nodes"]); y1 = max(_box(n)[3] for n in ui["nodes"])
    w, h = x1 - x0 + 20, y1 - y0 + 20
    scale = FIT_ZOOM * min(CANVAS[0] / w, CANVAS[1] / h)
    assert scale > LOW_QUALITY_SCALE, f"fit view at {scale:.3f}: the frontend would draw nodes without text"


def _widget_values(n: dict) -> dict:
    """Widget name -> value of workflow node ``n``, as the converter reads them (inputs unlinked)."""
    single = {"nodes": [dict(n, inputs=[dict(i, link=None) for i in n.get("inputs") or []], mode=0)], "links": []}
    return ch.workflow_to_prompt(single)[str(n["id"])]["inputs"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_model_widgets_name_their_folder(comfy, path):
    """Every widget value the frontend takes for a model file belongs to a loader whose ``ComfyUI/models``
    folder is known (MODEL_DIRECTORIES), a folder ComfyUI registers, and the note tells where the file goes.

    Model metadata saved in the file (``properties.models``, top-level ``models``) must match both frontends'
    workflow schema, which requires ``name``, ``directory`` and a download ``url``: an entry without one makes
    frontend 1.32 (schema validation on by default) show "Invalid workflow against zod schema" on every open,
    and 1.32 ignores it anyway. The pack's own loaders get no entry: their weights (AnimateNet, a trained
    IdentityNet) are published nowhere, and IdentityNet Loader's ``ipadapter/…`` values are no download paths."""
    ui = json.loads(path.read_text(encoding="utf-8"))
    note = "".join(str(n["widgets_values"][0]) for n in ui["nodes"] if n["type"] == "MarkdownNote")
    problems, seen = [], 0
    entries = [("workflow models", m) for m in ui.get("models") or []]
    for n in ui["nodes"]:
        entries += [(f"node {n['id']} ({n['type']})", m) for m in (n.get("properties") or {}).get("models") or []]
        if n["type"] in ch.FRONTEND_ONLY_TYPES:
            continue
        for widget, value in _widget_values(n).items():
            if not (isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)):
                continue
            seen += 1
            if (n["type"], widget) not in MODEL_DIRECTORIES:
                problems.append(f"node {n['id']} ({n['type']}).{widget} = {value!r}: add its folder to MODEL_DIRECTORIES")
                continue
            folder = MODEL_DIRECTORIES[(n["type"], widget)] or value.split("/", 1)[0]
            if folder not in comfy.folder_paths.folder_names_and_paths:
                problems.append(f"node {n['id']}: {folder!r} is no ComfyUI model folder")
            if f"models/{folder}/" not in note:
                problems.append(f"the note does not say that {value!r} goes in ComfyUI/models/{folder}/")
    for where, m in entries:
        url = str(m.get("url") or "")
        if not (m.get("name") and m.get("directory") and url.startswith(("https://", "http://"))):
            problems.append(f"{where}: model metadata {m} is not what the frontends' schema accepts (name, url, directory)")
        if where.split("(")[-1].startswith("PTalk"):
            problems.append(f"{where}: metadata for the pack's own weights {m}")
    assert not problems, problems
    loaders = any(t in (n["type"] for n in ui["nodes"]) for t, _ in MODEL_DIRECTORIES)
    assert (seen > 0) == loaders, f"{seen} model-file widgets found"


# --------------------------------------------------------------------------------------------------------
# conversion of the core workflow
# --------------------------------------------------------------------------------------------------------
def test_core_workflow_converts_to_the_api_prompt(comfy, staged):
    image_name, audio_name = staged[:2]
    ui = core_workflow(image_name, audio_name)
    assert ch.check_workflow(ui) == []
    prompt = ch.workflow_to_prompt(ui)
    assert _strip_meta(prompt) == expected_prompt(image_name, audio_name)
    assert prompt["1"]["_meta"]["title"] == "Photo"
    assert prompt["8"]["_meta"]["title"] == "Create Video"  # V3 display name
    ok, error, outputs, node_errors = _validate(comfy, prompt)
    assert ok and not node_errors, (error, node_errors)
    assert sorted(outputs) == ["10", "4"]


def test_links_in_object_form_and_old_style_inputs_convert_the_same(comfy, staged):
    image_name, audio_name = staged[:2]
    ui = core_workflow(image_name, audio_name)
    # workflow schema 1 stores links as objects; frontends before 1.16 listed only socket inputs
    ui["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), lk))
                   for lk in ui["links"]]
    for n in ui["nodes"]:
        if n["type"] != "CreateVideo":
            n["inputs"] = [i for i in n.get("inputs", []) if "widget" not in i]
    assert ch.check_workflow(ui) == []
    assert _strip_meta(ch.workflow_to_prompt(ui)) == expected_prompt(image_name, audio_name)


def test_bypassed_node_without_matching_input_leaves_the_input_unconnected(comfy, staged):
    ui = core_workflow(*staged[:2])
    # bypass LoadAudio's consumer path: bypassing a source node (no inputs) drops the link
    next(n for n in ui["nodes"] if n["id"] == 7)["mode"] = 4
    prompt = ch.workflow_to_prompt(ui)
    assert "7" not in prompt and "audio" not in prompt["8"]["inputs"]
    assert prompt["8"]["inputs"]["images"] == ["5", 0]


def test_set_widget_value_respects_the_frontend_layout(comfy):
    ui = core_workflow("a.png", "b.wav")
    noise = next(n for n in ui["nodes"] if n["type"] == "RandomNoise")
    ch.set_widget_value(noise, "noise_seed", 7)
    assert noise["widgets_values"] == [7, "randomize"]
    with pytest.raises(ValueError, match="no widget 'seed'"):
        ch.set_widget_value(noise, "seed", 1)
    assert [(s.name, s.kind) for s in ch.widget_layout("LoadAudio")] == [
        ("audio", "value"), ("audio", "upload"), ("audioUI", "ui")]


# --------------------------------------------------------------------------------------------------------
# negative cases: the checker and ComfyUI's validation must catch them
# --------------------------------------------------------------------------------------------------------
def _node(ui, nid):
    return next(n for n in ui["nodes"] if n["id"] == nid)


def _has(problems, *needles):
    return any(all(s in p for s in needles) for p in problems)


def test_unknown_node_type_is_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    _node(ui, 2)["type"] = "ImageScaleTypo"
    problems = ch.check_workflow(ui)
    assert _has(problems, "node 2", "'ImageScaleTypo'", "not registered"), problems
    with pytest.raises(ch.UnknownNodeTypeError, match=r"node 2 has type 'ImageScaleTypo'"):
        ch.workflow_to_prompt(ui)


def test_image_into_audio_input_is_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    # rewire CreateVideo.audio (target slot 1) from LoadAudio to ImageScale's IMAGE output
    lk = next(lk for lk in ui["links"] if lk[0] == 6)
    lk[1], lk[2], lk[5] = 2, 0, "IMAGE"
    _node(ui, 2)["outputs"][0]["links"].append(6)
    _node(ui, 7)["outputs"][0]["links"] = []
    problems = ch.check_workflow(ui)
    assert _has(problems, "link 6", "IMAGE", "'audio'", "takes AUDIO"), problems
    prompt = ch.workflow_to_prompt(ui)
    with pytest.raises(ch.PromptValidationError, match=r"node 8 \(CreateVideo\).*mismatch") as ei:
        ch.run_prompt(prompt)
    assert ei.value.node_errors["8"]["errors"][0]["type"] == "return_type_mismatch"


def test_int_widget_out_of_range_is_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    _node(ui, 2)["widgets_values"][1] = 20000  # ImageScale.width, max is MAX_RESOLUTION = 16384
    problems = ch.check_workflow(ui)
    assert _has(problems, "node 2", "'width'", "20000", "maximum 16384"), problems
    with pytest.raises(ch.PromptValidationError, match=r"node 2 \(ImageScale\).*bigger than max"):
        ch.run_prompt(ch.workflow_to_prompt(ui))


def test_bad_combo_values_are_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    _node(ui, 2)["widgets_values"][0] = "bogus-resampler"      # V1 list combo
    # SaveVideo's codec: a V3 io.Combo in ComfyUI 0.3.75; in 0.33 the third value is the dynamic combo
    # format's child widget 'format.codec'
    _node(ui, 10)["widgets_values"][2] = "vp9"
    codec = "'format.codec'" if "format.codec" in ch.workflow_to_prompt(core_workflow(*staged[:2]))["10"]["inputs"] \
        else "'codec'"
    problems = ch.check_workflow(ui)
    assert _has(problems, "node 2", "'upscale_method'", "'bogus-resampler'", "not one of"), problems
    assert _has(problems, "node 10", codec, "'vp9'", "not one of"), problems
    with pytest.raises(ch.PromptValidationError, match=r"node 2 \(ImageScale\).*Value not in list"):
        ch.run_prompt(ch.workflow_to_prompt(ui))


def test_wrong_widget_types_and_control_values_are_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    _node(ui, 5)["widgets_values"][2] = 2.5          # EmptyImage.batch_size must be an INT
    _node(ui, 12)["widgets_values"][1] = "sometimes"  # RandomNoise control_after_generate
    _node(ui, 4)["widgets_values"][0] = 17           # SaveImage.filename_prefix must be a STRING
    problems = ch.check_workflow(ui)
    assert _has(problems, "node 5", "'batch_size'", "non-integer"), problems
    assert _has(problems, "node 12", "'sometimes'", "control_after_generate"), problems
    assert _has(problems, "node 4", "'filename_prefix'", "non-string"), problems


def test_missing_required_input_and_broken_link_ids_are_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    _node(ui, 8)["inputs"][0]["link"] = None                    # CreateVideo.images unconnected ...
    _node(ui, 4)["inputs"][0]["link"] = 99                      # ... SaveImage points at a missing link
    problems = ch.check_workflow(ui)
    assert _has(problems, "node 8", "required input 'images'", "not connected"), problems
    assert _has(problems, "link 5", "refers to link None"), problems
    assert _has(problems, "node 4", "link 99", "not in 'links'"), problems
    with pytest.raises(ch.WorkflowFormatError, match="link 99"):
        ch.workflow_to_prompt(ui)


def test_workflow_without_output_node_is_caught(comfy, staged):
    ui = core_workflow(*staged[:2])
    for n in ui["nodes"]:
        if n["type"] in ("SaveImage", "SaveVideo"):
            n["mode"] = 2
    assert _has(ch.check_workflow(ui), "no active output node")


def test_execution_failure_names_the_node(comfy, staged, tmp_path):
    image_name = staged[0]
    # a PNG under an audio name: it passes LoadAudio's file-exists validation and fails when decoded
    fake = tmp_path / "not_audio.wav"
    shutil.copyfile(staged[2], fake)
    prompt = _strip_meta(ch.workflow_to_prompt(core_workflow(image_name, ch.stage_input_file(fake))))
    with pytest.raises(ch.PromptExecutionError, match=r"node 7 \(LoadAudio\) failed") as ei:
        ch.run_prompt(prompt)
    assert ei.value.details.get("traceback")


# --------------------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------------------
def test_core_workflow_runs_end_to_end(comfy, shared_data, tmp_path):
    wf_path = tmp_path / "core.json"
    wf_path.write_text(json.dumps(core_workflow("placeholder.png", "placeholder.wav")))
    photo, speech = shared_data / "photos" / "astronaut.png", shared_data / "audio" / "beckett.wav"
    files = ch.run_workflow(wf_path, {"Photo": photo, "Speech": speech}, out_dir=tmp_path / "out")
    assert sorted(f.suffix for f in files) == [".mp4", ".png"]
    png = next(f for f in files if f.suffix == ".png")
    mp4 = next(f for f in files if f.suffix == ".mp4")

    # ImageScale's widget values reached the node: 128 x 96, still the astronaut's colours
    still = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert still.shape == (96, 128, 3)
    src = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float64)
    assert np.abs(still.mean(axis=(0, 1)) - src.mean(axis=(0, 1))).max() < 8

    with av.open(str(mp4)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        vs = c.streams.video[0]
        assert (vs.codec_context.width, vs.codec_context.height) == (64, 48)
        assert float(vs.average_rate) == pytest.approx(25.0)  # the PrimitiveNode's 25, not the stale 12
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 25
    # the bypassed ImageInvert passed the EmptyImage colour through unchanged
    rgb = np.mean([f.reshape(-1, 3).mean(axis=0) for f in frames], axis=0)
    assert np.abs(rgb - [0x33, 0x66, 0xCC]).max() < 10, rgb

    with av.open(str(mp4)) as c:
        assert c.streams.audio[0].rate == 16000
        # SaveVideo's AAC stream is stereo even for mono input (PyAV's default layout); take channel 0
        pcm = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    with av.open(str(speech)) as c:
        assert c.streams.audio[0].channels == 1
        ref = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float64)
    if np.abs(ref).max() > 2:  # s16 source
        ref = ref / 32768.0
    # 25 frames at 25 fps = 1 s: the first second of beckett.wav, through AAC
    assert 0.9 * 16000 <= len(pcm) <= 1.2 * 16000
    a, r = pcm[:15000].astype(np.float64), ref[:15000]
    # normalised cross-correlation, decoded[k + lag] vs source[k], lag 0..2048 (room for an encoder delay)
    xc = np.fft.irfft(np.fft.rfft(a, 2 * len(a)) * np.conj(np.fft.rfft(r, 2 * len(a))))[:2049]
    assert xc.max() / (np.linalg.norm(a) * np.linalg.norm(r)) > 0.95


def test_run_prompt_result_lists_saved_files(comfy, staged):
    prompt = _strip_meta(ch.workflow_to_prompt(core_workflow(*staged[:2])))
    res = ch.run_prompt(prompt)
    assert res["status"]["completed"] and res["status"]["status_str"] == "success"
    assert set(res["outputs"]) == {"4", "10"}
    files = ch.output_files(res)
    assert len(files) == 2 and all(f.is_file() for f in files)
    assert all(Path(comfy.output_dir) in f.parents for f in files)


# --------------------------------------------------------------------------------------------------------
# the widget layout agrees with the frontend's own saved workflows
# --------------------------------------------------------------------------------------------------------
def _template_nodes():
    spec = importlib.util.find_spec("comfyui_workflow_templates")
    if spec is None:
        return []
    site = Path(spec.submodule_search_locations[0]).parent
    out = []
    for f in sorted(glob.glob(str(site / "comfyui_workflow_templates*" / "**" / "*.json"), recursive=True)):
        try:
            d = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("nodes"), list):
            out += [(Path(f).name, n) for n in d["nodes"] if isinstance(n, dict)]
    return out


def test_widget_layout_matches_comfyui_templates(comfy):
    """ComfyUI's workflow templates package (saved by the real frontend) is the reference for how
    widgets_values are laid out: every node of a core type converts into values that fit its schema."""
    nodes = _template_nodes()
    if not nodes:
        pytest.skip("comfyui_workflow_templates is not installed (it ships with ComfyUI's requirements)")
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    checked, bad = 0, []
    for fname, n in nodes:
        t = n.get("type")
        if t not in mappings or t in ch.FRONTEND_ONLY_TYPES or not isinstance(n.get("widgets_values"), list):
            continue
        single = {"nodes": [dict(n, inputs=[dict(i, link=None) for i in n.get("inputs") or []], mode=0)],
                  "links": []}
        values = ch.workflow_to_prompt(single)[str(n["id"])]["inputs"]
        layout = ch.node_widget_layout(n)
        # frontend-only 3D/recorder widgets: not modelled (Load3D's model/extra-resource upload buttons come before
        # its width/height in frontend 1.49)
        if t in ("Preview3D", "SaveGLB", "RecordAudio", "Load3D"):
            continue
        for s in layout:
            if s.kind != "value" or s.name not in values:
                continue
            v = values[s.name]
            if s.input_type == "INT" and (isinstance(v, bool) or not isinstance(v, int)):
                bad.append((fname, t, s.name, v))
            elif s.input_type == "FLOAT" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                bad.append((fname, t, s.name, v))
            elif s.input_type == "BOOLEAN" and not isinstance(v, bool):
                bad.append((fname, t, s.name, v))
            elif isinstance(v, str) and v in ch.CONTROL_VALUES and s.input_type != "STRING":
                opts = s.input_type if isinstance(s.input_type, (list, tuple)) else s.options.get("options") or []
                if v not in opts:
                    bad.append((fname, t, s.name, v))
        checked += 1
    assert checked > 500, checked
    assert not bad, bad[:10]
