"""The lesion table: hand-counted regions on 2 mm voxels, numeric sorting, the size filter, clicks and CSV export."""

import csv
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, Qt  # noqa: E402
from PySide6.QtWidgets import QFileDialog  # noqa: E402

from sss_viewer.core.lesions import CSV_COLUMNS, lesion_list  # noqa: E402
from sss_viewer.core.volume import Volume  # noqa: E402
from sss_viewer.gui import texts  # noqa: E402
from sss_viewer.gui.lesion_table import LesionTable  # noqa: E402

SHAPE = (40, 30, 20)
AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -30], [0, 0, 2.0, -20], [0, 0, 0, 1]])  # RAS, 2 mm: 0.008 mL
ML = 0.008
# (voxels, slice of the canonical mask, heat inside): sizes such that sorting their text would go wrong
REGIONS = (
    (1331, np.s_[1:12, 1:12, 1:12], 0.5),    # 11 x 11 x 11 = 10.648 mL, centre (6, 6, 6)
    (294, np.s_[14:21, 1:8, 1:7], 0.25),     # 7 x 7 x 6 = 2.352 mL, centre (17, 4, 3.5)
    (27, np.s_[23:26, 1:4, 1:4], 1.0),       # 3 x 3 x 3
    (12, np.s_[28:40, 5, 5], 2.0),           # a 12-voxel bar
    (9, np.s_[14:17, 14:17, 10], 0.75),      # a 3 x 3 plate
    (8, np.s_[20:22, 20:22, 15:17], 1.5),    # 2 x 2 x 2
    (1, np.s_[30, 25, 18], 3.0),             # single voxels
    (1, np.s_[35, 28, 2], 0.125),
)
VOLUME_COLUMN, VOXELS_COLUMN = 1, 2


@pytest.fixture
def lesions():
    mask = np.zeros(SHAPE, bool)
    error = np.zeros(SHAPE, np.float32)
    for _, where, heat in REGIONS:
        mask[where] = True
        error[where] = heat
    error[6, 6, 6] = 4.0                                       # one hot voxel in the big cube
    volume = Volume.from_array(error, AFFINE)                 # any non-constant image
    found = lesion_list(mask, error, volume)
    assert [l.voxels for l in found] == [n for n, _, _ in REGIONS]
    return found


@pytest.fixture
def table(shown):
    return shown(LesionTable(), 360, 300)


def column(table, c) -> list[str]:
    return [table.proxy.index(r, c).data() for r in range(table.proxy.rowCount())]


def click_header(qtbot, table, c) -> None:
    header = table.view.horizontalHeader()
    x = header.sectionViewportPosition(c) + header.sectionSize(c) // 2
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))


def test_rows_texts_and_summary(table, lesions):
    table.set_lesions(lesions)
    assert table.proxy.rowCount() == 8
    first = [table.proxy.index(0, c).data() for c in range(table.proxy.columnCount())]
    assert first == ["1", "10.648", "1331", "-28.0, -18.0, -8.0", "1–11", "4.000",
                     f"{(1330 * 0.5 + 4.0) / 1331:.3f}", "6, 6, 6"]
    assert column(table, VOLUME_COLUMN)[1:3] == ["2.352", "0.216"]
    assert column(table, 3)[1] == "-6.0, -22.0, -13.0"         # centre (17, 4, 3.5) → 2 mm voxels, offset
    assert table.summary.text() == "8 regions, 13.46 mL in all (8 shown)"   # 1683 voxels × 0.008 mL
    assert table.export_button.isEnabled()
    assert table.proxy.index(0, 4).data(Qt.ItemDataRole.ToolTipRole) == texts.LESION_SLICES_TOOLTIP.format(
        first=1, last=11, peak=1)
    model_flags = table.proxy.index(0, 1).flags()
    assert not model_flags & Qt.ItemFlag.ItemIsEditable


def test_an_aligned_view_shows_and_sorts_its_own_slices(qtbot, table, lesions):
    # the view counts slices from the top: the largest region, canonical slices 1–11, is on view slices 8–18
    flipped = [replace(l, view_slices=(19 - l.slices[1], 19 - l.slices[0], 19 - l.peak_slice)) for l in lesions]
    table.set_lesions(flipped)
    assert table.proxy.index(0, 4).data() == "8–18"
    assert table.proxy.index(0, 4).data(Qt.ItemDataRole.ToolTipRole) == texts.LESION_SLICES_ALIGNED_TOOLTIP.format(
        first=8, last=18, peak=18, scan_first=1, scan_last=11)
    click_header(qtbot, table, 4)                                   # ascending by the view's first slice
    firsts = [int(text.split("–")[0]) for text in column(table, 4)]
    assert firsts == sorted(firsts) and firsts[0] == 19 - 18        # the single voxel on canonical slice 18


def test_header_clicks_sort_numerically(qtbot, table, lesions):
    table.set_lesions(lesions)
    header = table.view.horizontalHeader()
    assert (header.sortIndicatorSection(), header.sortIndicatorOrder()) == (VOLUME_COLUMN, Qt.SortOrder.DescendingOrder)
    descending = [n for n, _, _ in REGIONS]
    assert [int(v) for v in column(table, VOXELS_COLUMN)] == descending
    click_header(qtbot, table, VOLUME_COLUMN)                  # the sorted column: flips to ascending
    assert [int(v) for v in column(table, VOXELS_COLUMN)] == descending[::-1]
    assert column(table, VOLUME_COLUMN)[-2:] == ["2.352", "10.648"]   # text order would put "10.648" first
    click_header(qtbot, table, VOXELS_COLUMN)                  # a new column starts with its first order: descending
    assert [int(v) for v in column(table, VOXELS_COLUMN)] == descending
    assert column(table, 0)[-2:] == ["7", "8"]                 # equal sizes keep the list's order
    click_header(qtbot, table, VOXELS_COLUMN)
    assert [int(v) for v in column(table, VOXELS_COLUMN)] == descending[::-1]
    click_header(qtbot, table, 0)                              # labels start ascending
    assert column(table, 0) == [str(i) for i in range(1, 9)]
    click_header(qtbot, table, 5)                              # peak heat, hottest first
    assert [float(v) for v in column(table, 5)] == [4.0, 3.0, 2.0, 1.5, 1.0, 0.75, 0.25, 0.125]
    click_header(qtbot, table, 4)                              # by first, then last slice (as text "1–11" < "1–3")
    assert column(table, 4) == ["1–3", "1–6", "1–11", "2–2", "5–5", "10–10", "15–16", "18–18"]
    table.set_lesions(lesions)                                 # a new list keeps the chosen sort
    assert column(table, 4)[0] == "1–3"


def test_min_size_filters_and_persists(qtbot, table, lesions):
    table.set_lesions(lesions)
    with qtbot.waitSignal(table.min_size_changed) as changed:
        table.min_spin.setValue(0.07)                          # keeps 9 voxels (0.072), drops 8 (0.064) and 1
    assert changed.args == [pytest.approx(0.07)]
    assert [l.voxels for l in table.lesions_shown()] == [1331, 294, 27, 12, 9]
    assert table.proxy.rowCount() == 5
    assert table.summary.text() == "8 regions, 13.46 mL in all (5 shown)"
    table.set_min_size(0.072)                                  # exactly 9 voxels' volume: still shown
    assert table.proxy.rowCount() == 5
    table.set_lesions(lesions[:3])                             # the minimum stays across lists
    assert table.min_size() == pytest.approx(0.072) and table.proxy.rowCount() == 3
    table.set_lesions(lesions[:1])
    assert table.summary.text() == "1 region, 10.65 mL (1 shown)"
    table.set_min_size(20)
    assert table.proxy.rowCount() == 0 and table.summary.text() == "1 region, 10.65 mL (0 shown)"
    spin = table.min_spin
    assert (spin.minimum(), spin.maximum(), spin.singleStep(), spin.decimals()) == (0, 1000, 0.01, 3)


def test_filtering_keeps_the_selected_region(table, lesions):
    table.set_lesions(lesions)
    table.view.selectRow(4)                                    # 9 voxels
    table.set_min_size(0.07)
    assert table._selected_label() == 5
    table.set_min_size(0.08)                                   # now hidden: nothing selected
    assert table._selected_label() is None


def test_click_and_enter_choose_a_lesion(qtbot, table, lesions):
    table.set_lesions(lesions)
    click_header(qtbot, table, VOLUME_COLUMN)                  # ascending: row 2 is the 8-voxel cube
    rect = table.view.visualRect(table.proxy.index(2, 3))
    with qtbot.waitSignal(table.chosen) as chosen:
        qtbot.mouseClick(table.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert chosen.args == [lesions[5]] and chosen.args[0].voxels == 8
    assert table._selected_label() == 6
    table.view.setFocus()
    table.view.selectRow(7)
    table.view.setCurrentIndex(table.proxy.index(7, 0))
    with qtbot.waitSignal(table.chosen) as chosen:
        qtbot.keyClick(table.view, Qt.Key.Key_Return)
    assert chosen.args == [lesions[0]]


def test_export_writes_the_shown_rows(qtbot, table, lesions, tmp_path):
    table.set_lesions(lesions)
    table.set_min_size(0.07)
    path = tmp_path / "regions.csv"
    with qtbot.waitSignal(table.exported) as done:
        assert table.export_csv(path)
    assert done.args == [texts.STATUS_LESIONS_CSV.format(n=5, path=path)]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert [int(r["voxels"]) for r in rows] == [1331, 294, 27, 12, 9]
    for row, lesion in zip(rows, lesions[:5], strict=True):
        assert int(row["label"]) == lesion.label
        assert float(row["volume_ml"]) == pytest.approx(lesion.voxels * ML)
        assert [float(row[k]) for k in ("centre_r_mm", "centre_a_mm", "centre_s_mm")] == pytest.approx(
            lesion.centre_ras_mm, abs=0.005)
        assert (int(row["voxel_i"]), int(row["voxel_j"]), int(row["voxel_k"])) == lesion.centre_voxel
        assert (int(row["first_slice"]), int(row["last_slice"])) == lesion.slices
        assert int(row["peak_slice"]) == lesion.peak_slice
        assert float(row["peak_heat"]) == pytest.approx(lesion.peak_heat, rel=1e-4)
        assert float(row["mean_heat"]) == pytest.approx(lesion.mean_heat, rel=1e-4)
    assert rows[0]["volume_ml"] == "10.648" and rows[0]["centre_r_mm"] == "-28.00" and rows[0]["peak_heat"] == "4"
    assert rows[1]["centre_s_mm"] == "-13.00"


def test_export_to_an_impossible_path_emits_error(qtbot, table, lesions, tmp_path):
    table.set_lesions(lesions)
    plain = tmp_path / "plain.txt"
    plain.write_text("a file, not a folder")
    for path in (tmp_path / "missing" / "regions.csv", plain / "regions.csv", tmp_path):
        with qtbot.assertNotEmitted(table.exported), qtbot.waitSignal(table.error) as failed:
            assert not table.export_csv(path)
        (message,) = failed.args
        assert message.startswith(f"cannot write {path}: ") and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["plain.txt"]        # no file, no temporary left
    assert plain.read_text() == "a file, not a folder"


def test_export_button_asks_for_a_path(qtbot, table, lesions, tmp_path, monkeypatch):
    asked = []

    def ask(parent, title, start, filters):
        asked.append((title, start, filters))
        return str(tmp_path / "picked"), filters

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(ask))
    table.set_lesions(lesions)
    table.export_path = str(tmp_path / "scan_lesions.csv")
    qtbot.mouseClick(table.export_button, Qt.MouseButton.LeftButton)
    assert asked == [(texts.DIALOG_SAVE_LESIONS, str(tmp_path / "scan_lesions.csv"), texts.FILTER_CSV)]
    assert len((tmp_path / "picked.csv").read_text().splitlines()) == 1 + 8   # the suffix added
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a: ("", "")))
    qtbot.mouseClick(table.export_button, Qt.MouseButton.LeftButton)            # cancelled: nothing happens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picked.csv"]


def test_none_shows_the_note(table, lesions, tmp_path):
    assert table.summary.text() == texts.LESIONS_NONE and table.proxy.rowCount() == 0
    assert not table.export_button.isEnabled() and table.lesions_shown() == []
    table.set_lesions(lesions)
    table.set_lesions(None)
    assert table.summary.text() == texts.LESIONS_NONE and table.proxy.rowCount() == 0
    assert not table.export_button.isEnabled()
    table.set_lesions([])                                      # a run that found nothing
    assert table.summary.text() == "0 regions, 0.00 mL in all (0 shown)" and table.export_button.isEnabled()
    assert table.export_csv(tmp_path / "none.csv")
    assert (tmp_path / "none.csv").read_text().splitlines() == [",".join(CSV_COLUMNS)]

