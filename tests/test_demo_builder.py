"""The demo builder: deterministic, lesion inside the brain, cropped without moving anything in world space."""

import nibabel as nib
import numpy as np

from trainer.demo import CENTRE_MM, build, main


def fake_template(path):
    """A 3 mm RAS 'template': an ellipsoid brain with a smooth texture, covering MNI space."""
    shape = (64, 76, 60)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = (-96, -132, -72)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (g[0] / 0.8) ** 2 + (g[1] / 0.85) ** 2 + (g[2] / 0.8) ** 2 < 1
    data = np.where(inside, 150 + 40 * np.sin(8 * g[0]) * np.cos(6 * g[1]), 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return data, affine


def test_build_is_deterministic_and_lesion_is_in_the_brain(tmp_path):
    data, affine = fake_template(tmp_path / "t.nii.gz")
    vol, mask = build(tmp_path / "t.nii.gz")
    vol2, mask2 = build(tmp_path / "t.nii.gz")
    assert np.array_equal(vol.get_fdata(), vol2.get_fdata()) and np.array_equal(mask.get_fdata(), mask2.get_fdata())
    v, m = np.asarray(vol.dataobj), np.asarray(mask.dataobj)
    assert v.dtype == np.uint8 and m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert m.sum() > 50 and (v[m > 0] > 0).all()                  # the lesion lies inside the brain
    centre_vox = np.linalg.solve(vol.affine, [*CENTRE_MM, 1])[:3].round().astype(int)
    assert m[tuple(centre_vox)] == 1 and v[tuple(centre_vox)] < 100  # the necrotic core is dark
    # Cropping keeps world coordinates: a far-from-lesion voxel has its template value at the same mm.
    corner_world = vol.affine @ [5, 5, 5, 1]
    src = np.linalg.solve(affine, corner_world)[:3].round().astype(int)
    assert v[5, 5, 5] == data[tuple(src)]
    assert vol.shape[0] < data.shape[0]


def test_cli_writes_both_files_and_rejects_a_non_ras_template(tmp_path, capsys):
    fake_template(tmp_path / "t.nii.gz")
    assert main([str(tmp_path / "t.nii.gz"), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo_t1.nii.gz", "demo_t1_lesion_mask.nii.gz"]
    img = nib.load(str(tmp_path / "t.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ np.diag([-1, 1, 1, 1])), str(tmp_path / "l.nii.gz"))
    assert main([str(tmp_path / "l.nii.gz"), "--out", str(tmp_path / "o2")]) == 2
    assert "RAS" in capsys.readouterr().err
