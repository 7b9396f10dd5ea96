"""Write a PNG montage of one mid axial model-space slice per real scan, to check orientation by eye.

Usage: python tests/montage_real_data.py [OUT.png] (default /tmp/montage.png); data from $SSS_DATA or
../shared/data. Each tile is labelled with the file, its native orientation letters and the slice; the
letters A/P/R/L at the tile edges show the model-space display layout (radiological: anterior up,
the patient's right on the left). Needs only numpy and zlib (no matplotlib or PIL).
"""

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sss_viewer.core.config import PreprocessConfig  # noqa: E402
from sss_viewer.core.volume import load_volume, prepare  # noqa: E402

DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SIZE = 128    # model-space side
ZOOM = 2      # tile pixels per model pixel
FONT_ZOOM = 2  # screen pixels per font pixel
COLUMNS = 7

# 3 × 5 pixel glyphs, rows top to bottom.
GLYPHS = {
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "Q": "010101101110011", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "0": "111101101101111", "1": "010110010010111",
    "2": "110001010100111", "3": "110001010001110", "4": "101101111001001", "5": "111100110001110",
    "6": "011100111101111", "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    "-": "000000111000000", "_": "000000000000111", ".": "000000000000010", "/": "001001010100100",
    "=": "000111000111000", ":": "000010000010000", " ": "000000000000000",
}


def draw_text(canvas: np.ndarray, text: str, row: int, col: int, value: int = 255) -> None:
    """Draw upper-cased text with its top-left corner at (row, col); characters outside the canvas are cut."""
    for i, char in enumerate(text.upper()):
        bits = np.array([int(b) for b in GLYPHS.get(char, GLYPHS[" "])], dtype=bool).reshape(5, 3)
        glyph = np.kron(bits, np.ones((FONT_ZOOM, FONT_ZOOM), dtype=bool))
        r, c = row, col + i * 4 * FONT_ZOOM
        if c + glyph.shape[1] > canvas.shape[1] or r + glyph.shape[0] > canvas.shape[0]:
            break
        canvas[r:r + glyph.shape[0], c:c + glyph.shape[1]][glyph] = value


def write_png(path: Path, grey: np.ndarray) -> None:
    """Write an 8-bit greyscale (H, W) array as a PNG (signature, IHDR, one IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = grey.shape
    raw = b"".join(b"\x00" + grey[r].tobytes() for r in range(height))  # filter type 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def tile(path: Path) -> np.ndarray:
    """One labelled tile: the mid slice of the brain's slice range, in model space."""
    vol = load_volume(path)
    mv = prepare(vol, PreprocessConfig(image_size=SIZE))
    k = (mv.slice_range[0] + mv.slice_range[1]) // 2
    image = np.round((mv.data[k] + 1) * 127.5).astype(np.uint8)  # (S, S)
    label_h = 2 * 6 * FONT_ZOOM + 4
    out = np.zeros((SIZE * ZOOM + label_h, SIZE * ZOOM), dtype=np.uint8)
    out[:SIZE * ZOOM] = np.kron(image, np.ones((ZOOM, ZOOM), dtype=np.uint8))
    half = SIZE * ZOOM // 2 - 2 * FONT_ZOOM
    for letter, r, c in [("A", 2, half), ("P", SIZE * ZOOM - 6 * FONT_ZOOM, half), ("R", half, 2),
                         ("L", half, SIZE * ZOOM - 4 * FONT_ZOOM)]:
        draw_text(out, letter, r, c, value=200)
    rel = path.relative_to(DATA)
    draw_text(out, str(rel.parent.name), SIZE * ZOOM + 2, 2)
    caption = f"{rel.name.removesuffix('.nii.gz')} {''.join(vol.axcodes)} z={k}"
    draw_text(out, caption, SIZE * ZOOM + 4 + 6 * FONT_ZOOM, 2)
    return out


def main() -> None:
    out_path = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/montage.png")
    files = sorted(p for sub in ("healthy", "with-skull", "lesion-dev") for p in (DATA / sub).rglob("*.nii.gz"))
    if not files:
        sys.exit(f"no .nii.gz files under {DATA}")
    tiles = [tile(p) for p in files]
    th, tw = tiles[0].shape
    rows = -(-len(tiles) // COLUMNS)
    montage = np.full((rows * (th + 4), COLUMNS * (tw + 4)), 60, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, COLUMNS)
        montage[r * (th + 4):r * (th + 4) + th, c * (tw + 4):c * (tw + 4) + tw] = t
    write_png(out_path, montage)
    print(f"wrote {out_path}: {len(tiles)} scans, {montage.shape[1]}×{montage.shape[0]} px")


if __name__ == "__main__":
    main()
