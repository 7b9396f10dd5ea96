"""The PDF report: pages, text, images, orientation and scale of the views, and failures that leave no file."""

import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pypdfium2 as pdfium
import pytest
from PySide6.QtCore import QRectF

from sss_viewer.core.lesions import lesion_list
from sss_viewer.core.volume import Volume
from sss_viewer.gui import report
from sss_viewer.gui.panels import CONTOUR_COLOR
from sss_viewer.gui.report import (MAX_REGIONS, NO_REGION, ReportContent, ReportError, display_point,
                                   display_spacing, plane, write_report)

SHAPE = (40, 48, 30)                          # canonical (X, Y, Z)
AFFINE = np.diag([1.0, 1.2, 2.5, 1.0])        # RAS, anisotropic voxels
CREATED = datetime(2024, 5, 6, 7, 8, tzinfo=timezone.utc)


def brain() -> Volume:
    """A textured ellipsoid on a zero background."""
    g = np.indices(SHAPE, dtype=np.float64)
    r2 = sum(((gi - (n - 1) / 2) / (0.45 * n)) ** 2 for gi, n in zip(g, SHAPE))
    return Volume.from_array(np.where(r2 <= 1, 100 + 20 * np.sin(g[0] / 3) + g[1], 0).astype(np.float32), AFFINE)


def content(mask: np.ndarray, volume: Volume | None = None) -> ReportContent:
    volume = volume or brain()
    heat = np.where(mask, 0.8, 0.02 * (volume.data > 0)).astype(np.float32)      # (X, Y, Z)
    return ReportContent(
        title="sub-07_T1w.nii.gz", input_lines=[("File", "/data/sub-07_T1w.nii.gz"), ("Grid", "40 × 48 × 30")],
        model_lines=[("Checkpoint", "tiny_model.pt"), ("SHA-256", "0123456789abcdef…"), ("Training step", "7")],
        settings_lines=[("Timestep", "300"), ("Threshold", "0.3 (from paper defaults)")], volume=volume, heat=heat,
        mask=mask, lesions=lesion_list(mask, heat, volume), window=None, created=CREATED)


def three_regions() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)                                                # (X, Y, Z)
    mask[8:14, 20:26, 10:14] = True                                             # 144 voxels, the patient's left
    mask[26:30, 14:18, 16:19] = True                                            # 48
    mask[20:22, 34:36, 20:22] = True                                            # 8
    return mask


def pages_text(path) -> list[str]:
    doc = pdfium.PdfDocument(str(path))
    return [page.get_textpage().get_text_range() for page in doc]


def render(path, index: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one page at 72 dpi."""
    return pdfium.PdfDocument(str(path))[index].render(scale=1, rev_byteorder=True).to_numpy()[..., :3]


def test_pages_text_and_views(tmp_path):
    c = content(three_regions())
    assert [lesion.voxels for lesion in c.lesions] == [144, 48, 8]
    path = tmp_path / "report.pdf"
    assert write_report(path, c) == 4                                           # page 1, then one page a region
    text = pages_text(path)
    assert len(text) == 4
    first = " ".join(text[0].split())
    for needed in ("sss-viewer report", "sub-07_T1w.nii.gz", "not a diagnosis", "tiny_model.pt", "2024-05-06",
                   "3 regions listed", "Page 1 of 4"):
        assert needed in first, needed
    for lesion in c.lesions:
        x, y, z = lesion.centre_ras_mm
        assert f"{lesion.volume_ml:.3f}" in first and f"{x:.1f}, {y:.1f}, {z:.1f}" in first
    for i, lesion in enumerate(c.lesions, start=1):
        page = " ".join(text[i].split())
        assert page.startswith(f"Region {i}: {lesion.volume_ml:.3f} mL") and f"Page {i + 1} of 4" in page
        assert f"slices {lesion.slices[0]}–{lesion.slices[1]}" in page

    image = render(path, 1).astype(int)                                         # (H, W, 3)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    assert (image < 40).all(axis=2).mean() > 0.05                               # dark image backgrounds: not blank
    assert ((r > g + 60) & (abs(g - b) < 20)).sum() > 50                        # the mask's red over grey
    assert (abs(image - CONTOUR_COLOR).max(axis=2) < 40).sum() > 50             # the region's green outline


def test_no_region_gives_one_page(tmp_path):
    path = tmp_path / "clean.pdf"
    assert write_report(path, content(np.zeros(SHAPE, bool))) == 1
    (text,) = pages_text(path)
    assert NO_REGION in " ".join(text.split()) and "0 regions listed" in text


def test_only_the_largest_regions_get_pages_but_every_one_is_listed(tmp_path):
    mask = np.zeros(SHAPE, bool)
    for i in range(7):                                                          # 7 columns, 7 - i voxels tall
        mask[6 + 4 * i, 24, 8:15 - i] = True
    c = content(mask)
    path = tmp_path / "seven.pdf"
    assert write_report(path, c) == 1 + MAX_REGIONS
    text = [" ".join(t.split()) for t in pages_text(path)]
    for lesion in c.lesions:
        x, y, z = lesion.centre_ras_mm
        assert f"{x:.1f}, {y:.1f}, {z:.1f}" in text[0]
    assert [t.split(":")[0] for t in text[1:]] == [f"Region {n}" for n in range(1, MAX_REGIONS + 1)]


def test_a_long_list_continues_on_the_next_pages(tmp_path):
    mask = np.zeros(SHAPE, bool)
    mask[4:36:3, 6:42:4, 12] = True                                             # 11 × 9 single voxels
    c = content(mask)
    path = tmp_path / "many.pdf"
    pages = write_report(path, c)
    text = [" ".join(t.split()) for t in pages_text(path)]
    tables = pages - MAX_REGIONS
    assert len(c.lesions) == 99 and tables >= 2 and len(text) == pages
    assert all("Lesion list (continued)" in t for t in text[1:tables])
    listed = " ".join(text[:tables])
    for lesion in c.lesions:
        x, y, z = lesion.centre_ras_mm
        assert f"{x:.1f}, {y:.1f}, {z:.1f}" in listed
    assert text[tables].startswith("Region 1:")


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_unwritable_target_raises_and_leaves_nothing(tmp_path, where):
    target = tmp_path / "missing" / "r.pdf" if where == "missing folder" else tmp_path / "r.pdf"
    if where == "a folder":
        target.mkdir()
    with pytest.raises(ReportError) as info:
        write_report(target, content(three_regions()))
    message = str(info.value)
    assert isinstance(info.value, OSError) and "\n" not in message
    assert message.startswith(f"cannot write the report {target} (") and info.value.strerror in message
    assert [p.name for p in tmp_path.iterdir()] == ([] if where == "missing folder" else ["r.pdf"])
    assert where == "missing folder" or not any(target.iterdir())


def test_arrays_off_the_volume_grid_are_refused(tmp_path):
    c = content(three_regions())
    bad = ReportContent(**{**c.__dict__, "heat": c.heat[:, :, :-1]})
    with pytest.raises(ValueError, match="heat map"):
        write_report(tmp_path / "r.pdf", bad)
    assert not any(tmp_path.iterdir())


def test_planes_are_radiological():
    a = np.arange(4 * 5 * 6).reshape(4, 5, 6)                                   # canonical (X, Y, Z): RAS+
    X, Y, Z = a.shape
    axial = plane(a, 2, 3)                                                      # (Y, X)
    assert axial.shape == (Y, X)
    assert axial[0, 0] == a[X - 1, Y - 1, 3]             # top left: the patient's right, anterior
    assert axial[0, -1] == a[0, Y - 1, 3] and axial[-1, 0] == a[X - 1, 0, 3]     # left on the right, posterior below
    coronal = plane(a, 1, 2)                                                    # (Z, X)
    assert coronal.shape == (Z, X)
    assert coronal[0, 0] == a[X - 1, 2, Z - 1] and coronal[-1, -1] == a[0, 2, 0]  # right-superior top left
    sagittal = plane(a, 0, 1)                                                   # (Z, Y)
    assert sagittal.shape == (Z, Y)
    assert sagittal[0, 0] == a[1, Y - 1, Z - 1] and sagittal[-1, -1] == a[1, 0, 0]  # anterior-superior top left
    for axis, index in ((2, 3), (1, 2), (0, 1)):
        row, col = display_point((1, 2, 3), a.shape, axis)
        assert plane(a, axis, index)[row, col] == a[1, 2, 3]


def test_views_keep_the_anatomy_in_proportion():
    spacing = (1.0, 1.2, 2.5)
    assert display_spacing(spacing, 2) == (1.2, 1.0)                            # axial rows run along y
    assert display_spacing(spacing, 1) == (2.5, 1.0) and display_spacing(spacing, 0) == (2.5, 1.2)
    rect = report._fit(QRectF(0, 0, 100, 100), 30 * 2.5, 48 * 1.2)             # a sagittal view, in mm
    assert rect.width() / rect.height() == pytest.approx(48 * 1.2 / (30 * 2.5)) and rect.height() == 100


def test_the_command_line_gets_an_offscreen_app():
    """sss-detect --report on a server without a display: ensure_app makes an offscreen application."""
    env = {key: value for key, value in os.environ.items() if key != "QT_QPA_PLATFORM"}
    code = "from sss_viewer.gui.report import ensure_app; print(ensure_app().platformName())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "offscreen"
