"""Tiny PNG output without Qt or matplotlib: an encoder, image grids, a 3×5 pixel font and a loss plot."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# 3×5 glyphs, one int per row, bit 2 = left column. Text is drawn upper-case; unknown characters are blank.
_FONT = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 3, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 2, 2), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    "A": (2, 5, 7, 5, 5), "B": (6, 5, 6, 5, 6), "C": (3, 4, 4, 4, 3), "D": (6, 5, 5, 5, 6), "E": (7, 4, 6, 4, 7),
    "F": (7, 4, 6, 4, 4), "G": (3, 4, 5, 5, 3), "H": (5, 5, 7, 5, 5), "I": (7, 2, 2, 2, 7), "J": (1, 1, 1, 5, 2),
    "K": (5, 5, 6, 5, 5), "L": (4, 4, 4, 4, 7), "M": (5, 7, 7, 5, 5), "N": (6, 5, 5, 5, 5), "O": (2, 5, 5, 5, 2),
    "P": (6, 5, 6, 4, 4), "Q": (2, 5, 5, 6, 3), "R": (6, 5, 6, 5, 5), "S": (3, 4, 2, 1, 6), "T": (7, 2, 2, 2, 2),
    "U": (5, 5, 5, 5, 7), "V": (5, 5, 5, 5, 2), "W": (5, 5, 7, 7, 5), "X": (5, 5, 2, 5, 5), "Y": (5, 5, 2, 2, 2),
    "Z": (7, 1, 2, 4, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "=": (0, 7, 0, 7, 0), ":": (0, 2, 0, 2, 0),
    "/": (1, 1, 2, 4, 4), "+": (0, 2, 7, 2, 0), "(": (1, 2, 2, 2, 1), ")": (4, 2, 2, 2, 4), "%": (5, 1, 2, 4, 5),
    "^": (2, 5, 0, 0, 0), "_": (0, 0, 0, 0, 7), ",": (0, 0, 0, 2, 4),
}


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 greyscale (H, W) or RGB (H, W, 3) image (8 bits, no interlace)."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or 0 in img.shape:
        raise ValueError(f"a PNG needs a non-empty uint8 (H, W) or (H, W, 3) array, not {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    rows = img.reshape(h, -1)                                               # (H, W·channels)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)         # filter byte 0 before each row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    colour = 0 if img.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write image (see encode_png) to path atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    data = encode_png(image)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map low → 0, high → 255, clipped."""
    scaled = (np.asarray(image, np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grid(images: Sequence[np.ndarray], columns: int, pad: int = 2, fill: int = 0) -> np.ndarray:
    """Tile equally sized uint8 images row by row into one image, `pad` pixels of `fill` between them."""
    first = np.asarray(images[0])
    h, w = first.shape[:2]
    rows = -(-len(images) // columns)
    canvas = np.full((rows * h + (rows + 1) * pad, columns * w + (columns + 1) * pad, *first.shape[2:]), fill,
                     np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return canvas


def with_header(body: np.ndarray, title: str, labels: Sequence[str], column: int, pad: int) -> np.ndarray:
    """body (a grid of `column`-wide tiles, `pad` apart) under a black band: the title, then a label per column."""
    band = np.zeros((22, *body.shape[1:]), np.uint8)                    # (22, W[, 3])
    draw_text(band, pad, 3, title, 255)
    for i, label in enumerate(labels):
        draw_text(band, pad + i * (column + pad) + max(0, (column - text_width(label)) // 2), 13, label, 255)
    return np.concatenate([band, body], axis=0)


def text_width(text: str, scale: int = 1) -> int:
    return max(0, 4 * len(text) - 1) * scale


def draw_text(canvas: np.ndarray, x: int, y: int, text: str, colour, scale: int = 1) -> None:
    """Draw text with the 3×5 font, top-left corner at column x, row y, each font pixel scale × scale."""
    for i, ch in enumerate(text.upper()):
        for r, bits in enumerate(_FONT.get(ch, (0, 0, 0, 0, 0))):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    y0, x0 = y + r * scale, x + (4 * i + c) * scale
                    canvas[max(y0, 0):max(y0 + scale, 0), max(x0, 0):max(x0 + scale, 0)] = colour


def draw_polyline(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour) -> None:
    """Draw the segments between consecutive points (pixel coordinates), one pixel wide, clipped to the canvas."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if len(xs) == 1:
        xs, ys = np.repeat(xs, 2), np.repeat(ys, 2)
    dx, dy = np.diff(xs), np.diff(ys)
    n = np.maximum(np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(int), 1) + 1   # points per segment
    seg = np.repeat(np.arange(len(dx)), n)
    frac = np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n)                      # 0..n-1 within a segment
    frac = frac / np.repeat(n - 1, n)
    px = np.rint(xs[seg] + frac * dx[seg]).astype(int)
    py = np.rint(ys[seg] + frac * dy[seg]).astype(int)
    inside = (px >= 0) & (px < canvas.shape[1]) & (py >= 0) & (py < canvas.shape[0])
    canvas[py[inside], px[inside]] = colour


def _label(value: float) -> str:
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")


def plot_loss(log_path: str | os.PathLike, png_path: str | os.PathLike, width: int = 640, height: int = 360) -> Path:
    """Loss curve from a JSON-lines training log (records with "step" and "loss") as a PNG, log-scaled y.

    Grey: every logged value; blue: their centred moving average over about a tenth of the records
    (shrinking at the ends), so the trend stays visible through the noise of single-batch losses.
    """
    steps, losses = [], []
    for line in Path(log_path).read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and record["loss"] > 0:
            steps.append(record["step"])
            losses.append(record["loss"])
    if not steps:
        raise ValueError(f"{log_path} has no loss records yet; train for at least one log interval")
    x, y = np.asarray(steps, np.float64), np.log10(np.asarray(losses, np.float64))
    half = max(1, len(y) // 20)                                         # centred window: no lag behind the data
    lo, hi = np.maximum(np.arange(len(y)) - half, 0), np.minimum(np.arange(len(y)) + half + 1, len(y))
    csum = np.concatenate([[0.0], np.cumsum(y)])
    smooth = (csum[hi] - csum[lo]) / (hi - lo)

    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 56, width - 16, 24, height - 28
    x_lo, x_hi = (x[0], x[-1]) if x[-1] > x[0] else (x[0] - 1, x[0] + 1)
    y_lo, y_hi = (y.min(), y.max()) if y.max() > y.min() else (y.min() - 0.5, y.max() + 0.5)
    y_lo, y_hi = y_lo - 0.05 * (y_hi - y_lo), y_hi + 0.05 * (y_hi - y_lo)

    def px(v):
        return left + (v - x_lo) / (x_hi - x_lo) * (right - left)

    def py(v):
        return bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)

    grey, dark = (200, 200, 200), (40, 40, 40)
    for frac in np.linspace(0, 1, 5):                                   # horizontal grid lines and y labels
        v = y_lo + frac * (y_hi - y_lo)
        draw_polyline(canvas, np.array([left, right]), np.array([py(v)] * 2), (232, 232, 232))
        label = _label(10 ** v)
        draw_text(canvas, left - 6 - text_width(label), int(py(v)) - 2, label, dark)
    for frac in np.linspace(0, 1, 5):                                   # x labels
        v = x_lo + frac * (x_hi - x_lo)
        label = str(int(round(v)))
        draw_text(canvas, int(px(v)) - text_width(label) // 2, bottom + 8, label, dark)
    draw_polyline(canvas, np.array([left, left, right]), np.array([top, bottom, bottom]), dark)
    draw_polyline(canvas, px(x), py(y), grey)
    draw_polyline(canvas, px(x), py(smooth), (30, 90, 200))
    title = f"LOSS (LOG SCALE) - STEP {int(x[-1])}: {_label(losses[-1])}, SMOOTHED {_label(10 ** smooth[-1])}"
    draw_text(canvas, left, 8, title, dark)
    draw_text(canvas, right - text_width("STEP"), height - 10, "STEP", dark)
    return write_png(png_path, canvas)
