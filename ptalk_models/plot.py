"""Small line plots drawn with OpenCV (no matplotlib): per-frame metric curves for the ADFD Score node.

:func:`plot_panels` stacks panels that share one x axis (frame index or seconds); each panel holds one or more
curves. NaN values break a curve (frames without a face show as gaps).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# OpenCV is imported inside the functions that use it, so importing the pack (ComfyUI start-up) stays cheap.

BG = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
TEXT = (20, 20, 20)
#: RGB colours for successive curves of a panel.
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


@dataclass
class Panel:
    """One panel: ``title``, curves ``[(label, y float [N])]``, an optional fixed ``ylim=(lo, hi)``; with
    ``connect`` the finite points are joined across NaN gaps and marked (for sparsely sampled curves)."""

    title: str
    curves: list = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    connect: bool = False


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3f}".rstrip("0").rstrip(".")


def _text(img, s, org, scale=0.42, color=TEXT, thickness=1):
    import cv2

    cv2.putText(img, s, (int(org[0]), int(org[1])), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def plot_panels(panels: list[Panel], x: np.ndarray | None = None, x_label: str = "frame", width: int = 960,
                panel_height: int = 170, title: str | None = None) -> np.ndarray:
    """Render stacked line panels; returns uint8 RGB ``[H, W, 3]``.

    Args:
        panels: list of :class:`Panel`. Every curve has the same length N (the x axis).
        x: float ``[N]`` x values (default ``0..N-1``). x_label: axis label (e.g. ``"frame"`` or ``"s"``).
        width: image width in pixels (>= 320). panel_height: pixels per panel (>= 80).
        title: optional line of text above the panels.

    Raises:
        ValueError: no panels, or curves of different lengths.
    """
    import cv2

    if not panels:
        raise ValueError("plot_panels: give at least one panel")
    lens = {len(np.asarray(y)) for p in panels for _, y in p.curves}
    if len(lens) > 1:
        raise ValueError(f"plot_panels: curves have different lengths {sorted(lens)}")
    n = lens.pop() if lens else 1
    xs = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, np.float64)
    width, panel_height = max(320, int(width)), max(80, int(panel_height))
    top = 28 if title else 6
    H = top + panel_height * len(panels) + 24
    img = np.full((H, width, 3), BG, np.uint8)
    if title:
        _text(img, title, (10, 19), 0.5)
    left, right = 62, 12
    x0, x1 = float(xs[0]), float(xs[-1]) if n > 1 else float(xs[0]) + 1.0
    pw = width - left - right

    def px_x(v):
        return left + (v - x0) / (x1 - x0) * pw

    for i, p in enumerate(panels):
        y_top = top + i * panel_height + 18
        ph = panel_height - 34
        ys = [np.asarray(y, np.float64) for _, y in p.curves]
        finite = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.zeros(0)
        if p.ylim is not None:
            lo, hi = p.ylim
        elif finite.size:
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = 0.0, 1.0
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
        pad = 0.06 * (hi - lo)
        lo, hi = lo - pad, hi + pad

        def px_y(v):
            return y_top + ph - (v - lo) / (hi - lo) * ph

        for frac in (0.0, 0.5, 1.0):
            v = lo + pad + frac * (hi - lo - 2 * pad)
            yy = int(round(px_y(v)))
            cv2.line(img, (left, yy), (left + pw, yy), GRID, 1)
            _text(img, _fmt(v), (4, yy + 4), 0.36)
        cv2.rectangle(img, (left, y_top), (left + pw, y_top + ph), AXIS, 1)
        _text(img, p.title, (left + 4, y_top - 5), 0.44)
        lx = left + pw
        for j, ((label, _), y) in enumerate(zip(p.curves, ys)):
            color = COLORS[j % len(COLORS)]
            ok = np.isfinite(y)
            pts = np.stack([px_x(xs), px_y(np.where(ok, y, 0.0))], 1)
            if p.connect:
                run = np.round(pts[ok] * 16).astype(np.int32)
                if len(run) > 1:
                    cv2.polylines(img, [run], False, color, 1, cv2.LINE_AA, 4)
                for q in run:
                    cv2.circle(img, (int(q[0]), int(q[1])), 2 * 16, color, -1, cv2.LINE_AA, 4)
                ok = np.zeros_like(ok)
            start = None
            for k in range(n + 1):  # draw finite runs
                if k < n and ok[k]:
                    start = k if start is None else start
                    continue
                if start is not None:
                    run = np.round(pts[start:k] * 16).astype(np.int32)
                    if len(run) == 1:
                        cv2.circle(img, tuple(int(v) for v in run[0]), 2 * 16, color, -1, cv2.LINE_AA, 4)
                    else:
                        cv2.polylines(img, [run], False, color, 1, cv2.LINE_AA, 4)
                    start = None
            tw = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]
            lx -= tw + 26
            cv2.line(img, (lx, y_top - 9), (lx + 16, y_top - 9), color, 2)
            _text(img, label, (lx + 19, y_top - 5), 0.4, color)
    # shared x axis ticks
    yb = top + panel_height * len(panels) - 14
    for frac in np.linspace(0, 1, 6):
        v = x0 + frac * (x1 - x0)
        xx = int(round(px_x(v)))
        cv2.line(img, (xx, yb), (xx, yb + 4), AXIS, 1)
        s = _fmt(v) if x_label != "frame" else str(int(round(v)))
        tw = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, 0.36, 1)[0][0]
        _text(img, s, (xx - tw // 2, yb + 16), 0.36)
    _text(img, x_label, (left + pw - 40, H - 4), 0.38)
    return img


def report_plot(report: dict, width: int = 960, panel_height: int = 170) -> np.ndarray:
    """Per-frame curves of a :func:`ptalk_models.metrics.evaluate` report; uint8 RGB ``[H, W, 3]``.

    Panels: ADFD spatial term; motion term (mapped cosine); mouth LMD (px); inner-lip aperture generated vs
    ground truth (/ inter-ocular distance); plus audio 200-4000 Hz log energy (dB) when the report has audio,
    and identity similarity when it has identity. x axis in seconds when the report's fps > 0, else frames.
    """
    pf = report["per_frame"]
    n = len(pf["spatial"])
    fps = float(report.get("fps") or 0.0)
    x = np.arange(n) / fps if fps > 0 else None
    panels = [
        Panel(f"spatial term 1 - mean|L_gen - L_gt| / d   (mean {report['spatial_term']:.4f})",
              [("spatial", pf["spatial"])]),
        Panel(f"motion term (1 + cos) / 2   (mean {report['motion_term']:.4f})", [("motion", pf["motion"])],
              ylim=(0.0, 1.0)),
        Panel("mouth LMD (px)", [("mouth LMD", pf["mouth_lmd_px"])]),
        Panel("inner-lip aperture / inter-ocular", [("generated", pf["aperture_generated"]),
                                                   ("ground truth", pf["aperture_ground_truth"])]),
    ]
    if pf.get("audio_energy_db") is not None:
        e = np.full(n, np.nan)
        a = np.asarray(pf["audio_energy_db"], np.float64)[:n]
        e[:len(a)] = a
        panels.append(Panel("audio 200-4000 Hz log energy (dB)", [("energy", e)]))
    if pf.get("identity") is not None:
        ident = np.asarray(pf["identity"], np.float64)
        sparse = np.isfinite(ident).sum() < 0.5 * max(1, n)
        panels.append(Panel("identity similarity to the first ground-truth frame (> 0.5 = same person)",
                            [("identity", ident)], ylim=(0.0, 1.0), connect=bool(sparse)))
    title = (f"ADFD {report['adfd']:.4f} = [{report['w1']:g} x {report['spatial_term']:.4f}] x "
             f"[{report['w2']:g} x {report['motion_term']:.4f}]   frames used {report['frames']['used']}"
             f"/{report['frames']['compared']}")
    return plot_panels(panels, x, "s" if fps > 0 else "frame", width, panel_height, title)
