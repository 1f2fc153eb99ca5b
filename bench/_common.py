"""Shared set-up of the bench/ scripts (run as ``.venv/bin/python bench/<script>.py``, so bench/ is on sys.path).

Importing this appends the repo root to ``sys.path`` (append, never insert: this pack's ``nodes/`` package
must not shadow ComfyUI's top-level ``nodes``), so the scripts can ``import ptalk_models`` afterwards.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "scripts")):
    if _p not in sys.path:
        sys.path.append(_p)

#: Directory of the real media: ``$PTALK_SHARED_DATA``, else ``<repo>/../shared/data`` (may not exist).
from comfy_headless import shared_data_dir as shared_data  # noqa: E402  (importing it has no side effects)


def require_shared_data() -> Path:
    """:func:`shared_data`, or exit with a message naming it and the fix when it is not a directory."""
    d = shared_data()
    if not d.is_dir():
        sys.exit(f"shared media not found at {d}; set PTALK_SHARED_DATA")
    return d
