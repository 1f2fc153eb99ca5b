"""ComfyUI progress reporting and interruption for the engine's long loops (``comfy.utils.ProgressBar`` and
``comfy.model_management``'s interrupt check).
"""
from __future__ import annotations


class Progress:
    """Progress bar + interrupt check for long loops: ``cb = Progress(total); cb(done, total)``.

    Raising ComfyUI's ``InterruptProcessingException`` from inside the engine's loops is how the queue's
    Cancel button stops a running node.
    """

    def __init__(self, total: int):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(max(1, int(total)))

    def __call__(self, done: int, total: int) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)
