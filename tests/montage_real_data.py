"""Write a PNG montage of one mid axial model-space slice per real scan, to check orientation by eye.

Usage: python tests/montage_real_data.py [OUT.png] (default /tmp/montage.png); data from $SSS_DATA or
../shared/data. Each tile is labelled with the file, its native orientation letters and the slice; the
letters A/P/R/L at the tile edges show the model-space display layout (radiological: anterior up,
the patient's right on the left). Needs only numpy (no matplotlib or PIL).
"""

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sss_viewer.core.config import PreprocessConfig  # noqa: E402
from sss_viewer.core.volume import load_volume, prepare  # noqa: E402
from trainer.png import GLYPH_H, GLYPH_W, draw_text, grid, upscale, write_png  # noqa: E402

DATA = Path(os.environ.get("SSS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SIZE = 128    # model-space side
ZOOM = 2      # tile pixels per model pixel
LETTER_ZOOM = 2  # screen pixels per font pixel of the orientation letters
COLUMNS = 7


def tile(path: Path) -> np.ndarray:
    """One labelled tile: the mid slice of the brain's slice range, in model space."""
    vol = load_volume(path)
    mv = prepare(vol, PreprocessConfig(image_size=SIZE))
    k = (mv.slice_range[0] + mv.slice_range[1]) // 2
    image = np.round((mv.data[k] + 1) * 127.5).astype(np.uint8)  # (S, S)
    side, line = SIZE * ZOOM, GLYPH_H + 3
    out = np.zeros((side + 2 * line + 2, side), dtype=np.uint8)
    out[:side] = upscale(image, ZOOM)
    letter_w, letter_h = GLYPH_W * LETTER_ZOOM, GLYPH_H * LETTER_ZOOM
    for letter, x, y in [("A", (side - letter_w) // 2, 2), ("P", (side - letter_w) // 2, side - letter_h - 2),
                         ("R", 2, (side - letter_h) // 2), ("L", side - letter_w - 2, (side - letter_h) // 2)]:
        draw_text(out, x, y, letter, 200, LETTER_ZOOM)
    rel = path.relative_to(DATA)
    draw_text(out, 2, side + 3, str(rel.parent.name), 255)
    draw_text(out, 2, side + 3 + line, f"{rel.name.removesuffix('.nii.gz')} {''.join(vol.axcodes)} z={k}", 255)
    return out


def main() -> None:
    out_path = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/montage.png")
    files = sorted(p for sub in ("healthy", "with-skull", "lesion-dev") for p in (DATA / sub).rglob("*.nii.gz"))
    if not files:
        sys.exit(f"no .nii.gz files under {DATA}")
    tiles = [tile(p) for p in files]
    montage = grid(tiles, COLUMNS, pad=4, fill=60)
    write_png(out_path, montage)
    print(f"wrote {out_path}: {len(tiles)} scans, {montage.shape[1]}×{montage.shape[0]} px")


if __name__ == "__main__":
    main()
