"""An input's MR contrast (T1, T2, FLAIR, PD, contrast-enhanced T1) from its name or DICOM tags, against the model's.

A checkpoint knows the contrast it was trained on (``sss-train --modality``, or the one its files name).
An input's contrast is read, in this order:

1. DICOM: the series description and protocol name, tokenised like file names (``t1_mprage_sag`` → t1);
   a contrast agent in ``ContrastBolusAgent`` turns T1 into t1ce.
2. DICOM sequence parameters when the names say nothing (times in ms, the usual clinical ranges):
   inversion recovery with TI ≥ FLAIR_MIN_TI → flair; TR ≤ T1_MAX_TR with TE ≤ T1_MAX_TE, or an MPRAGE-like
   IR gradient echo (TI ≤ MPRAGE_MAX_TI) → t1; TR ≥ T2_MIN_TR with TE ≥ T2_MIN_TE → t2; TR ≥ T2_MIN_TR with
   TE ≤ PD_MAX_TE → pd.
3. NIfTI: the file name's tokens, else its folder's (``IXI002-Guys-0828-T1.nii.gz``, ``sub/t1/brain.nii``).

Nothing is refused on a mismatch: ``check_modality`` returns a warning the tools show, and the user decides.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .volume import NIFTI_SUFFIXES

MODALITY_TOKENS = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "mprage": "t1", "spgr": "t1",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair",
    "pd": "pd", "pdw": "pd",
    "t1ce": "t1ce", "t1gd": "t1ce", "t1c": "t1ce", "t1post": "t1ce",
}
FLAIR_MIN_TI = 1500.0   # ms: fluid-nulling inversion (FLAIR ~2000-2500 ms)
MPRAGE_MAX_TI = 1300.0  # ms: T1-weighting inversion of an MPRAGE (~700-1100 ms)
T1_MAX_TR, T1_MAX_TE = 800.0, 30.0
T2_MIN_TR, T2_MIN_TE, PD_MAX_TE = 2000.0, 60.0, 30.0


def name_tokens(name: str) -> list[str]:
    """Lower-case alphanumeric tokens of a name without its NIfTI suffix."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES[::-1]:
        if lower.endswith(suffix):
            lower = lower[:-len(suffix)]
            break
    return [t for t in re.split(r"[^a-z0-9]+", lower) if t]


def _named(text: str) -> str | None:
    """The one modality that a name's tokens mention, else None (none or several)."""
    found = {MODALITY_TOKENS[t] for t in name_tokens(text) if t in MODALITY_TOKENS}
    return found.pop() if len(found) == 1 else None


def modality_of(path: str | os.PathLike) -> str | None:
    """Modality named by the file name's tokens, else by its folder's name; None when neither names one."""
    p = Path(path)
    return _named(p.name) or _named(p.parent.name)


def _number(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(str(tags.get(key, "")).split("\\")[0])
    except ValueError:
        return None


def modality_from_tags(tags: Mapping[str, str]) -> tuple[str | None, str]:
    """(modality or None, what decided it) from a DICOM series' tags (module docstring, steps 1-2)."""
    for key in ("SeriesDescription", "ProtocolName", "SequenceName"):
        found = _named(str(tags.get(key, "")))
        if found is not None:
            if found == "t1" and str(tags.get("ContrastBolusAgent", "")).strip():
                return "t1ce", f"{key} {tags[key]!r} with a contrast agent ({tags['ContrastBolusAgent']})"
            return found, f"{key} {tags[key]!r}"
    tr, te, ti = (_number(tags, k) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    if tr is None or te is None:
        return None, "no modality in the series' names and no TR/TE"
    timing = f"TR {tr:g} ms, TE {te:g} ms" + (f", TI {ti:g} ms" if ti else "")
    if ti and ti >= FLAIR_MIN_TI:
        found = "flair"
    elif (tr <= T1_MAX_TR and te <= T1_MAX_TE) or (ti and ti <= MPRAGE_MAX_TI and te <= T1_MAX_TE):
        found = "t1"
    elif tr >= T2_MIN_TR and te >= T2_MIN_TE:
        found = "t2"
    elif tr >= T2_MIN_TR and te <= PD_MAX_TE:
        found = "pd"
    else:
        return None, f"sequence timing {timing} fits no contrast clearly"
    if found == "t1" and str(tags.get("ContrastBolusAgent", "")).strip():
        found = "t1ce"
    return found, f"sequence timing {timing}"


@dataclass(frozen=True)
class ModalityCheck:
    """The input's modality against the model's; `warning` is None when they agree."""
    input: str | None    # e.g. "t1"; None when unknown
    source: str          # how it was read: "file name", "DICOM SeriesDescription 't1_mprage'", ...
    model: str | None    # the checkpoint's training modality; None when it does not record one
    warning: str | None  # one line for the user, or None

    def to_json(self) -> dict:
        return {"input": self.input, "source": self.source, "model": self.model, "warning": self.warning}


def check_modality(found: str | None, source: str, model: str | None) -> ModalityCheck:
    """Compare an input's modality with the model's; never refuses, only warns."""
    if model is None:
        warning = None
    elif found is None:
        warning = (f"the input's modality is unknown ({source}); this model was trained on {model.upper()} scans, "
                   "check that the input is one")
    elif found != model:
        warning = (f"the input looks like {found.upper()} ({source}) but this model was trained on "
                   f"{model.upper()} scans: expect false alarms")
    else:
        warning = None
    return ModalityCheck(input=found, source=source, model=model, warning=warning)
