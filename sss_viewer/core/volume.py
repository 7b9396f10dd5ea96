"""NIfTI volumes in (oriented by the affine), preprocessing to model space and back, NIfTI out.

Three spaces, and the exact maps between them:

* native: the input file's own array layout (any axis order and direction).
* canonical: the same voxels reordered (permutation and flips only, no resampling) to RAS+:
  array axes (x: left→right, y: posterior→anterior, z: inferior→superior); axial slice k is
  ``data[:, :, k]``. ``Volume.to_native`` maps any canonical array back to the native layout.
* model: one square ``S × S`` image per axial slice, ``(Z, S, S)``, cropped to the brain's
  bounding box (one box for the whole volume, plus a margin), padded to a square in millimetres
  and resampled so model pixels are square in millimetres. Display layout, radiological: model row
  runs anterior → posterior (anterior at the top), model column runs patient right → left (the
  patient's right on the viewer's left). ``Volume.axial_slice`` gives canonical slices in the same
  layout at full resolution. ``ModelVolume.to_canonical`` maps model-space results back.

For model pixel (r, c) of slice z, with half-size h = S / 2, model pixel side p (mm), canonical
spacing (sx, sy) and brain-box centre (cx, cy) in canonical voxel indices:

    x = cx - (c + 0.5 - h) · p / sx,      y = cy - (r + 0.5 - h) · p / sy

and the inverse, used to bring model-space maps back onto every canonical voxel:

    c = (cx - x) · sx / p + h - 0.5,      r = (cy - y) · sy / p + h - 0.5
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import sparse

from .config import PreprocessConfig

if TYPE_CHECKING:
    from .align import Alignment

MAX_VOXELS = 2 ** 28  # largest 3-D volume accepted (1 GiB as float32)
BACKGROUND_MIN_FRACTION = 0.05  # a minimum value covering this share of voxels is a flat background
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)
_RAS = axcodes2ornt(("R", "A", "S"))


def file_stem(path: str | os.PathLike) -> str:
    """A file's name without .nii / .nii.gz (any case), else without its last suffix: the stem of output names."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return Path(path).stem


class VolumeError(ValueError):
    """A volume that cannot be read, analysed or written; the message says what to do."""


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_values(data: np.ndarray, name: str, allow_constant: bool = False) -> None:
    """Refuse empty, non-finite and (unless allowed) constant arrays."""
    if data.size == 0:
        raise VolumeError(f"{name} is empty (shape {data.shape}); choose a file that holds an image")
    finite = np.isfinite(data)
    if not finite.any():
        raise VolumeError(f"{name} has no finite values (all NaN or inf); the file is broken, re-export it")
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise VolumeError(f"{name} has {bad} NaN/inf voxels; replace them (e.g. `fslmaths in -nan out`) and retry")
    if not allow_constant and data.min() == data.max():
        raise VolumeError(f"{name} is constant (every voxel = {data.flat[0]:g}); nothing to analyse, check the file")


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D scan in canonical RAS+ layout, with what is needed to write results on its own grid."""

    data: np.ndarray = field(repr=False)  # (X, Y, Z) float32, canonical RAS+
    spacing: tuple[float, float, float]  # mm per canonical axis (x, y, z)
    affine: np.ndarray                  # (4, 4) voxel → world of the input's native array
    header: nib.Nifti1Header = field(repr=False)  # the input's header (Nifti2Header for NIfTI-2 inputs)
    path: Path | None                   # source file; None for arrays built in memory
    axcodes: tuple[str, str, str]       # orientation letters of the input's native axes, e.g. ("L", "I", "A")
    ornt: np.ndarray                    # (3, 2) nibabel orientation taking the native array to canonical

    @classmethod
    def from_array(cls, data: np.ndarray, affine: np.ndarray | None = None,
                   header: nib.Nifti1Header | None = None, name: str = "array") -> Volume:
        """Volume from a native 3-D array and its affine (default: 1 mm voxels, RAS), as if loaded."""
        arr = np.asarray(data)
        if arr.ndim != 3:
            raise VolumeError(f"{name} has {arr.ndim} dimensions (shape {arr.shape}); a 3-D volume is needed")
        if arr.size > MAX_VOXELS:
            raise VolumeError(f"{name} has {arr.size} voxels, over the {MAX_VOXELS} limit; crop or downsample it")
        arr = arr.astype(np.float32, copy=False)
        _check_values(arr, name)
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if header is None:
            header = nib.Nifti1Header()
            header.set_data_shape(arr.shape)
            header.set_qform(affine, 1)
            header.set_sform(affine, 1)
        return cls._reorient(arr, affine, header, None, name)

    @classmethod
    def _reorient(cls, native: np.ndarray, affine: np.ndarray, header, path: Path | None, name: str) -> Volume:
        """Canonical RAS+ view of a checked native array, by the affine (permutation and flips only)."""
        ornt = io_orientation(affine)
        if np.isnan(ornt).any():
            raise VolumeError(f"{name} has a degenerate affine (no clear axis directions); fix its qform/sform")
        data = np.ascontiguousarray(apply_orientation(native, ornt), dtype=np.float32)  # (X, Y, Z)
        if data.shape[0] < 2 or data.shape[1] < 2:
            raise VolumeError(f"{name} is {data.shape} in RAS order: not an axial stack; "
                              "a 3-D brain volume is needed")
        voxel_mm = np.asarray(header.get_zooms()[:3], dtype=np.float64)  # mm per native axis (pixdim)
        if voxel_mm.size != 3 or not (np.isfinite(voxel_mm).all() and (voxel_mm > 0).all()):
            voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # the affine's column norms
            if not (np.isfinite(voxel_mm).all() and (voxel_mm > 0).all()):
                raise VolumeError(f"{name} has no valid voxel size; fix pixdim or the affine in its header")
        spacing = [0.0, 0.0, 0.0]
        for axis, (to_axis, _) in enumerate(ornt):
            spacing[int(to_axis)] = float(voxel_mm[axis])
        return cls(data=data, spacing=tuple(spacing), affine=affine.copy(), header=header.copy(), path=path,
                   axcodes=tuple(nib.aff2axcodes(affine)), ornt=ornt)

    @property
    def n_slices(self) -> int:
        """Number of axial slices (canonical z)."""
        return self.data.shape[2]

    @property
    def pixel_aspect(self) -> float:
        """Height / width of one pixel of an axial slice as displayed (A-P spacing / L-R spacing)."""
        return self.spacing[1] / self.spacing[0]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (for lesion volumes)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def native_shape(self) -> tuple[int, ...]:
        """Array shape in the input file's layout."""
        return tuple(self.data.shape[int(to_axis)] for to_axis in self.ornt[:, 0])

    @property
    def canonical_affine(self) -> np.ndarray:
        """(4, 4) voxel → world affine of the canonical array (same world as the input)."""
        return self.affine @ inv_ornt_aff(self.ornt, self.native_shape)

    def axial_slice(self, k: int) -> np.ndarray:
        """Canonical axial slice k in display layout: (Y, X), rows anterior → posterior, columns right → left."""
        return self.data[::-1, ::-1, k].T

    def to_native(self, arr: np.ndarray) -> np.ndarray:
        """Canonical (X, Y, Z) array → the input's native array layout, exactly (no resampling)."""
        arr = np.asarray(arr)
        if arr.shape != self.data.shape:
            raise VolumeError(f"array shape {arr.shape} is not the canonical shape {self.data.shape} of this volume")
        return np.ascontiguousarray(apply_orientation(arr, ornt_transform(_RAS, self.ornt)))


def _read(path: str | os.PathLike, allow_constant: bool) -> tuple[np.ndarray, nib.Nifti1Image, str]:
    """Native float32 3-D array (first volume of a 4-D file) and the image; raises VolumeError."""
    p = Path(path)
    name = str(p)
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{name} is not a .nii or .nii.gz file; convert it to NIfTI first (e.g. dcm2niix)")
    if not p.is_file():
        raise VolumeError(f"{name} does not exist or is not a file; check the path")
    try:
        img = nib.load(str(p))
    except _READ_ERRORS as err:
        raise VolumeError(f"{name} is not a readable NIfTI file ({_one_line(err)}); "
                          "re-export or re-download it") from err
    if img.get_data_dtype().kind not in "biuf":
        raise VolumeError(f"{name} holds {img.get_data_dtype()} voxels (RGB/complex?); "
                          "a scalar greyscale image is needed")
    shape = img.shape
    dims = len(shape)
    while dims > 3 and shape[dims - 1] == 1:
        dims -= 1
    if dims < 3:
        raise VolumeError(f"{name} is {dims}-D (shape {shape}); a 3-D brain volume is needed")
    if dims > 4:
        raise VolumeError(f"{name} is {dims}-D (shape {shape}); give a 3-D volume (split it, e.g. with fslsplit)")
    if 0 in shape:
        raise VolumeError(f"{name} is empty (shape {shape}); choose a file that holds an image")
    n_voxels = int(np.prod(shape[:3]))
    if n_voxels > MAX_VOXELS:
        raise VolumeError(f"{name} has {n_voxels} voxels per volume, over the {MAX_VOXELS} limit; "
                          "crop or downsample it first")
    if dims == 4:
        warnings.warn(f"{name} is 4-D with {shape[3]} volumes; using the first one (index 0)", stacklevel=3)
    slicer = (slice(None),) * 3 + (0,) * (len(shape) - 3)
    try:
        native = np.asarray(img.dataobj[slicer], dtype=np.float32)  # (native axes), reads the data now
    except _READ_ERRORS as err:
        raise VolumeError(f"{name}: its voxel data cannot be read ({_one_line(err)}); "
                          "the file is truncated or corrupt, re-export or re-download it") from err
    _check_values(native, name, allow_constant)
    return native, img, name


def load_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI-1/2 scan (.nii, .nii.gz), reoriented to canonical RAS+ by its affine; raises VolumeError."""
    native, img, name = _read(path, allow_constant=False)
    if np.array_equal(img.affine, np.eye(4)):  # what a converter writes when the source had no geometry
        warnings.warn(f"{name} has an identity affine (its orientation and voxel size were probably lost); its "
                      "third voxel axis is taken as axial and its voxels as 1 mm: check that the slices look axial",
                      stacklevel=2)
    return Volume._reorient(native, img.affine, img.header, Path(path), name)


def load_mask(path: str | os.PathLike, like: Volume) -> np.ndarray:
    """Read a label/mask file on the grid of `like`: (X, Y, Z) bool canonical, True where label > 0."""
    native, img, name = _read(path, allow_constant=True)
    mask = Volume._reorient(native, img.affine, img.header, Path(path), name)
    if mask.data.shape != like.data.shape or not np.allclose(mask.canonical_affine, like.canonical_affine, atol=1e-3):
        raise VolumeError(f"{name} is not on the grid of {like.path or 'the image'} (shape {mask.native_shape} vs "
                          f"{like.native_shape}, or a different affine); resample the mask onto the image first")
    return mask.data > 0  # (X, Y, Z)


def background_level(data: np.ndarray | torch.Tensor) -> float:
    """Intensity of the flat background: the minimum if it covers ≥ BACKGROUND_MIN_FRACTION of voxels, else 0.

    Skull-stripped scans have a zero background; some (e.g. z-scored BraTS 2013) have a constant
    negative one. Brain voxels are those above ``background_level + cfg.brain_threshold``. An array on the
    host or a tensor on its device.
    """
    low = float(data.min())
    covered = int((data == low).sum()) if isinstance(data, torch.Tensor) else np.count_nonzero(data == low)
    return low if covered >= BACKGROUND_MIN_FRACTION * math.prod(data.shape) else 0.0


@dataclass(frozen=True, eq=False)
class ModelVolume:
    """Axial slices in model space (radiological display layout) and the exact map back to canonical voxels."""

    data: np.ndarray = field(repr=False)   # (Z, S, S) float32 in [-1, 1]; rows A → P, columns R → L
    brain_mask: np.ndarray = field(repr=False)  # (Z, S, S) bool, brain in model space
    slice_range: tuple[int, int]           # first, last (inclusive) slices, brain area ≥ min_brain_fraction × max
    cfg: PreprocessConfig                  # the preprocessing that made this (recorded in checkpoints)
    canonical_shape: tuple[int, int, int]  # (X, Y, Z) of the canonical volume
    spacing: tuple[float, float, float]    # canonical mm per axis
    centre: tuple[float, float]            # (cx, cy) brain-box centre, canonical voxel indices
    pixel_mm: float                        # model pixel side p in mm (square pixels)
    brain_box: tuple[int, int, int, int]   # x0, x1, y0, y1 (inclusive) canonical in-plane brain bounding box
    intensity_range: tuple[float, float]   # raw intensities mapped to -1 and +1
    background: float                      # raw background level (see background_level)
    resident: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # (data, brain_mask) as
    #                                      tensors where prepare ran on a torch device; None from the host
    alignment: Alignment | None = None     # cfg.align: the canonical grid above is the aligned one, and this maps
    #                                      it onto the input's canonical voxels (core/align.py)

    @property
    def image_size(self) -> int:
        """Model-space square side S."""
        return self.cfg.image_size

    @property
    def n_slices(self) -> int:
        """Number of axial slices (equals the canonical Z)."""
        return self.canonical_shape[2]

    def on_device(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(data, brain_mask) as tensors on `device`: the copies prepare left there, else uploaded."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:                 # "cuda": the current GPU's tensors
            device = torch.device("cuda", torch.cuda.current_device())
        if self.resident is not None and self.resident[0].device == device:
            return self.resident
        return _tensor(self.data, device), _tensor(self.brain_mask, device)

    def _canonical_weights(self, mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """1-D grid_sample weights of canonical x at model columns (S, X) and of canonical y at model rows (S, Y).

        Each model pixel averages its k sub-pixel samples along each axis (k × k in the plane).
        """
        X, Y, _ = self.canonical_shape
        sx, sy, _ = self.spacing
        cx, cy = self.centre
        S = self.image_size
        offset = (np.arange(k * S) + 0.5 - k * S / 2) * (self.pixel_mm / k)  # (kS,) mm from the square's middle
        x = cx - offset / sx  # (kS,) canonical x along model columns
        y = cy - offset / sy  # (kS,) canonical y along model rows
        return (_axis_weights(x, X, mode).reshape(S, k, X).mean(axis=1),
                _axis_weights(y, Y, mode).reshape(S, k, Y).mean(axis=1))

    def _model_weights(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """1-D grid_sample weights of model columns at canonical x (X, S) and of model rows at canonical y (Y, S)."""
        X, Y, _ = self.canonical_shape
        sx, sy, _ = self.spacing
        cx, cy = self.centre
        S = self.image_size
        c = (cx - np.arange(X)) * sx / self.pixel_mm + S / 2 - 0.5  # (X,)
        r = (cy - np.arange(Y)) * sy / self.pixel_mm + S / 2 - 0.5  # (Y,)
        return _axis_weights(c, S, mode), _axis_weights(r, S, mode)

    def _to_model(self, canonical: np.ndarray | torch.Tensor, mode: str, fill: float) -> np.ndarray:
        """Sample a canonical (X, Y, Z) array at every model pixel of every slice → (Z, S, S); outside → fill.

        Bilinear sampling (float32 out) averages k × k sub-pixel samples, k = ceil(p / finest in-plane
        spacing), so shrinking weighs every voxel under a model pixel (area-weighted anti-aliasing).
        Nearest sampling keeps the input's dtype. A NumPy input is sampled on the host (a sparse product), a
        tensor on its device (``_separable``), left there.
        """
        X, Y, Z = self.canonical_shape
        S = self.image_size
        k = 1 if mode == "nearest" else max(1, math.ceil(self.pixel_mm / min(self.spacing[:2]) - 1e-6))
        w_x, w_y = self._canonical_weights(mode, k)
        if isinstance(canonical, torch.Tensor):
            return _separable(w_x, w_y, canonical, mode == "nearest", fill).permute(2, 1, 0).contiguous()
        # (S·S, X·Y): model pixel (r, c) ← canonical voxel (x, y)
        operator = _separable_operator(w_y, w_x, strides=(1, Y), n_in=X * Y)
        out = _apply(operator, canonical.reshape(X * Y, Z), mode == "nearest", fill)  # (S·S, Z)
        return _transposed(out).reshape(Z, S, S)

    def image_to_model(self, canonical: np.ndarray) -> np.ndarray:
        """Another image on this volume's canonical grid (e.g. the scan before brain extraction) → (Z, S, S),
        with this volume's contrast stretch and sampling (for display beside the model's input)."""
        canonical = np.asarray(canonical, dtype=np.float32)
        if self.alignment is not None:                                      # the input's grid → the aligned one
            canonical = self.alignment.to_aligned(canonical - self.alignment.offset)
        if canonical.shape != self.canonical_shape:
            raise VolumeError(f"image shape {canonical.shape} is not the volume's canonical shape "
                              f"{self.canonical_shape}")
        stretched = stretch_contrast(canonical, np.ones(canonical.shape, bool), *self.intensity_range)  # (X, Y, Z)
        return self._to_model(stretched, "bilinear", -1.0)

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """Canonical (X, Y, Z) label/mask (> 0 is inside) → (Z, S, S) bool, nearest neighbour, same transform."""
        mask = np.asarray(mask)
        if self.alignment is not None:                                      # the input's grid → the aligned one
            mask = self.alignment.to_aligned(mask > 0, nearest=True)
        if mask.shape != self.canonical_shape:
            raise VolumeError(f"mask shape {mask.shape} is not the volume's canonical shape {self.canonical_shape}; "
                              "load it with load_mask(path, like=volume)")
        return self._to_model(mask > 0, "nearest", 0.0)

    def to_canonical(self, maps: np.ndarray, order: str = "linear", first_slice: int = 0,
                     device: torch.device | str | None = None) -> np.ndarray:
        """Model-space maps (n, S, S) for slices first_slice … first_slice + n - 1 → canonical (X, Y, Z).

        Every canonical voxel samples its own position in model space: order="linear" (bilinear,
        for heat maps) or "nearest" (for masks; a bool input gives a bool output). Voxels outside
        the model square, and slices not given, are 0. ``Volume.to_native`` then gives the input layout.
        Computed on the host, or on a torch `device` (e.g. the detector's GPU). With an alignment, the result is
        then resampled onto the input's canonical grid (the same order), so it is always the input's (X, Y, Z).
        """
        canonical = self._to_aligned_canonical(maps, order, first_slice, device)
        if self.alignment is None:
            return canonical
        return self.alignment.to_input(canonical, nearest=order == "nearest")

    def grid_to_model(self, grid_map: np.ndarray) -> np.ndarray:
        """A float map on this volume's own canonical grid (the aligned one under an alignment) → (Z, S, S), sampled
        like the image (bilinear, area-weighted), 0 outside it."""
        return self._to_model(np.asarray(grid_map, np.float32), "bilinear", 0.0)

    def model_to_grid(self, maps: np.ndarray, first_slice: int = 0) -> np.ndarray:
        """Model-space float maps (n, S, S) from first_slice on → this volume's own canonical grid (X, Y, Z), the
        aligned one under an alignment (bilinear; to_canonical goes on to the input's)."""
        return self._to_aligned_canonical(maps, "linear", first_slice, None)

    def _to_aligned_canonical(self, maps: np.ndarray, order: str, first_slice: int,
                              device: torch.device | str | None) -> np.ndarray:
        """to_canonical onto this volume's own canonical grid (the aligned one under an alignment)."""
        maps = np.asarray(maps)
        if order not in ("linear", "nearest"):
            raise ValueError(f"order must be 'linear' or 'nearest', not {order!r}")
        S = self.image_size
        if maps.ndim != 3 or maps.shape[1:] != (S, S):
            raise VolumeError(f"model-space maps must be (n, {S}, {S}), not {maps.shape}")
        n = maps.shape[0]
        if first_slice < 0 or first_slice + n > self.n_slices:
            raise VolumeError(f"slices {first_slice}..{first_slice + n - 1} are outside 0..{self.n_slices - 1}")
        X, Y, Z = self.canonical_shape
        nearest = order == "nearest"
        w_c, w_r = self._model_weights("nearest" if nearest else "bilinear")
        dtype = bool if nearest and maps.dtype == bool else np.float32
        src = maps.astype(dtype, copy=False)  # (n, S, S)
        if device is not None:
            sampled = _separable(w_c, w_r, _tensor(src, device).permute(2, 1, 0), nearest).cpu().numpy()
        else:
            # (X·Y, S·S): canonical voxel (x, y) ← model pixel (r, c)
            operator = _separable_operator(w_c, w_r, strides=(1, S), n_in=S * S)
            sampled = _apply(operator, _transposed(src.reshape(n, S * S)), nearest).reshape(X, Y, n)
        if n == Z:
            return sampled
        out = np.zeros(self.canonical_shape, dtype=dtype)  # (X, Y, Z)
        out[:, :, first_slice:first_slice + n] = sampled
        return out


def _axis_weights(coord: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(n, size) float32 weights of grid_sample along one axis of `size` pixels at pixel coordinates coord (n,).

    Row i holds grid_sample's own samples at coord[i] of the unit impulses at every pixel (zeros padding,
    align_corners=False, float32 grid as a 2-D grid would hold it), so its rounding is reproduced exactly.
    """
    grid = np.zeros((1, 1, len(coord), 2), dtype=np.float32)
    grid[0, 0, :, 0] = (2 * coord + 1) / size - 1  # (n,) normalised; height 1, sampled at its centre
    impulses = np.eye(size, dtype=np.float32)[None, :, None, :]  # (1, size, 1, size): channel j is 1 at pixel j
    return F.grid_sample(torch.from_numpy(impulses), torch.from_numpy(grid), mode=mode, padding_mode="zeros",
                         align_corners=False)[0, :, 0].T.numpy()


def _tensor(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A NumPy array as a tensor on `device` (sharing a writable array's memory on the CPU)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy()).to(device, non_blocking=True)


def _host(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host; an array as it is."""
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else a


def _apply(operator: sparse.csr_matrix, src: np.ndarray, nearest: bool, fill: float = 0.0) -> np.ndarray:
    """operator @ src for src (n_in, m) on the host, with `fill` where the operator has no weight.

    Nearest-neighbour operators (one weight of 1 a row, or none) are an exact row gather in src's dtype;
    others give operator @ (src - fill) + fill in float32.
    """
    if nearest:
        inside = np.diff(operator.indptr) > 0  # (rows,)
        index = np.zeros(operator.shape[0], dtype=np.int64)
        index[inside] = operator.indices
        out = src[index]  # (rows, m)
        out[~inside] = fill
        return out
    out = operator @ (np.subtract(src, fill, dtype=np.float32) if fill or src.dtype != np.float32 else src)
    if fill:
        out += fill
    return out


def _separable(w_a: np.ndarray, w_b: np.ndarray, src: torch.Tensor, nearest: bool, fill: float = 0.0) -> torch.Tensor:
    """out[p, q] = Σ_ab w_a[p, a] · w_b[q, b] · (src[a, b] - fill) + fill for src (A, B, m) on its device → (P, Q, m).

    Two dense float32 products (the weights are small: (P, A) and (Q, B)); nearest-neighbour weights (one 1 a
    row, or none) are an exact gather in src's dtype instead, `fill` where a row has no weight.
    """
    if nearest:
        (inside_a, index_a), (inside_b, index_b) = ((torch.from_numpy(w.any(axis=1)).to(src.device),
                                                     torch.from_numpy(w.argmax(axis=1)).to(src.device))
                                                    for w in (w_a, w_b))
        out = src.index_select(0, index_a).index_select(1, index_b)  # (P, Q, m)
        out[~inside_a] = fill
        out[:, ~inside_b] = fill
        return out
    a, b, m = src.shape
    weights_a, weights_b = (torch.from_numpy(w).to(src.device) for w in (w_a, w_b))
    along_b = torch.matmul(weights_b, src.float() - fill)  # (A, Q, m): (Q, B) @ (A, B, m)
    out = (weights_a @ along_b.reshape(a, -1)).reshape(len(w_a), len(w_b), m)  # (P, Q, m)
    return out + fill if fill else out


def _transposed(a: np.ndarray, block: int = 256) -> np.ndarray:
    """C-contiguous copy of a.T for a 2-D array, `block` rows of `a` at a time (cache-friendly for tall arrays)."""
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    for start in range(0, a.shape[0], block):
        out[:, start:start + block] = a[start:start + block].T
    return out


def _separable_operator(w_major: np.ndarray, w_minor: np.ndarray, strides: tuple[int, int],
                        n_in: int) -> sparse.csr_matrix:
    """Sparse (m·n, n_in) map:
    output[i·n + j] = Σ_ab w_major[i, a] · w_minor[j, b] · input[a·strides[0] + b·strides[1]]."""
    i, a = np.nonzero(w_major)
    j, b = np.nonzero(w_minor)
    rows = i[:, None] * w_minor.shape[0] + j[None, :]  # (taps of major, taps of minor)
    cols = a[:, None] * strides[0] + b[None, :] * strides[1]
    values = w_major[i, a][:, None] * w_minor[j, b][None, :]
    return sparse.csr_matrix((values.ravel(), (rows.ravel(), cols.ravel())),
                             shape=(w_major.shape[0] * w_minor.shape[0], n_in))


def stretch_contrast(data: np.ndarray | torch.Tensor, brain: np.ndarray | torch.Tensor, low: float,
                     high: float) -> np.ndarray | torch.Tensor:
    """Map intensities linearly so low → -1 and high → +1, clipped to [-1, 1]; non-brain voxels → -1.

    Degenerate range (high ≤ low, e.g. a binary mask): brain voxels → +1. Arrays on the host, or tensors
    on their device; float32 out.
    """
    if isinstance(data, torch.Tensor):
        if high > low:
            out = data.float().sub(low).mul_(2.0 / (high - low)).sub_(1.0).clamp_(-1.0, 1.0)
        else:
            out = torch.ones_like(data, dtype=torch.float32)
        return out.masked_fill_(~brain, -1.0)
    if high > low:
        out = np.subtract(data, low, dtype=np.float32)
        out *= 2.0 / (high - low)
        out -= 1.0
        np.clip(out, -1.0, 1.0, out=out)
    else:
        out = np.ones(data.shape, dtype=np.float32)
    out[~brain] = -1.0
    return out


def percentile(values: np.ndarray | torch.Tensor, q: float) -> float:
    """np.percentile(values, [q])[0] (linear method, interpolated in float64) bit for bit, from the two order
    statistics it needs; `values` (1-D, non-empty, no NaN) is a scratch array: it is reordered. A tensor
    (on its device, e.g. a GPU) is left as it is: its order statistics come from a sorted copy.

    Percentile q lies at position i = (n - 1) · q / 100 of the sorted values v; with a = v[⌊i⌋],
    b = v[⌊i⌋ + 1] and t = frac(i) it is ``lerp(a, b, t)``.
    Selection runs from the nearer end (negated for the top half): numpy's partition is fast for a kth
    near the start even among many ties, but can be many times slower for one near the end.
    """
    n = math.prod(values.shape)
    position = (n - 1) * (q / 100)                                   # numpy's virtual index
    k = min(int(position), n - 1)
    if isinstance(values, torch.Tensor):                             # one sort: a GPU's kthvalue selects with
        ordered = values.reshape(-1).sort().values                   # a single thread block
        a, b = ordered[[k, min(k + 1, n - 1)]].cpu().numpy()
    elif 2 * k < n:
        values.partition(k)                                          # values[k]: the k-th smallest, larger after it
        a, b = values[k], values[k + 1:].min() if k + 1 < n else values[k]
    else:
        top = n - 1 - k                                              # the k-th smallest is the top-th largest
        np.negative(values, out=values)
        values.partition(top)
        a, b = -values[top], -values[:top].max() if top else -values[top]
        np.negative(values, out=values)
    return float(lerp(a, b, position - k))


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """numpy's percentile interpolation between neighbouring order statistics a ≤ b (arrays or scalars of one
    dtype) at fraction t: a + (b - a) t, or b - (b - a)(1 - t) when t ≥ 0.5; b - a in their dtype, the rest
    in float64."""
    d = np.asarray(b - a, np.float64)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def prepare(volume: Volume | np.ndarray, cfg: PreprocessConfig = PreprocessConfig(),
            spacing: Sequence[float] | None = None, device: torch.device | str | None = None) -> ModelVolume:
    """Preprocess a canonical volume into model space, identically for training and inference.

    1. brain = voxels > background_level + cfg.brain_threshold (non-zero for skull-stripped data);
    2. contrast: the brain's percentiles (cfg.percentile_low, cfg.percentile_high) → [-1, 1], clipped,
       background -1 (``stretch_contrast``);
    3. geometry: the in-plane bounding box of the brain over all slices, widened by cfg.margin × its
       longer side on every side, made square in mm, sampled at S = cfg.image_size pixels a side
       (bilinear; when shrinking, each model pixel averages k × k bilinear samples, see ``_to_model``).

    `volume` is a loaded Volume (main path) or a canonical (X, Y, Z) array with its `spacing` in mm
    (default 1 mm isotropic). Everything runs on the host, or with a torch `device` (e.g. the detector's
    GPU) there: the results are the same to float32 rounding.

    With ``cfg.align == "mni-affine"`` the brain is first registered to the MNI template and resampled onto
    the aligned grid (``align.align``); steps 1–3 run there and the ModelVolume keeps the alignment.
    """
    if cfg.align != "none":
        from .align import align

        if not isinstance(volume, Volume):
            volume = Volume.from_array(volume, affine=None if spacing is None else np.diag([*spacing, 1.0]))
        aligned, alignment = align(volume)
        inner = prepare(aligned, replace(cfg, align="none"), device=device)
        return replace(inner, cfg=cfg, alignment=alignment)
    if isinstance(volume, Volume):
        if spacing is not None:
            raise ValueError("spacing comes from the Volume; pass it only with a bare array")
        data, spacing = volume.data, volume.spacing
        name = str(volume.path or "volume")
    else:
        data = np.asarray(volume, dtype=np.float32)
        name = "array"
        if data.ndim != 3:
            raise VolumeError(f"{name} has shape {data.shape}; a canonical (X, Y, Z) volume is needed")
        _check_values(data, name)
        spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise VolumeError(f"spacing {spacing} must be three positive millimetre sizes (x, y, z)")
    sx, sy, sz = spacing
    if device is not None:
        data = _tensor(data, device)                                # (X, Y, Z) on the device from here on
    background = background_level(data)
    brain = data > background + cfg.brain_threshold  # (X, Y, Z)
    if not brain.any():
        raise VolumeError(f"{name} has no voxel above the brain threshold {background + cfg.brain_threshold:g}; "
                          "is it an empty mask, or is brain_threshold too high?")
    values = data[brain]                                            # (N,) a copy, reordered by percentile
    low, high = percentile(values, cfg.percentile_low), percentile(values, cfg.percentile_high)
    stretched = stretch_contrast(data, brain, low, high)  # (X, Y, Z) in [-1, 1]

    xs = np.flatnonzero(_host(brain.any(axis=(1, 2))))
    ys = np.flatnonzero(_host(brain.any(axis=(0, 2))))
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])
    side_mm = max((x1 - x0 + 1) * sx, (y1 - y0 + 1) * sy) * (1 + 2 * cfg.margin)
    pixel_mm = side_mm / cfg.image_size

    areas = _host(brain.sum(axis=(0, 1)))  # (Z,) brain voxels per axial slice
    keep = np.flatnonzero(areas >= cfg.min_brain_fraction * areas.max())
    geometry = ModelVolume(
        data=np.empty(0), brain_mask=np.empty(0), slice_range=(int(keep[0]), int(keep[-1])), cfg=cfg,
        canonical_shape=tuple(int(n) for n in data.shape), spacing=(sx, sy, sz),
        centre=((x0 + x1) / 2, (y0 + y1) / 2), pixel_mm=pixel_mm, brain_box=(x0, x1, y0, y1),
        intensity_range=(low, high), background=background)
    model_data = geometry._to_model(stretched, "bilinear", -1.0)  # (Z, S, S) float32
    model_brain = geometry._to_model(brain, "bilinear", 0.0) > 0.5  # (Z, S, S)
    if device is None:
        return replace(geometry, data=model_data, brain_mask=model_brain)
    return replace(geometry, data=_host(model_data), brain_mask=_host(model_brain), resident=(model_data, model_brain))


def write_nifti(array: np.ndarray, like: Volume, path: str | os.PathLike, kind: str = "mask",
                space: str = "canonical") -> Path:
    """Write a mask (uint8 0/1) or squared-error map (float32) on the grid of `like`, atomically.

    `array` is canonical (X, Y, Z) (space="canonical", e.g. from ModelVolume.to_canonical) or in the
    input's layout (space="native"). The output keeps the input's affine and qform/sform codes, so it
    opens aligned over the input in any NIfTI viewer; cal_min/cal_max are 0..1 for a mask and
    0..99.9th percentile of the positive errors for an error map. Written to a temporary file in the
    same folder, then renamed over `path`: a failure leaves no partial file. Refuses to overwrite
    the input.
    """
    if kind not in ("mask", "error"):
        raise ValueError(f"kind must be 'mask' or 'error', not {kind!r}")
    if space not in ("canonical", "native"):
        raise ValueError(f"space must be 'canonical' or 'native', not {space!r}")
    out = Path(path)
    suffix = next((s for s in NIFTI_SUFFIXES[::-1] if out.name.lower().endswith(s)), None)
    if suffix is None:
        raise VolumeError(f"{out}: output name must end in .nii or .nii.gz")
    if like.path is not None and (out.resolve() == like.path.resolve()
                                  or (out.exists() and like.path.exists() and os.path.samefile(out, like.path))):
        raise VolumeError(f"{out} is the input scan; refusing to overwrite it, choose another output path")
    arr = np.asarray(array)
    native = like.to_native(arr) if space == "canonical" else arr
    if native.shape != like.native_shape:
        raise VolumeError(f"array shape {native.shape} is not the input's shape {like.native_shape}")
    if kind == "mask":
        if not np.isin(native, (0, 1)).all():
            raise VolumeError("a mask must hold only 0 and 1 (or bool); threshold the map first")
        native = native.astype(np.uint8)  # (native axes)
        cal = (0.0, 1.0)
    else:
        native = native.astype(np.float32)
        if not np.isfinite(native).all():
            raise VolumeError("the error map has NaN/inf values; it cannot be written")
        positive = native[native > 0]
        cal = (0.0, float(np.percentile(positive, 99.9)) if positive.size else 1.0)

    header = like.header.copy()
    header.set_data_dtype(native.dtype)
    header.set_slope_inter(None, None)  # no scaling: voxel values are the stored values
    header["cal_min"], header["cal_max"] = cal
    header.set_intent("none")
    header.extensions.clear()  # the input's extensions (e.g. CIFTI, AFNI) do not describe this output
    header["descrip"] = f"sss-viewer {kind}".encode()
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(native, None, header)
    qform, qcode = like.header.get_qform(coded=True)
    sform, scode = like.header.get_sform(coded=True)
    image.set_qform(qform if qform is not None else like.affine, int(qcode))
    image.set_sform(sform if sform is not None else like.affine, int(scode))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, out)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise VolumeError(f"cannot write {out} ({_one_line(err)}); "
                              "check the folder's permissions and free space") from err
        raise
    return out
