"""The pack's error convention and logger: a bad node input is a :class:`NodeInputError` whose message names the
node, the input and the fix, either written by the node (:func:`node_error`) or mapped from an engine
:class:`ptalk_models.errors.InputError` by the name of the rejected argument (:func:`node_error_from`); ``log`` is
the ``PortraitTalk`` logger.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...ptalk_models.errors import InputError

log = logging.getLogger("PortraitTalk")


class NodeInputError(ValueError):
    """A bad node input: the message names the node, the input and the fix.

    ComfyUI shows an error as ``<module>.<class>: <message>``; the module is set to the pack's name so the UI
    reads ``PortraitTalk.NodeInputError``, not the module name ComfyUI derives from the pack's path."""

    __module__ = "PortraitTalk"


def node_error(node: str, input_name: str, message: str) -> NodeInputError:
    """The error to raise for a bad input: ``[PortraitTalk · <node>] input '<input_name>': <message>``, where
    ``message`` says what is wrong and how to fix it (``raise node_error(...) from None``)."""
    return NodeInputError(f"[PortraitTalk · {node}] input '{input_name}': {message}")


def node_error_from(node: str, exc: "InputError", inputs: Mapping[str, str]) -> NodeInputError:
    """The :class:`NodeInputError` for an engine :class:`ptalk_models.errors.InputError` raised on behalf of node
    ``node``: ``[PortraitTalk · <node>] input '<input>': <message and fix>``.

    ``inputs`` maps engine argument names (``exc.argument``, the rejecting function's parameter name) to the node
    input names they came from; an argument missing from ``inputs`` is named as it is. The message is
    ``str(exc)``, which already ends with ``exc.fix`` when one was given (``raise node_error_from(...) from None``).
    """
    return node_error(node, inputs.get(exc.argument, exc.argument), str(exc))
