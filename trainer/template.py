"""Build the bundled registration template: the MNI152 2009a brain, cropped, averaged to 2 mm voxels.

Usage: python -m trainer.template TEMPLATE [--out resources/mni152_brain_2mm.nii.gz]

TEMPLATE is the skull-stripped 2009a T1 template at 1 mm (``../shared/data/healthy/mni152-2009a/t1.nii.gz``,
the demo's source too). The brain's bounding box, widened by MARGIN_MM on every side (clipped to the file),
cropped to even sides, is averaged over 2 × 2 × 2 blocks and rounded to uint8: deterministic, bit for bit.
``sss_viewer.core.align`` registers scans to it and resamples them onto the same box at 1 mm.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from sss_viewer.core.align import TEMPLATE
from sss_viewer.core.resources import resource
from sss_viewer.core.volume import load_volume

MARGIN_MM = 8   # brain bounding box widened by this on every side (1 mm voxels)
BLOCK = 2       # template voxel side in 1 mm voxels


def build(template: Path) -> nib.Nifti1Image:
    """The 2 mm template image (canonical RAS, uint8) of a 1 mm skull-stripped template."""
    volume = load_volume(template)
    data = volume.data  # (X, Y, Z) canonical
    if not np.allclose(volume.spacing, 1.0):
        raise ValueError(f"{template} has {volume.spacing} mm voxels; the 1 mm template is needed")
    inside = np.argwhere(data > 0)  # (N, 3)
    low = np.maximum(inside.min(axis=0) - MARGIN_MM, 0)
    high = np.minimum(inside.max(axis=0) + MARGIN_MM + 1, data.shape)
    high -= (high - low) % BLOCK  # even sides
    crop = data[low[0]:high[0], low[1]:high[1], low[2]:high[2]]  # (X', Y', Z')
    shape = tuple(int(n) // BLOCK for n in crop.shape)
    blocks = crop.reshape(shape[0], BLOCK, shape[1], BLOCK, shape[2], BLOCK).mean(axis=(1, 3, 5))  # (X'/2, ...)
    voxel_to_crop = np.diag([BLOCK, BLOCK, BLOCK, 1.0])
    voxel_to_crop[:3, 3] = low + (BLOCK - 1) / 2  # a 2 mm voxel's centre: the mean of its 1 mm centres
    affine = volume.canonical_affine @ voxel_to_crop
    image = nib.Nifti1Image(np.round(blocks).astype(np.uint8), affine)
    image.header["descrip"] = b"MNI152 2009a brain, 2 mm (sss-viewer registration template)"
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", type=Path, help="the 1 mm skull-stripped MNI152 2009a T1 template")
    parser.add_argument("--out", type=Path, default=resource(TEMPLATE))
    args = parser.parse_args()
    image = build(args.template)
    nib.save(image, str(args.out))
    print(f"{args.out}: {image.shape} at 2 mm")


if __name__ == "__main__":
    main()
