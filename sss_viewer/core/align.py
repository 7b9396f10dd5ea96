"""Affine alignment of a scan's brain to the bundled MNI152 template (SimpleITK), and the exact maps back.

A checkpoint trained with ``PreprocessConfig.align = "mni-affine"`` sees every brain at the template's
position, size and tilt; ``prepare`` repeats that for each input here:

1. the brain (everything above the background) is registered to the bundled 2 mm template
   (``resources/mni152_brain_2mm.nii.gz``, built by ``python -m trainer.template``) by a 12-parameter affine:
   Mattes mutual information, 5 % random samples (fixed seed), regular-step gradient descent over two levels
   (4 mm, then 2 mm) on one thread (so that it repeats bit for bit), started from the brains' centres of
   intensity mass (a scan of more than REGISTER_MAX_VOXELS voxels is registered from a copy binned by 2 along
   each axis finer than 0.9 mm);
2. the brain is resampled (trilinear, 0 outside) onto the aligned grid: the template's box at 1 mm;
3. ``prepare`` runs there as for any volume, and the ModelVolume keeps the ``Alignment``, so every result
   goes back onto the input's own canonical voxels through the inverse map (trilinear for maps, nearest
   for masks) and reference masks come in through the forward one.

With A the aligned grid's voxel → world (MNI mm, RAS) affine, R the registration (template world → input
world) and C the input's canonical voxel → world affine, aligned voxel i lies at input voxel

    j = C⁻¹ · R · A · i        (``Alignment.matrix``, homogeneous 4 × 4)

A registration whose brain overlap with the template (Dice at 2 mm) stays below MIN_OVERLAP is refused in
favour of the centre-of-mass start alone, with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import warnings
from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np
from scipy import ndimage

from .resources import resource
from .volume import Volume, VolumeError, background_level

TEMPLATE = "mni152_brain_2mm.nii.gz"
SAMPLING_SEED = 1         # the metric's random samples (ITK reads a seed of 0 as "from the clock")
REGISTER_MAX_VOXELS = 2 ** 24  # a larger scan is registered from a copy binned by 2 along its sub-0.9 mm axes
MIN_OVERLAP = 0.8         # brain Dice with the template below which an affine registration counts as failed
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS ↔ LPS (ITK's physical space), its own inverse
_ITK_THREADS = threading.Lock()         # guards SimpleITK's process-wide thread count while a registration runs


@dataclass(frozen=True, eq=False)
class Alignment:
    """The aligned grid and the affine map between its voxels and the input's canonical voxels."""

    matrix: np.ndarray = field(repr=False)     # (4, 4) aligned voxel → input canonical voxel (continuous)
    shape: tuple[int, int, int]                 # aligned grid (X, Y, Z), RAS, 1 mm
    affine: np.ndarray = field(repr=False)      # (4, 4) aligned voxel → world (MNI mm)
    input_shape: tuple[int, int, int]           # the input's canonical (X, Y, Z)
    offset: float                               # the input's background level, subtracted before resampling
    overlap: float                              # brain Dice with the template after registration
    seconds: float                              # registration time
    registered: bool                            # False: the centre-of-mass start alone (registration failed)

    def to_aligned(self, canonical: np.ndarray, nearest: bool = False) -> np.ndarray:
        """An array on the input's canonical grid → the aligned grid (trilinear float32, or nearest in its
        dtype; 0 outside the input)."""
        return _resample(canonical, self.matrix, self.shape, nearest, "input", self.input_shape)

    def to_input(self, aligned: np.ndarray, nearest: bool = False) -> np.ndarray:
        """An array on the aligned grid → the input's canonical grid, through the inverse map."""
        return _resample(aligned, np.linalg.inv(self.matrix), self.input_shape, nearest, "aligned", self.shape)

    def input_voxel(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """Input canonical voxel coordinates of aligned voxel (x, y, z)."""
        return tuple(float(v) for v in (self.matrix @ [x, y, z, 1.0])[:3])

    def aligned_voxel(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """Aligned voxel coordinates of input canonical voxel (x, y, z)."""
        return tuple(float(v) for v in np.linalg.solve(self.matrix, [x, y, z, 1.0])[:3])


def _resample(src: np.ndarray, matrix: np.ndarray, shape: tuple[int, int, int], nearest: bool, name: str,
              expected: tuple[int, int, int]) -> np.ndarray:
    """out[i] = src[matrix · i] on `shape` (order 0 or 1, 0 outside)."""
    src = np.asarray(src)
    if src.shape != tuple(expected):
        raise VolumeError(f"array shape {src.shape} is not the {name} grid's {tuple(expected)}")
    if nearest:
        kind = np.uint8 if src.dtype == bool else src.dtype
        out = ndimage.affine_transform(src.astype(kind, copy=False), matrix, output_shape=shape, order=0,
                                       mode="constant", cval=0)
        return out.astype(bool) if src.dtype == bool else out
    return ndimage.affine_transform(src.astype(np.float32, copy=False), matrix, output_shape=shape, order=1,
                                    mode="constant", cval=0.0)


@functools.cache
def template() -> tuple[np.ndarray, np.ndarray]:
    """The bundled template: (X, Y, Z) float32 canonical data and its voxel → world affine (2 mm)."""
    path = resource(TEMPLATE)
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, ValueError) as err:
        raise VolumeError(f"the registration template {path} cannot be read ({err}); reinstall sss-viewer") from err
    return data, image.affine


def aligned_grid() -> tuple[tuple[int, int, int], np.ndarray]:
    """The aligned grid: the template's box at 1 mm, (X, Y, Z) and voxel → world affine."""
    data, affine = template()
    block = np.diag([2.0, 2.0, 2.0, 1.0])
    block[:3, 3] = 0.5  # 2 mm voxel j covers 1 mm voxels 2j and 2j + 1
    return tuple(2 * n for n in data.shape), affine @ np.linalg.inv(block)


def _itk(data: np.ndarray, affine: np.ndarray):
    """SimpleITK image of a canonical (X, Y, Z) array with its RAS voxel → world affine (ITK: LPS)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32))  # (Z, Y, X)
    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)  # (3,) mm per voxel axis
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def _matrix(transform) -> np.ndarray:
    """(4, 4) of an affine SimpleITK transform (physical, LPS), read off at the origin and unit vectors."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    m[:3, 3] = origin
    for axis in range(3):
        m[:3, axis] = np.array(transform.TransformPoint(tuple(np.eye(3)[axis]))) - origin
    return m


@contextlib.contextmanager
def _one_itk_thread():
    """SimpleITK's default thread count at 1 inside, restored after: ITK's multithreaded metric sums in an order that
    varies from run to run, so the same scan registered differently from process to process (affine entries by
    ~1e-5, a held-out brain's flagged share 0.20 % or 0.27 %); on one thread it repeats bit for bit."""
    import SimpleITK as sitk

    with _ITK_THREADS:
        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


@_one_itk_thread()
def _register(fixed, moving) -> tuple[np.ndarray, np.ndarray]:
    """(affine, centre-of-mass start) template world → input world, RAS (4, 4) each."""
    import SimpleITK as sitk

    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])       # 4 mm, then the template's 2 mm
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])  # mm
    reg.SetInitialTransform(start, inPlace=False)
    result = reg.Execute(fixed, moving)
    return _LPS @ _matrix(result) @ _LPS, _LPS @ _matrix(start) @ _LPS


def _overlap(brain: np.ndarray, input_to_world: np.ndarray, world: np.ndarray) -> float:
    """Dice at 2 mm between the template's brain and the input brain mapped by `world` (template → input)."""
    data, affine = template()
    inside = _resample(brain, np.linalg.inv(input_to_world) @ world @ affine, data.shape, True, "input",
                       brain.shape)
    reference = data > 0
    return float(2 * np.count_nonzero(inside & reference) / (np.count_nonzero(inside) + np.count_nonzero(reference)))


def align(volume: Volume) -> tuple[Volume, Alignment]:
    """The brain of a (brain-extracted) canonical volume on the aligned grid, and the alignment; raises VolumeError."""
    name = str(volume.path or "volume")
    try:
        import SimpleITK  # noqa: F401  (checked here for a clear message)
    except ImportError as err:
        raise VolumeError("this checkpoint aligns scans to the MNI template, which needs SimpleITK: "
                          "pip install SimpleITK") from err
    offset = background_level(volume.data)
    data = volume.data - offset  # (X, Y, Z) background 0, brain > 0
    brain = data > 0
    if not brain.any():
        raise VolumeError(f"{name} has no brain voxels to align")
    canonical = volume.canonical_affine
    fixed = _itk(*template())
    started = time.perf_counter()
    moving = _itk(np.where(brain, data, 0.0), canonical)
    if data.size > REGISTER_MAX_VOXELS:  # e.g. 0.7 mm scans: their smoothing per level dominates the time
        import SimpleITK as sitk

        moving = sitk.BinShrink(moving, [2 if mm < 0.9 else 1 for mm in moving.GetSpacing()])
    try:
        affine, start = _register(fixed, moving)
    except RuntimeError as err:  # ITK's exceptions, e.g. too few samples inside the brain
        raise VolumeError(f"{name} could not be registered to the MNI template ({' '.join(str(err).split())[:160]})"
                          ) from err
    seconds = time.perf_counter() - started
    overlap, registered = _overlap(brain, canonical, affine), True
    if overlap < MIN_OVERLAP:
        fallback = _overlap(brain, canonical, start)
        warnings.warn(f"{name}: the affine registration to the MNI template failed (brain overlap {overlap:.2f}); "
                      f"aligned by centre of mass only (overlap {fallback:.2f}): results are less reliable",
                      stacklevel=2)
        affine, overlap, registered = start, fallback, False
    shape, grid = aligned_grid()
    alignment = Alignment(matrix=np.linalg.inv(canonical) @ affine @ grid, shape=shape, affine=grid,
                          input_shape=tuple(int(n) for n in volume.data.shape), offset=offset, overlap=overlap, seconds=seconds,
                          registered=registered)
    aligned = alignment.to_aligned(data)  # (X', Y', Z') float32, 0 outside the brain
    np.maximum(aligned, 0.0, out=aligned)
    if not (aligned > 0).any():
        raise VolumeError(f"{name}: its brain falls outside the MNI template's box after registration")
    return replace(Volume.from_array(aligned, grid, name=name), path=volume.path), alignment
