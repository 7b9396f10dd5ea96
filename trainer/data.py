"""Healthy training volumes: which files are used, the preprocessed-slice cache, and augmented slice batches.

Which files are used (``find_volumes``):

* ``--data`` takes folders (searched recursively), glob patterns (``**`` allowed) and files. Folders and
  patterns yield every ``.nii`` / ``.nii.gz`` file in them except masks and label maps; a file named
  exactly is always used.
* Masks and label maps are recognised by their file name, split into lower-case tokens at every
  character that is not a letter or digit (``brainmask_t1.nii.gz`` → ``brainmask``, ``t1``): a file is
  skipped when a token contains ``mask``, ``seg``, ``label``, ``lesion`` or ``roi`` (brainmask, aseg,
  gmwm_labels, ...), or is a tissue-map name: ``gm``, ``wm``, ``csf``, ``pve``, ``prob``, ``probseg``,
  ``dseg``, ``tissue``.
* Modality comes from the same tokens (``t1``, ``t1w``, ``mprage`` → t1; ``t2``, ``t2w`` → t2; ``flair``;
  ``pd``; ``t1ce``, ``t1gd``, ``t1c`` → t1ce; BraTS-2023 ``t1n``, ``t2f``), looked up in the file name,
  else in its folder's name. ``--modality`` keeps the files of that modality and those with no
  modality token. Without it, files naming two or more modalities are refused: a model of healthy T1
  and T2 at once learns neither. Intensity histograms are not compared.

Brains (``healthy_scan``): a scan with its skull is usable as it is when its brain mask lies in the same
folder as ``<stem>_brainmask.nii[.gz]``, ``brainmask_<stem>.nii[.gz]`` or a lone ``brainmask.nii[.gz]``
(``brain_mask_for``); voxels outside the mask become background before preprocessing, and the mask's hash
is part of the cache key. A scan without a mask goes through ``inputs.open_scan``'s automatic check: deepbet
extracts the brain when the scan still has its skull, as for every input of the other tools.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sss_viewer.core import align as align_module
from sss_viewer.core import brain as brain_module
from sss_viewer.core import inputs as inputs_module
from sss_viewer.core import volume as volume_module
from sss_viewer.core.checkpoint import file_sha256
from sss_viewer.core.config import PreprocessConfig, config_to_dict
from sss_viewer.core.files import atomic_write
from sss_viewer.core.modality import MODALITY_TOKENS, modality_of, name_tokens
from sss_viewer.core.resources import cache_dir
from sss_viewer.core.inputs import Scan, open_scan
from sss_viewer.core.volume import NIFTI_SUFFIXES, prepare

CACHE_VERSION = 2            # bump when the cache layout changes
MIN_SLICES = 16              # fewer usable slices in all volumes together is refused as too small
SKIP_PARTS = ("mask", "seg", "label", "lesion", "roi")
SKIP_TOKENS = frozenset({"gm", "wm", "csf", "pve", "prob", "probseg", "dseg", "tissue"})
_GLOB_CHARS = re.compile(r"[*?\[]")


class DataError(ValueError):
    """Training data that cannot be used; the message names the files and what to do."""


def is_mask_or_label(path: str | os.PathLike) -> bool:
    """True for file names that mark masks, segmentations, label or tissue-probability maps (module docstring)."""
    return any(any(part in tok for part in SKIP_PARTS) or tok in SKIP_TOKENS for tok in name_tokens(Path(path).name))


def normalise_modality(name: str) -> str:
    """'T1w' → 't1' and so on; unknown names raise DataError listing the known ones."""
    key = name.strip().lower()
    if key not in MODALITY_TOKENS:
        raise DataError(f"unknown modality {name!r}; use one of {', '.join(sorted(set(MODALITY_TOKENS.values())))}")
    return MODALITY_TOKENS[key]


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _expand(spec: str) -> list[Path]:
    """NIfTI files of one --data entry, masks and labels removed unless the file was named exactly."""
    path = Path(spec).expanduser()
    if _GLOB_CHARS.search(spec):
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        if not matches:
            raise DataError(f"--data pattern {spec!r} matches nothing; check the path (quote it so the shell "
                            "does not expand it)")
        found = [f for m in matches for f in ([m] if m.is_file() else sorted(m.rglob("*"))) if _is_nifti(f)]
    elif path.is_dir():
        found = [f for f in sorted(path.rglob("*")) if _is_nifti(f)]
    elif path.exists():
        return [path]
    else:
        raise DataError(f"--data {spec} does not exist; give folders, files or glob patterns of healthy volumes")
    kept = [f for f in found if not is_mask_or_label(f)]
    if not kept:
        skipped = ", ".join(f.name for f in found[:4]) + (", ..." if len(found) > 4 else "")
        raise DataError(f"--data {spec}: no NIfTI volumes found" + (f" (skipped as masks/labels: {skipped})"
                                                                    if found else "")
                        + "; point it at the healthy scans (.nii/.nii.gz)")
    return kept


def find_volumes(specs: Sequence[str], modality: str | None = None) -> list[Path]:
    """The training files for --data specs, by the rules in the module docstring; raises DataError."""
    if not specs:
        raise DataError("no --data given; pass folders, files or glob patterns of healthy volumes")
    files, seen = [], set()
    for spec in specs:
        for f in _expand(str(spec)):
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    modalities = Counter(m for m in map(modality_of, files) if m is not None)
    if modality is not None:
        wanted = normalise_modality(modality)
        files = [f for f in files if modality_of(f) in (wanted, None)]
        if not files:
            raise DataError(f"no {wanted} volumes among the --data files (found: "
                            f"{', '.join(f'{n} {m}' for m, n in modalities.most_common())}); check --modality")
    elif len(modalities) > 1:
        counts = ", ".join(f"{n} {m}" for m, n in modalities.most_common())
        raise DataError(f"--data mixes modalities ({counts}); train one model per modality, e.g. "
                        f"--modality {modalities.most_common(1)[0][0]}")
    return files


def brain_mask_for(path: str | os.PathLike) -> Path | None:
    """The brain mask lying beside a training image (module docstring), or None."""
    p = Path(path)
    suffix = next((x for x in NIFTI_SUFFIXES[::-1] if p.name.lower().endswith(x)), p.suffix)
    stem = p.name[:len(p.name) - len(suffix)]
    for name in (f"{stem}_brainmask", f"brainmask_{stem}", "brainmask"):
        for ext in NIFTI_SUFFIXES[::-1]:
            candidate = p.with_name(name + ext)
            if candidate.is_file() and candidate.resolve() != p.resolve():
                return candidate
    return None


@dataclass(frozen=True)
class CachedVolume:
    """One volume's usable axial slices in model space, memory-mapped from the cache."""
    path: Path                 # source NIfTI file
    sha256: str                # of the source file's bytes
    slices: np.ndarray         # (n, S, S) float32 memmap: slices first_slice .. first_slice + n - 1, in [-1, 1]
    first_slice: int           # index of slices[0] in the volume (ModelVolume.slice_range[0])
    from_cache: bool           # False when this call preprocessed the file
    z_ratio: float = 1.0       # slice spacing / model pixel side (both mm): 3-D geometry of the stack
    mask: Path | None = None   # brain mask applied before preprocessing (brain_mask_for)
    extraction: str = "none"   # how the brain was found: "mask file ...", "deepbet" or "none" (inputs.Scan)

    def __len__(self) -> int:
        return len(self.slices)


@functools.cache
def _code_digest() -> str:
    """Digest of the preprocessing source (reading, brain extraction, volume.py, alignment): editing it invalidates
    every cache entry."""
    return "".join(file_sha256(m.__file__)[:8] for m in (volume_module, brain_module, inputs_module, align_module))


def cache_key(sha256: str, cfg: PreprocessConfig, mask_sha256: str = "") -> str:
    """Cache entry name: the file's content hash and a digest of the preprocessing (parameters, code, brain mask)."""
    params = json.dumps({"v": CACHE_VERSION, "cfg": config_to_dict(cfg), "code": _code_digest(), "mask": mask_sha256},
                        sort_keys=True)
    return f"{sha256[:32]}-{hashlib.sha256(params.encode()).hexdigest()[:16]}"


def healthy_scan(path: str | os.PathLike) -> Scan:
    """A healthy scan reduced to its brain: through the brain mask beside it, else by the automatic check."""
    return open_scan(path, brain_mask=brain_mask_for(path))


def _open_entry(npy: Path, meta: Path, cfg: PreprocessConfig) -> tuple[np.ndarray, int, float, str] | None:
    """The memmapped slices, first slice, z ratio and brain extraction of a complete cache entry, or None when
    absent or damaged."""
    try:
        info = json.loads(meta.read_text())
        slices = np.load(npy, mmap_mode="r")
        first, z_ratio, extraction = int(info["first_slice"]), float(info["z_ratio"]), str(info["extraction"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    size = cfg.image_size
    if slices.dtype != np.float32 or slices.shape[1:] != (size, size) or list(slices.shape) != info.get("shape"):
        return None
    return slices, first, z_ratio, extraction


def cached_volume(path: str | os.PathLike, cfg: PreprocessConfig, folder: Path | None = None,
                  mask: str | os.PathLike | None = None) -> CachedVolume:
    """The volume's usable slices (ModelVolume.slice_range of ``prepare(open_scan(path, brain_mask=mask).volume,
    cfg)``), cached; without a mask the automatic check decides whether deepbet extracts the brain.

    Entries live in ``folder`` (default: ``cache_dir() / "slices"``) as ``<key>.npy`` + ``<key>.json``,
    key = ``cache_key`` (content hash + preprocessing), each written atomically, the .json last so it
    marks a complete entry. A missing or damaged entry is rebuilt; entries of an older version of the
    same file (same path and preprocessing, other content) are deleted. Raises VolumeError.
    """
    path = Path(path)
    folder = cache_dir() / "slices" if folder is None else Path(folder)
    sha = file_sha256(path)
    mask = None if mask is None else Path(mask)
    key = cache_key(sha, cfg, "auto" if mask is None else file_sha256(mask))
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    entry = _open_entry(npy, meta, cfg)
    if entry is not None:
        return CachedVolume(path=path, sha256=sha, slices=entry[0], first_slice=entry[1], from_cache=True,
                            z_ratio=entry[2], mask=mask, extraction=entry[3])

    scan = open_scan(path, brain_mask=mask)
    model_volume = prepare(scan.volume, cfg)
    first, last = model_volume.slice_range
    z_ratio = model_volume.spacing[2] / model_volume.pixel_mm
    slices = np.ascontiguousarray(model_volume.data[first:last + 1], dtype=np.float32)   # (n, S, S)
    folder.mkdir(parents=True, exist_ok=True)
    source = str(path.resolve())
    suffix = key.split("-", 1)[1]
    for old in folder.glob(f"*-{suffix}.json"):            # same preprocessing, older content of this file
        if old.name != meta.name:
            try:
                stale = json.loads(old.read_text()).get("source") == source
            except (OSError, ValueError):
                stale = False
            if stale:
                old.unlink(missing_ok=True)
                old.with_suffix(".npy").unlink(missing_ok=True)
    atomic_write(npy, lambda f: np.save(f, slices))
    info = {"source": source, "sha256": sha, "first_slice": first, "shape": list(slices.shape), "z_ratio": z_ratio,
            "mask": None if mask is None else str(mask.resolve()), "extraction": scan.extraction,
            "preprocess": config_to_dict(cfg), "cache_version": CACHE_VERSION}
    atomic_write(meta, lambda f: f.write(json.dumps(info, indent=1).encode()))
    return CachedVolume(path=path, sha256=sha, slices=np.load(npy, mmap_mode="r"), first_slice=first,
                        from_cache=False, z_ratio=z_ratio, mask=mask, extraction=scan.extraction)


class SliceSet:
    """All usable slices of the training volumes; draws batches as the paper does (random volume, random slice)."""

    def __init__(self, volumes: Sequence[CachedVolume]):
        self.volumes = list(volumes)
        if not self.volumes:
            raise DataError("no training volumes; pass folders, files or glob patterns of healthy volumes to --data")
        self.lengths = torch.tensor([len(v) for v in self.volumes], dtype=torch.float64)   # (V,)
        total = int(self.lengths.sum())
        if total < MIN_SLICES:
            raise DataError(f"the {len(self.volumes)} --data volume(s) give only {total} usable axial slices, "
                            f"fewer than {MIN_SLICES}; add more healthy volumes")
        self.image_size = self.volumes[0].slices.shape[-1]

    @property
    def n_slices(self) -> int:
        return int(self.lengths.sum())

    def sample(self, batch: int, generator: torch.Generator, tilt_deg: float = 0.0) -> torch.Tensor:
        """A batch x0 (B, 1, S, S) on the CPU: per item a uniform volume, then a uniform slice in its brain range.

        With tilt_deg > 0 each item is an oblique plane through that slice's centre instead (``oblique_plane``),
        tilted by pitch and roll uniform in ±tilt_deg: head positions that in-plane augmentation cannot make.
        """
        vol = torch.randint(len(self.volumes), (batch,), generator=generator)                  # (B,)
        pos = (torch.rand(batch, generator=generator, dtype=torch.float64) * self.lengths[vol]).long()  # (B,)
        if tilt_deg <= 0:
            x0 = np.stack([self.volumes[v].slices[k] for v, k in zip(vol.tolist(), pos.tolist())])  # (B, S, S)
            return torch.from_numpy(x0).unsqueeze(1)                                          # (B, 1, S, S)
        angles = (torch.rand(batch, 2, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(tilt_deg)
        planes = [oblique_plane(self.volumes[v], k, float(a), float(b))
                  for v, k, (a, b) in zip(vol.tolist(), pos.tolist(), angles.tolist())]
        return torch.stack(planes).unsqueeze(1)                                                # (B, 1, S, S)

    def fixed_slices(self, count: int = 4) -> np.ndarray:
        """count slices chosen once (spread over volumes, then positions) for previews: (count, S, S)."""
        per_volume = math.ceil(count / len(self.volumes))
        out = []
        for i in range(count):
            v = self.volumes[i % len(self.volumes)]
            frac = (i // len(self.volumes) + 1) / (per_volume + 1)
            out.append(np.asarray(v.slices[min(int(frac * len(v)), len(v) - 1)]))
        return np.stack(out)                                                                   # (count, S, S)


def oblique_plane(volume: CachedVolume, k: int, pitch: float, roll: float) -> torch.Tensor:
    """The plane through the centre of cached slice k, rotated by roll about the A-P axis, then by pitch about
    the L-R axis (radians), sampled trilinearly: (S, S) in [-1, 1].

    In millimetres, in-plane offset (r, c) from the centre goes to
    (r cos(pitch) - c sin(roll) sin(pitch), c cos(roll), r sin(pitch) + c sin(roll) cos(pitch)) (row, column, z);
    z is converted to slices by the stack's z_ratio and clamped to the cached range.
    """
    n, s, _ = volume.slices.shape
    d = torch.arange(s, dtype=torch.float64) + 0.5 - s / 2                                    # (S,) pixel offsets
    r, c = d.view(s, 1), d.view(1, s)
    rows = (r * math.cos(pitch) - c * math.sin(roll) * math.sin(pitch)) + s / 2 - 0.5       # (S, S) pixel index
    cols = (c * math.cos(roll)).expand(s, s) + s / 2 - 0.5                                   # (S, S)
    z = (k + (r * math.sin(pitch) + c * math.sin(roll) * math.cos(pitch)) / volume.z_ratio).clamp(0, n - 1)
    lo, hi = int(z.min()), min(n - 1, int(math.ceil(float(z.max()))))
    slab = torch.from_numpy(np.array(volume.slices[lo:hi + 1], dtype=np.float32))            # (D, S, S)
    depth = max(hi - lo, 1)
    grid = torch.stack([cols / (s - 1), rows / (s - 1), (z - lo) / depth], -1) * 2 - 1      # (S, S, 3) x, y, z
    plane = F.grid_sample(slab[None, None] + 1, grid[None, None].float(), mode="bilinear", padding_mode="zeros",
                          align_corners=True)                                               # (1, 1, 1, S, S)
    return plane[0, 0, 0] - 1                                                                # (S, S)


@dataclass(frozen=True)
class Augment:
    """Anatomy-preserving augmentation for scans from other people, scanners and head positions; every item
    draws its own parameters."""
    rotation_deg: float = 15.0    # in-plane rotation uniform in ±rotation_deg
    tilt_deg: float = 10.0        # out-of-plane pitch and roll uniform in ±tilt_deg (SliceSet.sample)
    scale: float = 0.1            # zoom uniform in 1 ± scale
    shift_px: float = 4.0         # translation uniform in ±shift_px pixels per axis
    flip: bool = True             # left-right mirror with probability 1/2 (brains are near-symmetric)
    elastic_px: float = 1.5       # smooth displacement: N(0, elastic_px²) pixels on a 5 x 5 grid, bicubic between
    gamma: float = 1.3            # intensity gamma log-uniform in [1/gamma, gamma]
    brightness: float = 0.1       # intensity factor uniform in 1 ± brightness (after gamma), clipped
    bias: float = 0.15            # multiplicative bias field exp(b), b ~ N(0, bias²) on a 3 x 3 grid, bilinear between
    noise: float = 0.02           # additive Gaussian noise on brain pixels, std uniform in [0, noise] (unit range)


def augment(x0: torch.Tensor, generator: torch.Generator, aug: Augment = Augment()) -> torch.Tensor:
    """Random affine + elastic warp, then gamma, bias field and noise, on a batch in model space; background
    stays -1.

    Geometry: output pixel p samples the input at R(θ) p / s + d + w(p) (normalised coordinates, bilinear,
    outside → -1), with x mirrored for flipped items and w a smooth random displacement. Intensity on
    u = (x + 1) / 2 in [0, 1]: u' = clip(b · u^γ · exp(f) + n, 0, 1) on brain pixels, f a smooth random
    field and n Gaussian noise, so u = 0 (background, -1) stays 0. Parameters come from generator (CPU).
    """
    b, _, s, _ = x0.shape
    u = torch.rand(b, 8, generator=generator, dtype=torch.float64) * 2 - 1                 # (B, 8) in [-1, 1)
    angle = u[:, 0] * math.radians(aug.rotation_deg)
    scale = 1 + u[:, 1] * aug.scale
    shift = u[:, 2:4] * (2 * aug.shift_px / s)                                              # (B, 2) normalised
    mirror = torch.where(u[:, 4] < 0, -1.0, 1.0) if aug.flip else torch.ones(b, dtype=torch.float64)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                         torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)              # (B, 2, 3)
    theta = theta.to(x0.device, x0.dtype)
    grid = F.affine_grid(theta, list(x0.shape), align_corners=False)                      # (B, S, S, 2)
    warp = torch.randn(b, 2, 5, 5, generator=generator) * (2 * aug.elastic_px / s)          # (B, 2, 5, 5) normalised
    warp = F.interpolate(warp, size=(s, s), mode="bicubic", align_corners=True)            # (B, 2, S, S)
    grid = grid + warp.permute(0, 2, 3, 1).to(x0.device, x0.dtype)                         # (B, S, S, 2)
    moved = F.grid_sample(x0 + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, 1, S, S)
    gamma = torch.exp(u[:, 5] * math.log(aug.gamma)).to(x0.device, x0.dtype).view(b, 1, 1, 1)
    bright = (1 + u[:, 6] * aug.brightness).to(x0.device, x0.dtype).view(b, 1, 1, 1)
    field = torch.randn(b, 1, 3, 3, generator=generator) * aug.bias                          # (B, 1, 3, 3)
    field = torch.exp(F.interpolate(field, size=(s, s), mode="bilinear", align_corners=True)).to(x0.device, x0.dtype)
    sigma = ((u[:, 7] + 1) / 2 * aug.noise).to(x0.device, x0.dtype).view(b, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype) * sigma     # (B, 1, S, S)
    unit = (moved / 2).clamp(0, 1)                                                          # (B, 1, S, S) in [0, 1]
    brain = unit > 0
    unit = torch.where(brain, bright * unit.pow(gamma) * field + noise, unit)
    return unit.clamp(0, 1) * 2 - 1                                                        # (B, 1, S, S)
