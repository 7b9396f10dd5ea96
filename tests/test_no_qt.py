"""Import rules: core and trainer import with Qt unimportable; NIfTI inputs need neither pydicom nor deepbet."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import sss_viewer.core
import trainer

QT_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6'):
            raise ImportError('Qt is forbidden here: ' + name)
sys.meta_path.insert(0, Block())
"""
BLOCKER = QT_BLOCK + """
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
assert not any(m.split('.')[0] in ('PySide6', 'pyqtgraph') for m in sys.modules)
print('imported', len(sys.argv) - 1)
"""


def modules(package) -> list[str]:
    return [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]


def test_core_and_trainer_import_without_qt():
    names = modules(sss_viewer.core) + modules(trainer)
    assert "sss_viewer.core.unet" in names and "sss_viewer.core.volume" in names
    out = subprocess.run([sys.executable, "-c", BLOCKER, *names], capture_output=True, text=True,
                         cwd=Path(sss_viewer.core.__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"imported {len(names)}"


def test_blocker_really_blocks_qt():
    out = subprocess.run([sys.executable, "-c", BLOCKER, "pyqtgraph"], capture_output=True, text=True)
    assert out.returncode != 0 and "Qt is forbidden" in out.stderr


NO_DICOM_NO_DEEPBET = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pydicom', 'deepbet'):
            raise ImportError('not installed here: ' + name)
sys.meta_path.insert(0, Block())
import trainer.cli, trainer.demo, trainer.evaluate, trainer.calibrate, sss_viewer.cli.detect, sss_viewer.cli.bench
from sss_viewer.core.inputs import open_scan
print(open_scan(sys.argv[1]).extraction)
"""


def test_nifti_tools_run_without_pydicom_and_deepbet(tmp_path):
    """A bare GPU machine with only the training stack: NIfTI inputs need neither (they load for DICOM folders and
    skull extraction only)."""
    import nibabel as nib
    import numpy as np
    g = np.indices((20, 24, 16)).astype(float)
    brain = np.where(((g - 10) ** 2).sum(axis=0) < 60, 100.0 + g[0], 0.0).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 3] = -8.0  # 1 mm RAS with an origin: the identity would warn
    nib.Nifti1Image(brain, affine).to_filename(str(tmp_path / "t1.nii.gz"))
    out = subprocess.run([sys.executable, "-c", NO_DICOM_NO_DEEPBET, str(tmp_path / "t1.nii.gz")],
                         capture_output=True, text=True, cwd=Path(sss_viewer.core.__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"
