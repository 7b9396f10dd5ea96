"""The model-free intensity-threshold baseline (Meissen et al. 2021): brain pixels beyond a healthy intensity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sss_viewer.core.volume import ModelVolume

from .calibrate import DEFAULT_BUDGET

# Lesions are brighter than brain on FLAIR, T2, PD (oedema, tumour, plaques) and T1ce (enhancement), darker on T1.
LESION_SIGN = {"flair": 1, "t2": 1, "pd": 1, "t1ce": 1, "t1": -1}
BACKGROUND_SCORE = -1.0        # outside the brain: the floor of model space, never above a threshold
SCORE_CEILING = 1.0            # the top of model space: each brain's top intensities are clipped to it


def lesion_sign(modality: str) -> int:
    """+1 where the modality shows lesions bright, -1 where dark; ValueError for one without a known direction."""
    try:
        return LESION_SIGN[modality.lower()]
    except KeyError:
        raise ValueError(f"the intensity baseline knows no lesion direction for modality {modality!r} (known: "
                         f"{', '.join(sorted(LESION_SIGN))}); leave intensity* out of --methods") from None


def intensity_score(slices: np.ndarray, brain: np.ndarray, sign: int) -> np.ndarray:
    """The baseline's heat map: the model-space intensity times sign inside the brain, BACKGROUND_SCORE outside."""
    return np.where(brain, sign * slices, BACKGROUND_SCORE).astype(np.float32)     # (n, S, S)


def budget_threshold(scores: np.ndarray, budget: float) -> float:
    """The lowest of the scores with at most `budget` of them above it (values equal to it stay unflagged)."""
    ordered = np.sort(np.asarray(scores, np.float64).ravel())                     # (N,)
    if ordered.size == 0:
        raise ValueError("no brain pixel to calibrate the intensity threshold on")
    allowed = int(np.floor(budget * ordered.size))                                 # pixels the budget may flag
    return float(ordered[ordered.size - 1 - allowed])


@dataclass(frozen=True)
class IntensityBaseline:
    """The baseline for one modality: the direction lesions show in, and where its threshold comes from."""
    modality: str                            # the cases' modality (--modality)
    sign: int                                # LESION_SIGN of it
    budget: float                            # largest share of healthy brain pixels flagged
    threshold: float | None                  # calibrated on healthy brains; None: each case's own brain instead
    healthy_modalities: tuple[str | None, ...] = ()  # of the volumes it was calibrated on (None: not named)

    @classmethod
    def calibrate(cls, modality: str, healthy: Sequence[tuple[str, ModelVolume]],
                  healthy_modalities: Sequence[str | None] = (), budget: float = DEFAULT_BUDGET) -> IntensityBaseline:
        """The threshold that flags at most `budget` of the healthy volumes' brain pixels, pooled (sss-calibrate
        averages shares over volumes: the same with one volume). Without healthy volumes the threshold falls back
        to each case's own brain at that percentile, so sss-eval runs without --healthy as it always did: label-free,
        but no healthy calibration, and table.md says so."""
        sign = lesion_sign(modality)
        scores = [cls._brain_scores(volume, sign) for _, volume in healthy]
        threshold = budget_threshold(np.concatenate(scores), budget) if scores else None
        return cls(modality=modality.lower(), sign=sign, budget=budget, threshold=threshold,
                   healthy_modalities=tuple(healthy_modalities))

    @staticmethod
    def _brain_scores(volume: ModelVolume, sign: int) -> np.ndarray:
        """sign × intensity of the brain pixels over the volume's brain slices, (N,)."""
        first, last = volume.slice_range
        return sign * volume.data[first:last + 1][volume.brain_mask[first:last + 1]]

    def score(self, volume: ModelVolume, slices: Sequence[int] | slice) -> np.ndarray:
        """The heat map of some slices of a volume, (n, S, S)."""
        return intensity_score(volume.data[slices], volume.brain_mask[slices], self.sign)

    def threshold_for(self, volume: ModelVolume) -> float:
        """The calibrated threshold, else the budget's percentile of this volume's own brain."""
        if self.threshold is not None:
            return self.threshold
        return budget_threshold(self._brain_scores(volume, self.sign), self.budget)

    def describe(self) -> str:
        """One paragraph for table.md: the heat map, the direction, the threshold's source."""
        direction = "bright" if self.sign > 0 else "dark"
        text = (f"Intensity threshold (no model): the heat map is the model-space intensity of the brain, "
                f"{'' if self.sign > 0 else 'negated, '}as {self.modality} shows lesions {direction}; a brain pixel is "
                "flagged above a threshold ")
        if self.threshold is None:
            return text + (f"set per case at the {100 * (1 - self.budget):g}th percentile of **that case's own "
                           "brain** (no --healthy volumes: not a healthy calibration; each case has "
                           f"{100 * self.budget:g} % of its brain flagged before post-processing).")
        named = sorted({m for m in self.healthy_modalities if m})
        across = [m for m in named if m != self.modality]
        return text + (f"of {self.threshold:.4f}, calibrated to flag at most {100 * self.budget:g} % of the brain "
                       f"pixels of the --healthy volume(s) ({', '.join(named) or 'modality not named'}), the "
                       "false-alarm budget of sss-calibrate; its healthy FPR is in-sample."
                       + (" **It flags nothing**: more than the budget of healthy brain pixels sit at the top of "
                          "model space, where the contrast stretch clips." if self.threshold >= SCORE_CEILING else "")
                       + (f" **Cross-modality**: healthy {', '.join(across)} calibrates a threshold for "
                          f"{self.modality} cases; read its rows with care." if across else ""))
