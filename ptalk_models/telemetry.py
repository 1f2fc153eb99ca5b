"""No library telemetry at run time: the pack runs offline and writes only to ComfyUI's folders.

ONNX Runtime (the Linux wheels of 1.31, used by silero-vad and insightface) creates a telemetry store on
``import onnxruntime`` — ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` (``deviceid``, ``onnxruntime.db``) —
unless the environment variable ``ORT_DISABLE_TELEMETRY`` is set (``onnxruntime.disable_telemetry_events()``
called after the import does not stop it; measured with a scratch ``$HOME``). Found by the containment test of
``tests/test_reliability_server.py``, which lists ``$HOME`` before and after a server run.
"""
from __future__ import annotations

import os


def disable_telemetry() -> None:
    """Opt out of ONNX Runtime's telemetry for this process (``ORT_DISABLE_TELEMETRY=1`` unless the user set it);
    call before anything imports ``onnxruntime``. Idempotent."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
