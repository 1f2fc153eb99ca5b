"""ptalk_models.threads: decoding ahead (prefetch) and rendering on several threads (ordered_map) keep the order,
raise the producer's errors at their place and stop their threads when the consumer stops early. Real frames:
the decoded GRID clip lbax4n (PyAV)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest


def test_prefetch_decodes_the_same_frames_and_stops(shared_data):
    from portraittalk.ptalk_models.media import iter_video
    from portraittalk.ptalk_models.threads import prefetch

    path = shared_data / "video" / "lbax4n.mpg"
    plain = [f for f, _ in iter_video(path)]
    ahead = [f for f, _ in prefetch(iter_video(path), depth=3)]
    assert len(ahead) == len(plain) == 75 and all(np.array_equal(a, b) for a, b in zip(ahead, plain))

    closed = []

    def source():
        try:
            for f, _ in iter_video(path):
                yield f
        finally:
            closed.append(threading.current_thread().name)

    it = prefetch(source(), depth=2)
    next(it)
    it.close()  # the consumer stops early (an error, ComfyUI's interrupt)
    time.sleep(0.3)
    assert closed == ["ptalk-prefetch"]
    assert not any(t.name == "ptalk-prefetch" and t.is_alive() for t in threading.enumerate())

    def broken():
        yield from plain[:3]
        raise ValueError("truncated stream")

    got = []
    with pytest.raises(ValueError, match="truncated"):
        for f in prefetch(broken()):
            got.append(f)
    assert len(got) == 3


def test_ordered_map_keeps_order_and_bounds_lookahead():
    from portraittalk.ptalk_models.threads import ordered_map

    started = []

    def slow(i):
        started.append(i)
        time.sleep(0.01 * (i % 3))
        return i * i

    assert list(ordered_map(slow, ((i,) for i in range(20)), workers=2)) == [i * i for i in range(20)]
    started.clear()
    it = ordered_map(slow, ((i,) for i in range(100)), workers=2)
    next(it)
    time.sleep(0.1)
    assert len(started) <= 5, started  # at most 2 x workers ahead of the consumer
    it.close()
    assert list(ordered_map(slow, ((i,) for i in range(5)), workers=1)) == [0, 1, 4, 9, 16]
