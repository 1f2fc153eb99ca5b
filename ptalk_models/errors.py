"""The engine's error for a rejected argument, naming the argument so that callers map it without parsing text.

Engine functions raise :class:`InputError` (or a subclass) with ``argument`` set to the *parameter name* of the
function that rejected it (e.g. ``"source_landmarks"``, ``"audio"``); the ComfyUI glue maps that name to the node
input it came from (``nodes/glue/errors.py``: :func:`node_error_from`), never by matching message text.
"""
from __future__ import annotations


class InputError(ValueError):
    """An argument an engine function cannot use.

    Attributes:
        argument: the name of the rejected parameter, as spelled in the raising function's signature.
        fix: what the caller can change (may be ``""``); the message already ends with it when given.
    """

    def __init__(self, argument: str, message: str, fix: str = ""):
        self.argument = argument
        self.fix = fix
        super().__init__(f"{message} {fix}".strip() if fix else message)
