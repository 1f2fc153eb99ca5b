"""Memory pre-flight for nodes that build a whole IMAGE batch: estimate it, compare with what the machine has.

A ComfyUI IMAGE is float32 ``[T, H, W, C]``: 4 bytes per value, so frames x height x width x 3 x 4 bytes —
one minute at 25 fps of a 970x2204 photo is 38 GB, of a 512x512 one 4.7 GB. A node that allocates more than
the machine has is killed by the kernel's out-of-memory killer, taking ComfyUI with it and telling nobody
why. Nodes call :func:`batch_fit_problem` before allocating and stop with its message instead.

Pure Python + numpy; the available memory comes from ``psutil`` (a ComfyUI requirement; ComfyUI's own
``comfy.model_management.get_free_memory`` on the CPU is the same ``psutil.virtual_memory().available``),
lowered to a cgroup (container) limit when one is set, and can be pinned with ``PTALK_MEMORY_AVAILABLE_GB``.
"""
from __future__ import annotations

import os

#: Bytes in a GB as messages and figures use it (decimal, like the MB of "25.7 MB a frame").
GB = 10 ** 9

#: Share of the available memory a batch may take; the rest is left to ComfyUI, the OS and the next nodes.
FIT_FRACTION = 0.85
#: Bytes always left free besides (one frame's worth of scratch for the node, Python, the encoder, …).
RESERVE_BYTES = 256 * 1024 ** 2


def image_batch_bytes(frames: int, height: int, width: int, channels: int = 3, itemsize: int = 4) -> int:
    """Bytes of an image batch ``[frames, height, width, channels]`` of ``itemsize``-byte values (a ComfyUI
    IMAGE is float32: 4; a uint8 numpy batch: 1; a MASK has ``channels`` 1)."""
    return int(frames) * int(height) * int(width) * int(channels) * int(itemsize)


def _cgroup_headroom() -> int | None:
    """Bytes left under the cgroup v2 / v1 memory limit of this process (None without a limit)."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                raw = f.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # cgroup v1's "no limit"
                return None
            with open(usage_path) as f:
                usage = int(f.read().strip())
            return max(0, limit - usage)
        except (OSError, ValueError):
            continue
    return None


def available_bytes() -> int:
    """Memory a node can still allocate without swapping, in bytes.

    ``$PTALK_MEMORY_AVAILABLE_GB`` (a number of :data:`GB`) when set; else
    ``psutil.virtual_memory().available``, lowered to the headroom under a cgroup memory limit (containers) when
    that is smaller.
    """
    pinned = os.environ.get("PTALK_MEMORY_AVAILABLE_GB")
    if pinned:
        return int(float(pinned) * GB)
    import psutil

    avail = int(psutil.virtual_memory().available)
    cg = _cgroup_headroom()
    return avail if cg is None else min(avail, cg)


def batch_fit_problem(what: str, need_bytes: int, alternative: str, available: int | None = None) -> str | None:
    """None when ``need_bytes`` fit in the memory available now, else the message for the node error.

    Fits means ``need_bytes <= FIT_FRACTION * available - RESERVE_BYTES``. ``what`` describes the batch (e.g.
    ``"an IMAGE batch of 15000 frames of 970x2204 (float32)"``); ``alternative`` says what to use instead (the
    streamed node). ``available``: bytes (default :func:`available_bytes`). The message gives the estimate and
    the available memory in GB and ends with ``alternative``.
    """
    avail = available_bytes() if available is None else int(available)
    budget = FIT_FRACTION * avail - RESERVE_BYTES
    if need_bytes <= budget:
        return None
    return (f"{what} needs {need_bytes / GB:.1f} GB, but only {avail / GB:.1f} GB of memory is available "
            f"(at most {max(budget, 0) / GB:.1f} GB may go to one batch); stopped before allocating it instead of "
            f"running out of memory. {alternative}")


__all__ = ["GB", "FIT_FRACTION", "RESERVE_BYTES", "image_batch_bytes", "available_bytes", "batch_fit_problem"]
