"""The evaluation figure, built on png.py: RGB panels (grey, inferno heat map, mask overlay) in a labelled grid."""

from __future__ import annotations

import numpy as np

from .png import GLYPH_H, draw_text, text_width, to_uint8

# matplotlib's inferno at 0, 0.1, ..., 1 (perceptually uniform, readable in greyscale); linear in between.
INFERNO_STOPS = np.array([
    [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103], [188, 55, 84],
    [221, 81, 58], [243, 120, 25], [252, 165, 10], [246, 215, 70], [252, 255, 164]], dtype=np.float64)  # (11, 3)

# Overlay colours: truth and prediction (yellow), truth only (red), prediction only (blue).
HIT, MISSED, FALSE_ALARM = (255, 220, 0), (230, 40, 40), (40, 120, 255)
OVERLAY_ALPHA = 0.6
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def grey(image: np.ndarray, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """(H, W) values → (H, W, 3) uint8 grey, vmin black, vmax white, clipped."""
    return np.repeat(to_uint8(image, vmin, vmax)[..., None], 3, axis=2)


def inferno(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(H, W) values → (H, W, 3) uint8 through the inferno colormap, vmin black, vmax pale yellow, clipped."""
    pos = np.clip((np.asarray(values, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0) * (len(INFERNO_STOPS) - 1)
    low = np.minimum(np.floor(pos).astype(int), len(INFERNO_STOPS) - 2)                # (H, W)
    frac = (pos - low)[..., None]                                                       # (H, W, 1)
    rgb = INFERNO_STOPS[low] * (1 - frac) + INFERNO_STOPS[low + 1] * frac              # (H, W, 3)
    return np.round(rgb).astype(np.uint8)


def mask_panel(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool → (H, W, 3) uint8, white where True on black."""
    return grey(np.asarray(mask, np.float64), 0.0, 1.0)


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Grey image with truth and prediction blended in: HIT where both, MISSED truth only, FALSE_ALARM pred only."""
    rgb = grey(image).astype(np.float64)                                                # (H, W, 3)
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    for where, colour in ((truth & pred, HIT), (truth & ~pred, MISSED), (~truth & pred, FALSE_ALARM)):
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour, np.float64)
    return np.round(rgb).astype(np.uint8)


def panel_grid(rows: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str], title: str = "",
               gap: int = 6) -> np.ndarray:
    """Lay equal-size (P, P, 3) panels out in rows, with a title, a label above each column and above each row."""
    p = rows[0][0].shape[0]
    n_cols = len(column_titles)
    scale = 2 if all(text_width(t, 2) <= p for t in column_titles) else 1
    line = GLYPH_H * scale + gap                                   # height of one text line with its spacing
    width = n_cols * p + (n_cols + 1) * gap
    height = gap + (line if title else 0) + line + len(rows) * (line + p + gap)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    y = gap
    if title:
        draw_text(canvas, gap, y, title, INK, scale)
        y += line
    for c, name in enumerate(column_titles):
        left = gap + c * (p + gap)
        draw_text(canvas, left + max(0, (p - text_width(name, scale)) // 2), y, name, INK, scale)
    y += line
    for panels, label in zip(rows, row_titles):
        draw_text(canvas, gap, y, label, INK, scale)
        y += line
        for c, panel in enumerate(panels):
            left = gap + c * (p + gap)
            canvas[y:y + p, left:left + p] = panel
        y += p + gap
    return canvas
