"""Errors raised by the in-process harness (boot, workflow conversion, checks, runs)."""
from __future__ import annotations


class HarnessError(RuntimeError):
    """Base class of the errors raised by this harness."""


class PackLoadError(HarnessError):
    """``nodes.load_custom_node`` could not load this pack (ComfyUI itself only logs that)."""


class WorkflowFormatError(ValueError):
    """The UI workflow JSON is malformed (missing nodes/links, dangling link ids, ...)."""


class UnknownNodeTypeError(WorkflowFormatError):
    """A workflow node's ``type`` is not registered in ``nodes.NODE_CLASS_MAPPINGS``."""


class PromptValidationError(HarnessError):
    """``execution.validate_prompt`` rejected the prompt; ``.node_errors`` holds ComfyUI's details."""

    def __init__(self, message: str, error: dict | None = None, node_errors: dict | None = None):
        super().__init__(message)
        self.error = error or {}
        self.node_errors = node_errors or {}


class PromptExecutionError(HarnessError):
    """A node raised while ``execution.PromptExecutor`` ran the prompt; ``.details`` is ComfyUI's message."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}
