"""The package as batch users, containers and cluster workers install it: a wheel built from the
checkout, installed into a fresh virtual environment, with nothing of the checkout on its path.

The fresh environment borrows the test environment's third-party packages (torch alone is
gigabytes) through a path file, which adds their folder but runs none of its path files, so the
checkout's editable install is not seen there: what runs is the wheel's.
"""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*command, **options) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, encoding="utf-8", errors="replace", **options)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh virtual environment with the checkout's wheel installed."""
    folder = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
        folder / "dist", REPO)
    (wheel,) = (folder / "dist").glob("vista3dslicer-*.whl")
    environment = folder / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", environment)
    purelib = run(environment / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    (Path(purelib.stdout.strip()) / "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(sys.executable, "-m", "pip", "--python", environment / "bin" / "python", "install", "--quiet", "--no-deps",
        wheel)
    return environment / "bin"


def test_the_wheel_holds_the_library_and_its_data(installed_wheel, tmp_path):
    where = run(installed_wheel / "python", "-c",
                "import VISTA3DSlicerLib, VISTA3DSlicerLib.labels as l; print(VISTA3DSlicerLib.__file__); "
                "print(l.colour_table_path()); print(*l.terminology_context_paths())", cwd=tmp_path).stdout.split()
    assert all(str(installed_wheel.parent) in line for line in where), where  # not the checkout's
    assert all(Path(line).is_file() for line in where)


def test_vista3d_labels_runs_from_the_wheel(installed_wheel, tmp_path):
    output = run(installed_wheel / "vista3d", "labels", cwd=tmp_path).stdout
    assert any(line.split()[:2] == ["1", "liver"] for line in output.splitlines())


def test_vista3d_segments_from_the_wheel(installed_wheel, tmp_path, small_checkpoint):
    import nibabel as nib

    i, j, k = np.ogrid[:40, :36, :24]
    body = ((i - 20) / 17) ** 2 + ((j - 18) / 15) ** 2 < 1
    ct = np.where(body, 40, -1000).astype(np.int16) + np.zeros((40, 36, 24), np.int16)
    nib.save(nib.Nifti1Image(ct, np.diag([1.5, 1.5, 1.5, 1.0])), tmp_path / "ct.nii.gz")
    run(installed_wheel / "vista3d", "segment", "ct.nii.gz", "-o", "labels.seg.nrrd", "--labels", "liver,spleen",
        "--weights", small_checkpoint, "--device", "cpu", cwd=tmp_path)
    assert (tmp_path / "labels.seg.nrrd").stat().st_size > 0
