"""A scan as every tool takes it: a NIfTI file or a DICOM folder, reduced to its brain, with its modality.

``open_scan`` is the one entry point of sss-detect, sss-eval, sss-train and the viewer:

1. read: a ``.nii``/``.nii.gz`` file (``volume.load_volume``) or a DICOM folder (``dicom``: ``series`` picks
   one when the folder holds several);
2. brain (``skull``): "auto" extracts the brain with deepbet when ``brain.skull_verdict`` says the scan
   still has its skull; "force" always extracts; "off" uses the scan as it is (and says so when it looks
   like it has a skull); a ``brain_mask`` file on the scan's grid replaces extraction. Voxels outside the
   brain become background, so preprocessing sees a skull-stripped brain;
3. modality: DICOM tags, else the file or folder name (``modality``), for the caller to compare with the
   checkpoint's.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .brain import BrainExtractor, Verdict, apply_brain_mask, skull_verdict
from .modality import modality_from_tags, modality_of
from .volume import Volume, VolumeError, load_mask, load_volume

if TYPE_CHECKING:  # pydicom loads only for DICOM folders: NIfTI-only installs (e.g. a bare GPU box) need not have it
    from .dicom import Series

SKULL_MODES = ("auto", "force", "off")
SKULL_HELP = ("brain extraction: auto (default) extracts the brain with deepbet when the scan still has its "
              "skull, force always extracts, off uses the scan as it is")


@dataclass(frozen=True, eq=False)
class Scan:
    """An input, read and reduced to the brain the model looks at."""
    volume: Volume               # what the model sees: the brain alone (background elsewhere)
    original: Volume             # the input as read
    brain: np.ndarray | None     # (X, Y, Z) bool canonical brain mask applied; None when used as it is
    verdict: Verdict             # the skull-stripped check of the input as read
    skull: str                   # the mode asked for: auto, force, off, or "mask file"
    extraction: str              # what was done: "none", "deepbet", "mask file <path>"
    series: Series | None        # the DICOM series read; None for a NIfTI file
    modality: str | None         # the input's MR contrast, e.g. "t1"; None when nothing names it
    modality_source: str         # how it was read (for messages and the JSON)

    @property
    def warning(self) -> str | None:
        """One line when the scan looks as if it has a skull but extraction was turned off."""
        if self.skull == "off" and not self.verdict.stripped:
            return (f"the scan seems to have its skull ({self.verdict.reason}) but brain extraction is off: the "
                    "skull and scalp will be flagged")
        return None

    def to_json(self, mask_file: str | None = None) -> dict:
        """The 'brain' part of sss-detect's report; mask_file names the written brain mask, if any."""
        brain_ml = (float(np.count_nonzero(self.brain)) * self.original.voxel_volume_ml
                    if self.brain is not None else None)
        return {"mode": self.skull, "verdict": "skull-stripped" if self.verdict.stripped else "with skull",
                "reason": self.verdict.reason, "measures": self.verdict.measures, "extraction": self.extraction,
                "mask": mask_file, "brain_ml": brain_ml, "warning": self.warning}

    def series_json(self) -> dict | None:
        s = self.series
        return None if s is None else {"uid": s.uid, "number": s.number, "description": s.description,
                                       "images": s.n_images, "label": s.label()}


@functools.lru_cache(maxsize=2)
def extractor(device: str = "cpu") -> BrainExtractor:
    """deepbet's networks on `device`, loaded once per process (the viewer and sss-eval reuse them)."""
    return BrainExtractor(device)


def extraction_device(device: str | torch.device) -> str:
    """Where brain extraction runs: the model's CUDA device when it has one, else the CPU."""
    text = str(device)
    return text if text.startswith("cuda") and torch.cuda.is_available() else "cpu"


def folder_series(folder: Path) -> list[Series]:
    """The image series of a DICOM folder; VolumeError naming the folder when it holds none."""
    from .dicom import find_series, is_dicom_folder
    if not is_dicom_folder(folder):
        raise VolumeError(f"{folder} is a folder without DICOM files; give a .nii/.nii.gz file or a DICOM folder")
    found = find_series(folder)
    if not found:
        raise VolumeError(f"{folder} holds no DICOM images; give a folder with a DICOM series (or a NIfTI file)")
    return found


def read_input(path: str | os.PathLike, series: str | None = None) -> tuple[Volume, Series | None]:
    """A NIfTI file or a DICOM folder as a Volume (and the series read); raises VolumeError."""
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p} does not exist; check the path")
    if p.is_dir():
        from .dicom import pick_series, series_volume
        chosen = pick_series(folder_series(p), series)
        return series_volume(chosen, p), chosen
    return load_volume(p), None


def input_modality(path: Path, series: Series | None) -> tuple[str | None, str]:
    """(modality, source): DICOM tags first, else the file or folder name."""
    if series is not None:
        found, why = modality_from_tags(series.tags)
        if found is not None:
            return found, f"DICOM {why}"
    found = modality_of(path)
    return found, ("file name" if found is not None else "nothing in the file or folder name names one")


def open_scan(path: str | os.PathLike, series: str | None = None, skull: str = "auto",
              brain_mask: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Scan:
    """Read `path` and reduce it to its brain (module docstring); raises VolumeError with a one-line message."""
    if skull not in SKULL_MODES:
        raise ValueError(f"skull must be one of {SKULL_MODES}, not {skull!r}")
    path = Path(path)
    original, chosen = read_input(path, series)
    verdict = skull_verdict(original)
    if brain_mask is not None:
        brain = load_mask(brain_mask, like=original)                       # (X, Y, Z) bool
        if not brain.any():
            raise VolumeError(f"{brain_mask}: the brain mask is empty; give a mask with the brain > 0")
        mode, extraction = "mask file", f"mask file {Path(brain_mask)}"
    elif skull == "force" or (skull == "auto" and not verdict.stripped):
        brain = extractor(extraction_device(device)).mask(original)       # (X, Y, Z) bool
        mode, extraction = skull, "deepbet"
    else:
        brain, mode, extraction = None, skull, "none"
    volume = original if brain is None else apply_brain_mask(original, brain)
    modality, source = input_modality(path, chosen)
    return Scan(volume=volume, original=original, brain=brain, verdict=verdict, skull=mode, extraction=extraction,
                series=chosen, modality=modality, modality_source=source)
