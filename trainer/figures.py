"""Figures without matplotlib: RGB panels (grey, inferno heat map, mask overlay), labelled grids, a zlib PNG writer."""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from pathlib import Path

import numpy as np

# matplotlib's inferno at 0, 0.1, ..., 1 (perceptually uniform, readable in greyscale); linear in between.
INFERNO_STOPS = np.array([
    [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103], [188, 55, 84],
    [221, 81, 58], [243, 120, 25], [252, 165, 10], [246, 215, 70], [252, 255, 164]], dtype=np.float64)  # (11, 3)

# Overlay colours: truth and prediction (yellow), truth only (red), prediction only (blue).
HIT, MISSED, FALSE_ALARM = (255, 220, 0), (230, 40, 40), (40, 120, 255)
OVERLAY_ALPHA = 0.6
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)

# 5x7 bitmap font: per glyph, 7 rows of 5 bits (bit 4 = leftmost pixel) as 14 hex digits. Text is drawn upper-case.
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
    "=": "00001f001f0000", ":": "000c0c000c0c00", "/": "00010204081000", "?": "0e110102040004",
}
GLYPH_W, GLYPH_H = 5, 7


def _glyph(ch: str) -> np.ndarray:
    """(7, 5) bool bitmap of one character (unknown characters show as '?')."""
    rows = bytes.fromhex(_FONT_HEX.get(ch.upper(), _FONT_HEX["?"]))
    return np.array([[(r >> (4 - i)) & 1 for i in range(GLYPH_W)] for r in rows], dtype=bool)


def text_width(text: str, scale: int) -> int:
    """Width in pixels of text drawn at scale (one blank font column between characters)."""
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, scale: int = 2, colour=INK) -> None:
    """Draw text into an (H, W, 3) uint8 canvas in place, clipped at its edges."""
    for n, ch in enumerate(text):
        bitmap = np.kron(_glyph(ch), np.ones((scale, scale), dtype=bool))  # (7 s, 5 s)
        y, x = top, left + n * (GLYPH_W + 1) * scale
        h = min(bitmap.shape[0], canvas.shape[0] - y)
        w = min(bitmap.shape[1], canvas.shape[1] - x)
        if h <= 0 or w <= 0:
            break
        region = canvas[y:y + h, x:x + w]
        region[bitmap[:h, :w]] = colour


def grey(image: np.ndarray, vmin: float = -1.0, vmax: float = 1.0) -> np.ndarray:
    """(H, W) values → (H, W, 3) uint8 grey, vmin black, vmax white, clipped."""
    level = np.clip((np.asarray(image, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    return np.repeat(np.round(level * 255).astype(np.uint8)[..., None], 3, axis=2)


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


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, 3) image by an integer factor (pixels stay crisp)."""
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


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
        draw_text(canvas, title, y, gap, scale)
        y += line
    for c, name in enumerate(column_titles):
        left = gap + c * (p + gap)
        draw_text(canvas, name, y, left + max(0, (p - text_width(name, scale)) // 2), scale)
    y += line
    for panels, label in zip(rows, row_titles):
        draw_text(canvas, label, y, gap, scale)
        y += line
        for c, panel in enumerate(panels):
            left = gap + c * (p + gap)
            canvas[y:y + p, left:left + p] = panel
        y += p + gap
    return canvas


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as a PNG: 8-bit RGB, no filtering, one zlib IDAT chunk."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a PNG image must be (H, W, 3) RGB, not {rgb.shape}")
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1)  # (H, 1 + 3W): filter byte 0
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # width, height, bit depth, colour type RGB, defaults
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write the PNG atomically (temporary file beside it, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(png_bytes(rgb))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
