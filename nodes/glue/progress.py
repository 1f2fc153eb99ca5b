"""ComfyUI progress reporting and interruption for the engine's long loops (``comfy.utils.ProgressBar`` and
``comfy.model_management``'s interrupt check).
"""
from __future__ import annotations

from contextlib import contextmanager


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


def _blocks(module, depth: int):
    """The sub-modules of ``module`` down to ``depth`` levels, looking through ModuleList/Sequential
    containers (a UNet's ``input_blocks[i]``, ``middle_block[j]``, ``output_blocks[i]`` ...)."""
    import torch

    for child in module.children():
        if depth > 1 and isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            yield from _blocks(child, depth - 1)
        else:
            yield child


@contextmanager
def interruptible(*modules, depth: int = 2):
    """Check ComfyUI's interrupt before every block of ``modules`` (torch modules; None ignored) while inside.

    A sampler checks the interrupt once per sampling step (its progress callback); on a CPU one step of a
    window of frames through SD1.5 (with CFG and the AnimateNet branch) takes seconds to minutes, so Cancel
    would wait for it. Forward pre-hooks on the blocks (a UNet: ~30) make the check about every 1/30 of a
    UNet call, for the cost of a lock and a flag read each; they are removed on exit.
    """
    import comfy.model_management as mm

    def check(_module, _args):
        mm.throw_exception_if_processing_interrupted()

    handles = []
    try:
        for m in modules:
            if m is not None:
                handles += [b.register_forward_pre_hook(check) for b in _blocks(m, depth)]
        yield
    finally:
        for h in handles:
            h.remove()


def diffusion_model(model):
    """The torch UNet of a ComfyUI MODEL (``ModelPatcher.model.diffusion_model``), or None."""
    return getattr(getattr(model, "model", None), "diffusion_model", None)
