"""How code outside ComfyUI imports this pack: as ``portraittalk``, one copy shared with ComfyUI.

ComfyUI's ``nodes.load_custom_node(<dir>)`` imports a custom-node directory as a package named after its path
(``str(<dir>).replace(".", "_x_")``, e.g. ``/work/ComfyUI-PortraitTalk``), and the pack's modules live under that
name (``<that>.ptalk_models.render``). Tests, benchmarks, trainers and the headless runner must use *those*
module objects: a second copy of the engine would make ``isinstance`` checks between a test's ``FaceLandmarks``
and the nodes' fail, and would load every module twice.

So the tests and tools write::

    from portraittalk.ptalk_models.landmarks import FaceLandmarks
    from portraittalk.nodes.glue.errors import NodeInputError

and ``portraittalk[.x.y]`` resolves, through the import hook below, to ``<pack module>[.x.y]``: the very
modules ComfyUI loads (ComfyUI loading the pack later re-executes only the root ``__init__.py``; every
submodule is found in ``sys.modules`` and shared). The repository root itself is never put on ``sys.path``
(its ``nodes/`` package would shadow ComfyUI's top-level ``nodes`` module).

The hook is installed at interpreter start by the ``portraittalk.pth`` file that ``scripts/setup_env.sh``
writes into the virtual environment (the mechanism of an editable install: a path line for ``harness/``, and an
``import`` line calling :func:`install`). ``portraittalk.ptalk_models`` (the engine) needs no ComfyUI;
``portraittalk.nodes`` imports ``comfy_api``, so boot ComfyUI first (:func:`ptalk_harness.boot`, or
:func:`ptalk_harness.prepare` to only make it importable).

This module imports only ``os``, ``sys`` and ``importlib`` at start (it runs at every interpreter start in the
venv); the rest is imported on first use of the alias.
"""
from __future__ import annotations

import importlib
import os
import sys

#: Root of this custom-node pack (the directory holding ``__init__.py``, ``nodes/``, ``ptalk_models/``), a str
#: (``ptalk_harness.REPO_ROOT`` is the same as a ``pathlib.Path``; pathlib is not imported here, see below).
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
#: The ``sys.modules`` name ComfyUI's ``nodes.load_custom_node`` gives the pack when loaded from ``REPO_DIR``.
PACK_MODULE = REPO_DIR.replace(".", "_x_")
#: The import name of the pack outside ComfyUI.
ALIAS = "portraittalk"


def import_pack():
    """The pack's root package under :data:`PACK_MODULE`, imported the way ``load_custom_node`` does (from
    ``REPO_ROOT/__init__.py``, as a package) when ComfyUI has not loaded it yet. Importing the root does not
    import ComfyUI (the pack's ``__init__.py`` imports ``comfy_api`` only when ComfyUI asks for its nodes)."""
    if PACK_MODULE not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location(PACK_MODULE, os.path.join(REPO_DIR, "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACK_MODULE]
            raise
    return sys.modules[PACK_MODULE]


class _PackAlias:
    """``import portraittalk[.x]`` → the module ``<PACK_MODULE>[.x]`` (imported on first use).

    A meta-path finder and loader by protocol (``find_spec`` / ``create_module`` / ``exec_module``); not derived
    from ``importlib.abc``, whose import costs ~20 ms at every interpreter start."""

    def __init__(self):
        self._real_specs: dict = {}

    def find_spec(self, name, path=None, target=None):
        if name == ALIAS or name.startswith(ALIAS + "."):
            import importlib.util

            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        root = import_pack()
        module = root if spec.name == ALIAS else importlib.import_module(PACK_MODULE + spec.name[len(ALIAS):])
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # module_from_spec has set the alias spec on the real module; give it back its own
        module.__spec__ = self._real_specs.pop(module.__spec__.name)


def install() -> None:
    """Put the ``portraittalk`` import hook on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _PackAlias) for f in sys.meta_path):
        sys.meta_path.insert(0, _PackAlias())
