"""Running API prompts and UI workflows in the booted ComfyUI: ``execution.PromptExecutor`` with a host stub."""
from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

from .comfy import require_boot
from .errors import PromptExecutionError, PromptValidationError
from .outputs import output_entries
from .widgets import FRONTEND_ONLY_TYPES, MODE_BYPASS, MODE_NEVER, is_upload_combo
from .workflow import load_workflow, node_label, node_widget_layout, set_widget_value, workflow_to_prompt


class _HostServer:
    """The host side that ``server.PromptServer`` provides to ``execution.PromptExecutor`` in ComfyUI:
    the attributes the executor reads and a ``send_sync`` that records the events it emits."""

    def __init__(self, client_id=None):
        self.client_id = client_id
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[Any, Any, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data, sid))

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"node": node_id, "text": text}, sid))


def _validate(execution, prompt_id: str, prompt: dict):
    fn = execution.validate_prompt
    n_params = len(inspect.signature(fn).parameters)
    # 0.3.75: async validate_prompt(prompt_id, prompt, partial_execution_list); older: (prompt_id, prompt)
    # or (prompt)
    args = {1: (prompt,), 2: (prompt_id, prompt)}.get(n_params, (prompt_id, prompt, None))
    res = fn(*args)
    if inspect.isawaitable(res):
        res = asyncio.run(res)
    return res


def _format_node_errors(prompt: dict, node_errors: dict) -> list[str]:
    lines = []
    for nid, info in node_errors.items():
        ct = info.get("class_type") or prompt.get(nid, {}).get("class_type")
        for e in info.get("errors", []):
            lines.append(f"node {nid} ({ct}): {e.get('message')}: {e.get('details')}")
    return lines


def run_prompt(prompt: Mapping, client_id: str | None = None, extra_data: Mapping | None = None,
               prompt_id: str | None = None) -> dict:
    """Validate and execute an API-format prompt in-process; return the executor's history result.

    The prompt is validated with ``execution.validate_prompt`` (async in 0.3.75: ``(prompt_id, prompt,
    partial_execution_list)``) and run by a fresh ``execution.PromptExecutor`` (no cache shared between
    calls, like a restarted server) on the outputs that validated.

    Returns:
        ``{"outputs": {node_id: ui dict}, "meta": {...}, "status": {"status_str", "completed", "messages"},
        "prompt_id": str, "seconds": float}`` -- ``outputs``/``meta`` are ``executor.history_result``, the
        same thing ComfyUI stores in /history.

    Raises:
        PromptValidationError: any node error (even when another output validated), listing node id, class
            and ComfyUI's message.
        PromptExecutionError: a node raised during execution (node id, class, exception type and message;
            ``.details`` holds ComfyUI's execution_error message incl. traceback).
    """
    st = require_boot()
    execution = st.execution
    prompt = copy.deepcopy(dict(prompt))
    prompt_id = prompt_id or str(uuid.uuid4())
    good_outputs = _validated_outputs(execution, prompt_id, prompt)

    server = _HostServer(client_id)
    server.last_prompt_id = prompt_id
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    extra = dict(extra_data or {})
    if client_id is not None:
        extra["client_id"] = client_id
    t0 = time.perf_counter()
    executor.execute(prompt, prompt_id, extra, list(good_outputs))
    seconds = time.perf_counter() - t0
    _raise_if_failed(executor)
    result = dict(executor.history_result)
    result["status"] = {"status_str": "success", "completed": True, "messages": executor.status_messages}
    result["prompt_id"] = prompt_id
    result["seconds"] = seconds
    return result


def _validated_outputs(execution, prompt_id: str, prompt: dict) -> list:
    """The output node ids that ``execution.validate_prompt`` accepts; raises :class:`PromptValidationError` on
    any node error (even when another output validated)."""
    valid = _validate(execution, prompt_id, prompt)
    ok, error, good_outputs, node_errors = valid[0], valid[1], valid[2], (valid[3] if len(valid) > 3 else {})
    if not ok or node_errors:
        lines = _format_node_errors(prompt, node_errors or {})
        if not lines and error:
            lines = [f"{error.get('message')}: {error.get('details')}".rstrip(": ")]
        raise PromptValidationError("ComfyUI rejected the prompt:\n  " + "\n  ".join(lines), error, node_errors)
    return good_outputs


def _raise_if_failed(executor) -> None:
    """Raise :class:`PromptExecutionError` unless the executor's status messages say the prompt succeeded."""
    events = [ev for ev, _ in executor.status_messages]
    err = next((d for ev, d in executor.status_messages if ev in ("execution_error", "execution_interrupted")), None)
    # executor.success is only updated after a node ran; a failure while staging a node leaves it True, so the
    # recorded messages are checked too.
    if err is not None or not executor.success or "execution_success" not in events:
        if err is None:
            raise PromptExecutionError(f"ComfyUI did not finish the prompt (events: {events})", {})
        nid, ct = err.get("node_id"), err.get("node_type")
        msg = (err.get("exception_message") or "interrupted").strip()
        raise PromptExecutionError(
            f"node {nid} ({ct}) failed: {err.get('exception_type', 'interrupted')}: {msg}", err)


def output_files(result: Mapping, types: Iterable[str] = ("output",)) -> list[Path]:
    """Paths of the files listed in the ui outputs of a :func:`run_prompt` result.

    Every ``{"filename", "subfolder", "type"}`` entry (SaveImage ``images``, SaveVideo ``images``, SaveAudio
    ``audio``, ...) whose ``type`` is in ``types`` is resolved with ``folder_paths.get_directory_by_type``.
    """
    st = require_boot()
    found: list[Path] = []
    for x in output_entries(result, types):
        base = st.folder_paths.get_directory_by_type(x["type"])
        if base:
            found.append(Path(base) / (x.get("subfolder") or "") / x["filename"])
    return found


def stage_input_file(src: str | os.PathLike) -> str:
    """Copy a user's file into the ComfyUI input directory under a content-derived unique name.

    Returns the name to put into a LoadImage/LoadAudio/LoadVideo file widget
    (``<stem>-<sha256[:12]><suffix>``; the same content always gets the same name).

    Raises:
        FileNotFoundError: ``src`` does not exist.
    """
    st = require_boot()
    p = Path(src).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"input file {p} does not exist")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    name = f"{p.stem}-{h.hexdigest()[:12]}{p.suffix.lower()}"
    dst = Path(st.folder_paths.get_input_directory()) / name
    if not dst.exists():
        shutil.copyfile(p, dst)
    return name


def _find_nodes(ui: Mapping, key: str) -> list[dict]:
    nodes_list = [n for n in ui["nodes"] if n.get("type") not in FRONTEND_ONLY_TYPES]
    for pred in (lambda n: n.get("title") == key, lambda n: n.get("type") == key, lambda n: str(n.get("id")) == key):
        hit = [n for n in nodes_list if pred(n)]
        if hit:
            return hit
    return []


def upload_widget_name(node: Mapping, upload_key: str | None = None) -> str | None:
    """The name of ``node``'s file widget (the upload combo of LoadImage, LoadAudio, LoadVideo, ...), or None;
    with ``upload_key`` (``"image_upload"``, ``"audio_upload"``, ``"video_upload"``, ...) only an upload combo
    of that kind."""
    for s in node_widget_layout(node):
        if s.kind == "value" and is_upload_combo(s.input_type, s.options) and (
                upload_key is None or s.options.get(upload_key)):
            return s.name
    return None


def upload_nodes(ui_workflow: Mapping, upload_key: str) -> list[dict]:
    """The nodes of ``ui_workflow`` that run (not frontend-only, muted or bypassed) and have a file widget of
    kind ``upload_key`` (see :func:`upload_widget_name`), in workflow order."""
    return [n for n in ui_workflow["nodes"]
            if n.get("type") not in FRONTEND_ONLY_TYPES and n.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS)
            and upload_widget_name(n, upload_key) is not None]


def apply_inputs(ui_workflow: Mapping, inputs: Mapping[str, Any]) -> dict:
    """Return a copy of ``ui_workflow`` with ``inputs`` applied.

    ``inputs`` maps a node title, node type or node id (tried in that order; a type must match one node
    only) to either a file path -- for nodes with an upload combo (LoadImage, LoadAudio, LoadVideo, ...): the
    file is copied into the ComfyUI input dir (:func:`stage_input_file`) and the combo set to it -- or a dict
    ``{widget name: value}``.

    Raises:
        ValueError: no node or several nodes match a key, or a path is given for a node without a file widget.
    """
    ui = load_workflow(ui_workflow)
    for key, value in inputs.items():
        hits = _find_nodes(ui, str(key))
        if not hits:
            raise ValueError(f"no node titled, typed or numbered {key!r} in the workflow; nodes: "
                             f"{[(n.get('id'), n.get('type'), n.get('title')) for n in ui['nodes']]}")
        if len(hits) > 1:
            raise ValueError(f"{key!r} matches {len(hits)} nodes ({[n['id'] for n in hits]}); give each a "
                             f"unique title in the editor and use the title")
        node = hits[0]
        if isinstance(value, Mapping):
            for wname, wval in value.items():
                set_widget_value(node, wname, wval)
            continue
        wname = upload_widget_name(node)
        if wname is None:
            raise ValueError(f"{node_label(node)} has no file widget; pass a dict {{widget: value}} instead "
                             f"of {value!r}")
        set_widget_value(node, wname, stage_input_file(value))
    return ui


def run_workflow(workflow: str | os.PathLike | Mapping, inputs: Mapping[str, Any] | None = None,
                 out_dir: str | os.PathLike | None = None, client_id: str | None = None) -> list[Path]:
    """Load a UI workflow, apply ``inputs`` (see :func:`apply_inputs`), convert, validate, run it.

    Returns:
        paths of the files the output nodes saved (under the ComfyUI output dir, or copies in ``out_dir``
        when given), in output-node order.

    Raises:
        the errors of :func:`apply_inputs`, :func:`workflow_to_prompt` and :func:`run_prompt`.
    """
    require_boot()
    ui = apply_inputs(load_workflow(workflow), inputs or {})
    prompt = workflow_to_prompt(ui)
    # the frontend sends the workflow along so that SaveVideo/SaveImage embed it in the file metadata
    result = run_prompt(prompt, client_id=client_id, extra_data={"extra_pnginfo": {"workflow": ui}})
    files = output_files(result)
    if out_dir is None:
        return files
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        dst = out / f.name
        shutil.copyfile(f, dst)
        copied.append(dst)
    return copied
