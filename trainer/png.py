"""PNG output without Qt or matplotlib: an atomic encoder/writer, image grids, a 5×7 pixel font and a loss plot."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sss_viewer.core.files import atomic_write_bytes

# 5×7 glyphs: per character 7 rows of 5 bits (bit 4 = leftmost pixel) as 14 hex digits. Text is drawn
# upper-case; a character without a glyph shows as '?'.
_FONT_HEX = {
    "A": "0e11111f111111", "B": "1e11111e11111e", "C": "0e11101010110e", "D": "1e11111111111e",
    "E": "1f10101e10101f", "F": "1f10101e101010", "G": "0e11101711110f", "H": "1111111f111111",
    "I": "0e04040404040e", "J": "0702020202120c", "K": "11121418141211", "L": "1010101010101f",
    "M": "111b1515111111", "N": "11111915131111", "O": "0e11111111110e", "P": "1e11111e101010",
    "Q": "0e11111115120d", "R": "1e11111e141211", "S": "0f10100e01011e", "T": "1f040404040404",
    "U": "1111111111110e", "V": "11111111110a04", "W": "1111111515150a", "X": "11110a040a1111",
    "Y": "11110a04040404", "Z": "1f01020408101f",
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c",
    " ": "00000000000000", "-": "0000001f000000", "_": "0000000000001f", ".": "00000000000c0c",
    ",": "000000000c0408", ":": "000c0c000c0c00", "=": "00001f001f0000", "+": "0004041f040400",
    "/": "00010204081000", "(": "02040808080402", ")": "08040202020408", "%": "18190204081303",
    "^": "040a1100000000", "?": "0e110102040004",
}
GLYPH_W, GLYPH_H = 5, 7
_GLYPHS = {ch: np.array([[row >> (GLYPH_W - 1 - i) & 1 for i in range(GLYPH_W)] for row in bytes.fromhex(code)], bool)
           for ch, code in _FONT_HEX.items()}                                       # each (7, 5)


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
    return atomic_write_bytes(path, encode_png(image))


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


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W) or (H, W, 3) image by an integer factor (pixels stay crisp)."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def with_header(body: np.ndarray, title: str, labels: Sequence[str], column: int, pad: int) -> np.ndarray:
    """body (a grid of `column`-wide tiles, `pad` apart) under a black band: the title, then a label per column."""
    band = np.zeros((2 * GLYPH_H + 9, *body.shape[1:]), np.uint8)              # (23, W[, 3])
    draw_text(band, pad, 3, title, 255)
    for i, label in enumerate(labels):
        draw_text(band, pad + i * (column + pad) + max(0, (column - text_width(label)) // 2), GLYPH_H + 6, label, 255)
    return np.concatenate([band, body], axis=0)


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of text drawn at scale (one blank font column between characters)."""
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


def draw_text(canvas: np.ndarray, x: int, y: int, text: str, colour, scale: int = 1) -> None:
    """Draw text with the 5×7 font into canvas (H, W[, 3]) in place: top-left corner at column x, row y, each
    font pixel scale × scale, clipped at the canvas edges."""
    for i, ch in enumerate(text.upper()):
        glyph = upscale(_GLYPHS.get(ch, _GLYPHS["?"]), scale)                       # (7 s, 5 s)
        top, left = y, x + i * (GLYPH_W + 1) * scale
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + glyph.shape[0], canvas.shape[0]), min(left + glyph.shape[1], canvas.shape[1])
        if y1 > y0 and x1 > x0:
            canvas[y0:y1, x0:x1][glyph[y0 - top:y1 - top, x0 - left:x1 - left]] = colour


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
    left, right, top, bottom = 64, width - 16, 24, height - 28
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
        draw_text(canvas, left - 6 - text_width(label), int(py(v)) - GLYPH_H // 2, label, dark)
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
