"""Shared set-up of the bench/ scripts (run as ``.venv/bin/python bench/<script>.py``).

The scripts import the pack as ``portraittalk`` and the harness as ``ptalk_harness`` (both provided by the venv's
``portraittalk.pth``, see ``harness/ptalk_harness/pack.py``); this module only adds the shared-media lookup.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ptalk_harness import REPO_ROOT as REPO
from ptalk_harness import shared_data_dir as shared_data

__all__ = ["REPO", "shared_data", "require_shared_data"]


def require_shared_data() -> Path:
    """:func:`shared_data`, or exit with a message naming it and the fix when it is not a directory."""
    d = shared_data()
    if not d.is_dir():
        sys.exit(f"shared media not found at {d}; set PTALK_SHARED_DATA")
    return d
