"""DICOM series in: list a folder's series, pick the anatomical scan, read it as a Volume on dcm2niix's grid.

pydicom because it is pure Python and the field's standard DICOM parser: it gives the tags we need (series
listing, modality hints) and lets the tests write synthetic series. The geometry is computed here, following
dcm2niix (the field's reference converter), so results written by ``write_nifti`` lie on the grid that
dcm2niix would give the same series.

Geometry. DICOM patient space is LPS+ (x to the patient's left, y posterior, z superior); NIfTI world is
RAS+, one flip away: (x, y, z)_RAS = diag(-1, -1, 1) (x, y, z)_LPS. For each image, ImageOrientationPatient
holds the row cosines r (the direction in which the column index i grows) and the column cosines c (row index
j grows), ImagePositionPatient p the centre of its first pixel, PixelSpacing (Δrow, Δcol) in mm.

* slice normal n = r × c; an image's place in the stack is its position projected on the normal, d = p · n.
  Images are sorted by d (ascending), whatever their file names or instance numbers; the steps between
  neighbours must all be equal (no missing slice).
* native array (X, Y, Z) = (columns, rows bottom-up, slices): ``native[i, j, k] = pixels_k[R - 1 - j, i]``,
  dcm2niix's layout (it flips the rows so that images are upright in NIfTI viewers).
* affine columns (LPS): Δcol · r,  -Δrow · c,  (p_last - p_first) / (N - 1); origin p_first + (R - 1) Δrow · c
  (the first pixel of the last row); then the LPS → RAS flip.
* 3-D acquisitions (MRAcquisitionType 3D, e.g. a sagittal MPRAGE) are then reordered, permutation and flips
  only, as dcm2niix does by default (``_dcm2niix_ortho``: the closest RAS+ layout unless strongly oblique);
  2-D stacks keep the layout above.

Intensities are stored values × RescaleSlope + RescaleIntercept (dcm2niix keeps the stored integers when the
slope is 1 and the intercept 0: the values are the same).
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.orientations import apply_orientation, inv_ornt_aff
from pydicom.errors import InvalidDicomError

from .volume import MAX_VOXELS, Volume, VolumeError, _check_values, _one_line

MIN_ANATOMICAL_IMAGES = 16  # fewer images: a localizer, a few test slices, not a brain volume
CLEAR_MARGIN = 1.5          # an automatic pick must have this many times the images of the runner-up
SPACING_TOLERANCE = 0.01    # relative variation of the slice spacing taken as equal (1 %)
ORIENTATION_TOLERANCE = 1e-3  # largest difference of direction cosines taken as the same orientation
DEFER_BYTES = 1024          # values larger than this are read from the file only when used
TAG_KEYWORDS = ("SeriesDescription", "ProtocolName", "SequenceName", "ScanningSequence", "SequenceVariant",
                "MRAcquisitionType", "ImageType", "RepetitionTime", "EchoTime", "InversionTime", "Modality",
                "ContrastBolusAgent")
# Words (at the start of a word of the description, protocol or sequence name) of series that are not a scan
# of the anatomy: localizers, field maps, diffusion, functional, projections.
_NOT_ANATOMICAL = re.compile(r"\b(localizer|localiser|scout|survey|field ?map|b0 ?map|dti|dwi|diff|bold|fmri|mip"
                             r"|fm2d|ep b|epfid)")
_NOT_ANATOMICAL_IMAGE_TYPES = {"LOCALIZER", "P", "PHASE", "R", "REAL", "I", "IMAGINARY", "DERIVED", "SECONDARY",
                               "MOSAIC", "ADC", "FA", "TRACEW", "DIFFUSION", "MIP", "PROJECTION IMAGE"}
_HEADER_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError,
                  AttributeError, struct.error)
_PIXEL_ERRORS = _HEADER_ERRORS + (NotImplementedError, RuntimeError)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Series:
    """One DICOM series of a folder, from its headers only (no pixel data read)."""

    uid: str                  # SeriesInstanceUID
    number: int | None        # SeriesNumber
    description: str          # SeriesDescription (or ProtocolName when empty)
    files: tuple[Path, ...]   # its DICOM files, by path (read_series sorts the images by position)
    rows: int                 # pixels per column of an image
    columns: int              # pixels per row of an image
    tags: dict[str, str]      # TAG_KEYWORDS → text of the first file ('' when absent; multi-values '\'-joined)

    @property
    def n_images(self) -> int:
        """Number of image files."""
        return len(self.files)

    @property
    def anatomical(self) -> bool:
        """A 3-D anatomical candidate: an MR/CT magnitude stack of ≥ MIN_ANATOMICAL_IMAGES images that is not a
        localizer, field map, phase/derived image, diffusion or functional series."""
        if self.tags["Modality"] not in ("", "MR", "CT") or self.n_images < MIN_ANATOMICAL_IMAGES:
            return False
        if _NOT_ANATOMICAL_IMAGE_TYPES & set(self.tags["ImageType"].upper().split("\\")):
            return False
        names = " ".join(self.tags[k] for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
        return not _NOT_ANATOMICAL.search(re.sub(r"[^a-z0-9]+", " ", names.lower()))

    @property
    def is_3d(self) -> bool:
        """Acquired as a 3-D volume (MRAcquisitionType 3D): dcm2niix reorders these (see _dcm2niix_ortho)."""
        return self.tags["MRAcquisitionType"].upper() == "3D"

    def label(self) -> str:
        """One line for lists and messages, e.g. '#19 "t1_MPRAGEcr_noGRAPPA" 176 images 256×256'."""
        number = "?" if self.number is None else self.number
        return f'#{number} "{self.description}" {self.n_images} images {self.rows}×{self.columns}'


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part-10 file: 'DICM' after the 128-byte preamble; raises VolumeError for an unreadable file."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError as err:
        raise VolumeError(f"{path} cannot be read ({_one_line(err)}); check the file and its permissions, "
                          "or move it out of the folder") from err


def _files(folder: Path):
    """Every file under folder, in a stable order."""
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            yield Path(root) / name


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """A directory holding at least one DICOM file (stops at the first; unreadable files are passed over)."""
    p = Path(path)
    if not p.is_dir():
        return False
    for f in _files(p):
        try:
            if _is_dicom_file(f):
                return True
        except VolumeError:
            continue
    return False


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _read_header(path: Path, pixels: bool = False) -> pydicom.Dataset:
    """The file's data set; large values (pixel data, vendor blobs) are read from the file only when used."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, defer_size=DEFER_BYTES)
    except _HEADER_ERRORS as err:
        raise VolumeError(f"{path} is a damaged DICOM file ({_one_line(err)}); "
                          "remove it or re-export the series") from err


def find_series(folder: str | os.PathLike) -> list[Series]:
    """The image series under folder (searched recursively, headers only), sorted by series number.

    Files that are not DICOM (text dumps, notes, ...) and DICOM files without an image (DICOMDIR, reports)
    are skipped; a damaged DICOM image raises VolumeError.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VolumeError(f"{root} does not exist or is not a folder; give the folder that holds the DICOM series")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in _files(root):
        if not _is_dicom_file(path):
            continue
        ds = _read_header(path)
        if "Rows" not in ds or "Columns" not in ds:
            sop_class = pydicom.uid.UID(_text(ds.file_meta, "MediaStorageSOPClassUID") or _text(ds, "SOPClassUID"))
            if not sop_class or "Image" in sop_class.name:  # an image without an image size: cut short
                raise VolumeError(f"{path} is a damaged DICOM image (its header ends before the image size; "
                                  "truncated?); remove it or re-export the series")
            continue  # not an image: DICOMDIR, report, presentation state
        groups.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        number = first.get("SeriesNumber")
        series.append(Series(
            uid=uid, number=None if number in (None, "") else int(number),
            description=_text(first, "SeriesDescription") or _text(first, "ProtocolName"),
            files=tuple(path for path, _ in members), rows=int(first.Rows), columns=int(first.Columns),
            tags={k: _text(first, k) for k in TAG_KEYWORDS}))
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.description, s.uid))


def _listing(series: list[Series]) -> str:
    return "; ".join(s.label() for s in series)


def pick_series(series: list[Series], wanted: str | int | None = None) -> Series:
    """The series to read: `wanted` (a series number, a UID, or a case-insensitive part of the description),
    or with none the one clear anatomical scan; raises VolumeError listing the series otherwise.

    Automatic pick: the only series of a folder that holds one; else among the anatomical series
    (``Series.anatomical``), 3-D acquisitions first when there are any, the one with the most images when it
    has CLEAR_MARGIN × the images of every other.
    """
    if not series:
        raise VolumeError("no DICOM image series found; give a folder that holds DICOM files")
    if wanted is not None:
        key = str(wanted).strip()
        matches = ([s for s in series if s.number is not None and str(s.number) == key]
                   or [s for s in series if s.uid == key]
                   or [s for s in series if s.description.lower() == key.lower()]
                   or [s for s in series if key.lower() in s.description.lower()])
        if len(matches) != 1:
            found = "several series match" if matches else "no series matches"
            raise VolumeError(f"{found} {wanted!r} ({_listing(matches or series)}); "
                              "use --series with a number, a UID or part of a description")
        return matches[0]
    if len(series) == 1:
        return series[0]
    candidates = [s for s in series if s.anatomical]
    if any(s.is_3d for s in candidates):
        candidates = [s for s in candidates if s.is_3d]
    candidates.sort(key=lambda s: s.n_images, reverse=True)
    if len(candidates) == 1 or (len(candidates) > 1
                                and candidates[0].n_images >= CLEAR_MARGIN * candidates[1].n_images):
        return candidates[0]
    which = (f"{len(candidates)} series could be the anatomical scan ({_listing(candidates)})" if candidates
             else f"no series looks like an anatomical 3-D scan ({_listing(series)})")
    raise VolumeError(f"{which}; choose one with --series (a number, a UID or part of a description)")


def _vector(ds: pydicom.Dataset, keyword: str, size: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.empty(0)
    if vector.shape != (size,) or not np.isfinite(vector).all():
        raise VolumeError(f"{path} has no valid {keyword} (it holds {value!r}); "
                          "not a spatially located image, or a damaged header")
    return vector


def _echo(ds: pydicom.Dataset) -> float:
    """An image's echo: EchoNumbers, else EchoTime (0 when neither)."""
    return float(ds.get("EchoNumbers") or ds.get("EchoTime") or 0)


def _volume_rank(members: list[tuple[float, Path, pydicom.Dataset]]) -> list[int]:
    """Rank of each image among those at its slice position (0: first volume), by acquisition then instance."""
    order = sorted(range(len(members)), key=lambda m: (
        round(members[m][0], 3), int(members[m][2].get("AcquisitionNumber") or 0),
        int(members[m][2].get("TemporalPositionIdentifier") or 0), int(members[m][2].get("InstanceNumber") or 0),
        str(members[m][1])))
    rank = [0] * len(members)
    for before, after in zip(order, order[1:]):
        same_place = abs(members[before][0] - members[after][0]) < 1e-3
        rank[after] = rank[before] + 1 if same_place else 0
    return rank


def _stack(series: Series) -> tuple[list[Path], list[pydicom.Dataset], np.ndarray, np.ndarray, np.ndarray]:
    """The images of one volume in stack order, their data sets, r, c and positions p (N, 3) (LPS, mm).

    Checks the headers only: pixel data is read from the files later, when used.
    """
    name = series.label()
    images = [(path, _read_header(path, pixels=True)) for path in series.files]
    first_path, first = images[0]
    orientation = _vector(first, "ImageOrientationPatient", 6, first_path)
    for path, ds in images:
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise VolumeError(f"{path} is a multi-frame (enhanced) DICOM file; convert the series with dcm2niix "
                              "and open the NIfTI file")
        if int(ds.get("SamplesPerPixel") or 1) != 1:
            raise VolumeError(f"{path} is a colour image ({ds.get('PhotometricInterpretation')}); "
                              "a greyscale scan is needed")
        if (int(ds.Rows), int(ds.Columns)) != (series.rows, series.columns):
            raise VolumeError(f"{path} is {ds.Rows}×{ds.Columns} pixels, not {series.rows}×{series.columns} like "
                              f"{first_path}: series {name} mixes image sizes; choose a series with one stack")
        if np.abs(_vector(ds, "ImageOrientationPatient", 6, path) - orientation).max() > ORIENTATION_TOLERANCE:
            raise VolumeError(f"{path} is oriented differently from {first_path}: series {name} mixes slice "
                              "orientations (a localizer?); choose a series with one stack")
    echoes = sorted({_echo(ds) for _, ds in images})
    if len(echoes) > 1:
        warnings.warn(f"series {name} holds {len(echoes)} echoes; using the first one", stacklevel=3)
        images = [(p, ds) for p, ds in images if _echo(ds) == echoes[0]]

    r, c = orientation[:3], orientation[3:]
    normal = np.cross(r, c)
    members = [(float(_vector(ds, "ImagePositionPatient", 3, p) @ normal), p, ds) for p, ds in images]
    rank = _volume_rank(members)
    n_volumes = max(rank) + 1
    if n_volumes > 1:
        counts = np.bincount(rank)
        if (counts != counts[0]).any():
            repeated = next(m for m, k in zip(members, rank) if k == 1)
            raise VolumeError(f"{repeated[1]} lies at the position of another image of series {name}, but not "
                              "every position repeats: images are missing; re-export the complete series")
        warnings.warn(f"series {name} holds {n_volumes} volumes; using the first one", stacklevel=3)
        members = [m for m, k in zip(members, rank) if k == 0]
    members.sort(key=lambda m: m[0])
    if len(members) < 2:
        raise VolumeError(f"{members[0][1]} is a single 2-D image (series {name}); a 3-D brain volume is needed")
    d = np.array([m[0] for m in members])  # (N,) positions along the normal, mm
    steps = np.diff(d)  # (N - 1,)
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
    if bad.size:
        k = int(bad[0])
        raise VolumeError(f"slice spacing of series {name} is {steps[k]:.3g} mm between {members[k][1]} and "
                          f"{members[k + 1][1]} but {step:.3g} mm elsewhere: a slice is missing or the positions "
                          "are irregular; re-export the complete series")
    n_voxels = series.rows * series.columns * len(members)
    if n_voxels > MAX_VOXELS:
        raise VolumeError(f"series {name} has {n_voxels} voxels, over the {MAX_VOXELS} limit; "
                          "choose a smaller series")
    positions = np.array([_vector(ds, "ImagePositionPatient", 3, p) for _, p, ds in members])  # (N, 3) LPS
    return [m[1] for m in members], [m[2] for m in members], r, c, positions


def _pixels(path: Path, ds: pydicom.Dataset, rows: int, columns: int) -> np.ndarray:
    """One image's values (rows, columns) in float32: stored values × RescaleSlope + RescaleIntercept."""
    try:
        stored = ds.pixel_array
    except _PIXEL_ERRORS as err:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed:
            raise VolumeError(f"{path}: pixel data compressed as {syntax.name}, which this reader cannot decode "
                              f"({_one_line(err)}); convert the series with dcm2niix first") from err
        raise VolumeError(f"{path}: its pixel data cannot be read ({_one_line(err)}); the file is truncated "
                          "or damaged, re-export the series") from err
    if stored.shape != (rows, columns):
        raise VolumeError(f"{path}: pixel data of shape {stored.shape}, not ({rows}, {columns}); "
                          "the file is damaged, re-export the series")
    slope, intercept = float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0)
    if slope == 1.0 and intercept == 0.0:
        return stored.astype(np.float32)
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def _dcm2niix_ortho(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(3, 2) nibabel orientation of dcm2niix's reordering of 3-D acquisitions (its nii_setOrtho).

    Flips put at index 0 the corner nearest the minimum of all eight corners' world coordinates; then the axis
    permutation maximising the trace of the new affine's 3 × 3 part (mm-scaled) is taken. For all but strongly
    oblique stacks this is the closest RAS+ layout.
    """
    m = affine[:3, :3]
    flips = np.array(list(itertools.product((1, -1), repeat=3)))  # (8, 3)
    corners = np.where(flips < 0, np.array(shape[:3]) - 1, 0) @ m.T + affine[:3, 3]  # (8, 3) world of each corner
    flip = flips[np.argmin(np.linalg.norm(corners - corners.min(axis=0), axis=1))]  # (3,) per native axis
    order = max(itertools.permutations(range(3)),  # order[k]: native axis that becomes axis k
                key=lambda p: sum(flip[p[k]] * m[k, p[k]] for k in range(3)))
    ornt = np.zeros((3, 2))
    for k, axis in enumerate(order):
        ornt[axis] = k, flip[axis]
    return ornt


def read_series(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """Native float32 array (3-D) and its (4, 4) voxel → RAS affine, as dcm2niix would write the series."""
    files, datasets, r, c, positions = _stack(series)
    R, C, N = series.rows, series.columns, len(files)
    d_row, d_col = _vector(datasets[0], "PixelSpacing", 2, files[0])
    if d_row <= 0 or d_col <= 0:
        raise VolumeError(f"{files[0]} has PixelSpacing {d_row:g}, {d_col:g}; pixel sizes must be positive")
    images = np.empty((N, R, C), dtype=np.float32)  # (slices, rows, columns)
    for k, (path, ds) in enumerate(zip(files, datasets)):
        images[k] = _pixels(path, ds, R, C)
    native = images[:, ::-1].transpose(2, 1, 0)  # (X, Y, Z) = (columns, rows bottom-up, slices), a view
    lps = np.eye(4)
    lps[:3, 0] = d_col * r
    lps[:3, 1] = -d_row * c
    lps[:3, 2] = (positions[-1] - positions[0]) / (N - 1)
    lps[:3, 3] = positions[0] + (R - 1) * d_row * c
    affine = _LPS_TO_RAS @ lps  # (4, 4) voxel → RAS
    if series.is_3d:
        ornt = _dcm2niix_ortho(affine, native.shape)
        affine = affine @ inv_ornt_aff(ornt, native.shape)
        native = apply_orientation(native, ornt)  # (X, Y, Z) closest to RAS+
    native = np.ascontiguousarray(native)
    _check_values(native, f"series {series.label()}")
    return native, affine


def series_volume(series: Series, folder: str | os.PathLike) -> Volume:
    """One listed series as a Volume whose path is its folder (results are written on the series' grid)."""
    root = Path(folder)
    native, affine = read_series(series)
    header = nib.Nifti1Header()
    header.set_data_shape(native.shape)
    header.set_data_dtype(np.float32)
    header.set_xyzt_units("mm")
    header.set_qform(affine, 1)
    header.set_sform(affine, 1)
    return Volume._reorient(native, affine, header, root, str(root))
