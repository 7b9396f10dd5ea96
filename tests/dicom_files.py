"""Writing DICOM MR images for tests (pydicom): one image per file, the tags the reader looks at."""

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def ds_text(values, decimals: int) -> list[str]:
    """Decimal strings (DICOM DS) of values; the reader sees exactly float(text)."""
    return [f"{v:.{decimals}f}" for v in values]


def write_image(path: Path, pixels: np.ndarray, position, r, c, spacing=(0.9, 1.1), uid="1.2.3.4",
                number=7, description="t1_mprage", instance=1, syntax=ExplicitVRLittleEndian, **tags) -> None:
    """One DICOM MR image file (explicit VR little endian unless told): int16 pixels (R, C) at `position`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = "MR", uid, number, description
    ds.InstanceNumber, ds.MRAcquisitionType, ds.ImageType = instance, "2D", ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient = ds_text(position, 6)
    ds.ImageOrientationPatient = ds_text(tuple(r) + tuple(c), 8)
    ds.PixelSpacing, ds.SliceThickness = ds_text(spacing, 4), "2.0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<i2").tobytes() if syntax == ExplicitVRLittleEndian else encapsulate([b"junk" * 8])
    ds.save_as(path, enforce_file_format=True)
