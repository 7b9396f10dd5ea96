"""The lesion list: hand-counted regions, volumes, world centres and native voxel indices on non-RAS grids."""

import numpy as np
import pytest
from nibabel.orientations import apply_orientation

from sss_viewer.core.lesions import (CSV_COLUMNS, Lesion, canonical_to_native_index, lesion_list, lesions_csv,
                                     write_lesions_csv)
from sss_viewer.core.volume import Volume

# LPS, 0.5 x 2 x 1.5 mm voxels (1.5 mm^3 = 0.0015 mL): native x runs R → L, y runs A → P, z runs I → S.
LPS = np.array([[-0.5, 0, 0, 10], [0, -2.0, 0, 20], [0, 0, 1.5, -5], [0, 0, 0, 1]])
# LIA, 1 x 3 x 2 mm voxels: native axis 0 runs R → L, axis 1 runs S → I, axis 2 runs P → A.
LIA = np.array([[-1.0, 0, 0, 7], [0, 0, 2.0, -11], [0, -3.0, 0, 13], [0, 0, 0, 1]])


def volume_on(affine, shape) -> Volume:
    return Volume.from_array(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), affine)


def canonical(native: np.ndarray, volume: Volume) -> np.ndarray:
    return apply_orientation(native, volume.ornt)


def three_regions():
    """Native (10, 12, 8) LPS mask: a 3x3x3 cube, a 3x1x3 plate and one voxel, and a heat map over them."""
    mask = np.zeros((10, 12, 8), bool)
    error = np.full(mask.shape, 0.1, np.float32)
    mask[1:4, 2:5, 1:4] = True                          # 27 voxels, centre (2, 3, 2)
    error[1:4, 2:5, 1:4] = np.arange(27).reshape(3, 3, 3) / 10
    mask[6:9, 8, 4:7] = True                            # 9 voxels, centre (7, 8, 5)
    error[6:9, 8, 4:7] = 2.0
    mask[0, 11, 7] = True                               # 1 voxel
    error[0, 11, 7] = 5.0
    return mask, error


def test_three_regions_in_volume_order_on_an_lps_grid():
    volume = volume_on(LPS, (10, 12, 8))
    assert "".join(volume.axcodes) == "LPS"
    mask, error = three_regions()
    lesions = lesion_list(canonical(mask, volume), canonical(error, volume), volume)
    assert [l.label for l in lesions] == [1, 2, 3]
    assert [l.voxels for l in lesions] == [27, 9, 1]
    np.testing.assert_allclose([l.volume_ml for l in lesions], [0.0405, 0.0135, 0.0015])
    # world = LPS @ native centre: (-0.5 x + 10, -2 y + 20, 1.5 z - 5)
    np.testing.assert_allclose([l.centre_ras_mm for l in lesions], [(9, 14, -2), (6.5, 4, 2.5), (10, -2, 5.5)])
    assert [l.centre_voxel for l in lesions] == [(2, 3, 2), (7, 8, 5), (0, 11, 7)]
    for l in lesions:
        assert mask[l.centre_voxel]                     # the same voxel in the native array
    assert [l.slices for l in lesions] == [(1, 3), (4, 6), (7, 7)]  # canonical z = native z here
    assert [l.peak_heat for l in lesions] == pytest.approx([2.6, 2.0, 5.0])
    assert [l.mean_heat for l in lesions] == pytest.approx([1.3, 2.0, 5.0])
    assert lesions[1].to_json() == {"label": 2, "voxels": 9, "volume_ml": pytest.approx(0.0135),
                                    "centre_ras_mm": pytest.approx([6.5, 4, 2.5]), "centre_voxel": [7, 8, 5],
                                    "slices": [4, 6], "peak_slice": 4, "peak_heat": 2.0, "mean_heat": 2.0}


def test_min_ml_drops_the_small_ones_and_renumbers():
    volume = volume_on(LPS, (10, 12, 8))
    mask, error = three_regions()
    mask, error = canonical(mask, volume), canonical(error, volume)
    assert [l.voxels for l in lesion_list(mask, error, volume, min_ml=0.001)] == [27, 9, 1]
    kept = lesion_list(mask, error, volume, min_ml=0.01)
    assert [(l.label, l.voxels) for l in kept] == [(1, 27), (2, 9)]
    assert [(l.label, l.voxels) for l in lesion_list(mask, error, volume, min_ml=0.02)] == [(1, 27)]
    assert lesion_list(mask, error, volume, min_ml=1.0) == []
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="mL"):
            lesion_list(mask, error, volume, min_ml=bad)


def test_empty_mask_and_wrong_shapes():
    volume = volume_on(LPS, (10, 12, 8))
    empty = np.zeros(volume.data.shape, bool)
    assert lesion_list(empty, np.zeros(empty.shape, np.float32), volume) == []
    with pytest.raises(ValueError, match="canonical shape"):
        lesion_list(np.zeros((10, 12, 8), bool)[:, :, :7], np.zeros((10, 12, 7)), volume)


def test_26_connectivity_joins_corners():
    volume = volume_on(np.eye(4), (5, 5, 5))
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True               # touching by a corner only: one region
    mask[4, 4, 4] = True                                # one empty voxel between: another
    lesions = lesion_list(mask, mask.astype(np.float32), volume)
    assert [l.voxels for l in lesions] == [2, 1]
    assert lesions[0].centre_ras_mm == pytest.approx((1.5, 1.5, 1.5))
    assert lesions[0].centre_voxel == (2, 2, 2)         # halves round up along each RAS+ axis
    assert lesions[0].slices == (1, 2)


def test_native_index_and_world_centre_on_a_permuted_lia_grid():
    shape = (9, 7, 11)                                  # native (L, I, A)
    volume = volume_on(LIA, shape)
    assert "".join(volume.axcodes) == "LIA" and volume.data.shape == (9, 11, 7)
    mask = np.zeros(shape, bool)
    mask[1:4, 0:3, 2:5] = True                          # 27 voxels, native centre (2, 1, 3)
    mask[6, 4:7, 7:10] = True                           # 9 voxels, native centre (6, 5, 8)
    mask[8, 6, 0] = True                                # 1 voxel, the most inferior slice
    lesions = lesion_list(canonical(mask, volume), canonical(mask.astype(np.float32), volume), volume)
    assert [l.voxels for l in lesions] == [27, 9, 1]
    assert [l.centre_voxel for l in lesions] == [(2, 1, 3), (6, 5, 8), (8, 6, 0)]
    for l in lesions:
        assert mask[l.centre_voxel]
        np.testing.assert_allclose(l.centre_ras_mm, (LIA @ [*l.centre_voxel, 1])[:3])
    # canonical z (inferior → superior) = 6 - native axis 1
    assert [l.slices for l in lesions] == [(4, 6), (0, 2), (0, 0)]
    np.testing.assert_allclose([l.volume_ml for l in lesions], np.array([27, 9, 1]) * 6 / 1000)
    assert isinstance(lesions[0], Lesion) and all(isinstance(i, int) for i in lesions[0].centre_voxel)
    canonical_mask = canonical(mask, volume)
    for l in lesions:
        assert canonical_mask[l.centre_canonical]                   # the same voxel, canonical index
        assert canonical_to_native_index(l.centre_canonical, volume) == l.centre_voxel


def test_peak_slice_is_the_slice_with_most_voxels():
    volume = volume_on(np.eye(4), (8, 8, 6))
    mask = np.zeros((8, 8, 6), bool)
    mask[2:4, 2:4, 1] = True                            # 4 voxels on slice 1
    mask[1:6, 1:6, 2] = True                            # 25 on slice 2
    mask[2, 2, 3] = True                                # 1 on slice 3
    (lesion,) = lesion_list(mask, mask.astype(np.float32), volume)
    assert lesion.slices == (1, 3) and lesion.peak_slice == 2 and lesion.voxels == 30


def test_view_slices_count_a_view_that_slices_differently():
    volume = volume_on(np.eye(4), (8, 8, 6))
    mask = np.zeros((8, 8, 6), bool)
    mask[1:5, 1:6, 2] = True                            # 20 voxels on slice 2: view slices 2 + x // 2 = 2, 3, 4
    mask[1, 1, 1] = True                                # joins by its corner: view slice 1
    mask[7, 7, 5] = True                                # alone: view slice 5 + 3 = 8

    def sheared(indices):                               # (m, 3) canonical → (m,) view slice
        return indices[:, 2] + indices[:, 0] // 2

    plate, single = lesion_list(mask, mask.astype(np.float32), volume, view_slice=sheared)
    assert plate.slices == (1, 2) and plate.peak_slice == 2
    assert plate.view_slices == (1, 4, 3)               # view slice 3 holds x = 2, 3 (10 voxels), 2 and 4 hold 5
    assert single.view_slices == (8, 8, 8)
    assert "view_slices" not in plate.to_json()         # sss-detect's JSON keeps the scan's own slices
    assert lesion_list(mask, mask.astype(np.float32), volume)[0].view_slices is None


def test_canonical_to_native_index_matches_core_reorientation():
    native = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    axis = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    for codes in ("LPS", "RAS", "ASL", "IRP"):
        affine = np.eye(4)
        affine[:3, :3] = 0
        for i, code in enumerate(codes):
            world, sign = axis[code]
            affine[world, i] = sign
        vol = Volume.from_array(native, affine)
        assert vol.axcodes == tuple(codes)
        for index in np.ndindex(vol.data.shape):
            assert native[canonical_to_native_index(index, vol)] == vol.data[index]


def test_csv_header_and_rows_by_hand(tmp_path):
    volume = volume_on(LPS, (10, 12, 8))
    mask, error = three_regions()
    lesions = lesion_list(canonical(mask, volume), canonical(error, volume), volume)
    text = lesions_csv(lesions)
    lines = text.splitlines()
    assert lines[0] == ("label,voxels,volume_ml,centre_r_mm,centre_a_mm,centre_s_mm,voxel_i,voxel_j,voxel_k,"
                        "first_slice,last_slice,peak_slice,peak_heat,mean_heat")
    assert lines[0].split(",") == list(CSV_COLUMNS)
    # 27 voxels of 1.5 mm^3, centre (9, 14, -2) mm at native voxel (2, 3, 2), slices 1-3 with 9 voxels each
    assert lines[1] == "1,27,0.0405,9.00,14.00,-2.00,2,3,2,1,3,1,2.6,1.3"
    assert lines[2] == "2,9,0.0135,6.50,4.00,2.50,7,8,5,4,6,4,2,2"
    assert lines[3] == "3,1,0.0015,10.00,-2.00,5.50,0,11,7,7,7,7,5,5"
    assert len(lines) == 4 and lesions_csv([]).splitlines() == [lines[0]]
    path = write_lesions_csv(tmp_path / "lesions.csv", lesions[1:])
    assert path.read_text().splitlines() == [lines[0], lines[2], lines[3]]
    assert [p.name for p in tmp_path.iterdir()] == ["lesions.csv"]          # no temporary left
    with pytest.raises(OSError):
        write_lesions_csv(tmp_path / "missing" / "lesions.csv", lesions)


def test_csv_number_formats():
    lesion = Lesion(label=4, voxels=3, volume_ml=3 * 0.000125, centre_ras_mm=(0.004, 123.456, -45.678),
                    centre_voxel=(1, 2, 3), slices=(0, 9), centre_canonical=(3, 2, 1), peak_slice=5,
                    peak_heat=0.123456789, mean_heat=1.5e-5)
    (row,) = lesions_csv([lesion]).splitlines()[1:]
    assert row.split(",")[2:6] == ["0.000375", "0.00", "123.46", "-45.68"]        # sub-mm voxels' mL stay exact
    assert row.split(",")[-2:] == ["0.12346", "1.5e-05"]
