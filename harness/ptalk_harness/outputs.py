"""The output files named in the ui outputs of a finished prompt.

Both a :func:`ptalk_harness.run_prompt` result and a server's ``/history/<id>`` entry hold ComfyUI's
``{"outputs": {node_id: ui dict}}``, in which every saved or previewed file is a ``{"filename", "subfolder",
"type"}`` dict (SaveImage's and SaveVideo's ``images``, SaveAudio's ``audio``, ...).
"""
from __future__ import annotations

from typing import Iterable, Mapping


def output_entries(entry: Mapping, types: Iterable[str] = ("output",)) -> list[dict]:
    """Every ``{"filename", "subfolder", "type"}`` dict in ``entry["outputs"]`` (a run result or a history
    entry) whose ``type`` is in ``types``, in output node order (copies)."""
    types = set(types)
    found: list[dict] = []

    def walk(x):
        if isinstance(x, Mapping):
            if "filename" in x and "type" in x and x["type"] in types:
                found.append(dict(x))
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(entry.get("outputs") or {})
    return found
