"""The Python packages VISTA3D needs, and which of them are missing or at a version it cannot use.

The list is ``requirements.txt`` beside this file (``requirements-openvino.txt`` for the OpenVINO
runtime, ``requirements-server.txt`` for ``vista3d serve``, ``requirements-dicom.txt`` for DICOM SEG
output, ``requirements-ray.txt`` for batches on Ray): pyproject.toml takes the package's dependencies
and extras from them, and the Slicer module, which
installs packages into Slicer's Python on first use, checks the installed versions against it.
A package another extension installed at another version is reported, not taken as present.
Only the standard library is imported at module level (Slicer imports this at start-up).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

__all__ = ["UnmetRequirement", "requirements", "unmet_requirements", "require", "install"]

_FOLDER = Path(__file__).resolve().parent
#: The requirements files: the package's own, and those of each optional part (pyproject's extras).
_FILES = {None: "requirements.txt", "openvino": "requirements-openvino.txt", "server": "requirements-server.txt",
          "dicom": "requirements-dicom.txt", "ray": "requirements-ray.txt"}


@dataclass(frozen=True)
class UnmetRequirement:
    """A requirement (``monai>=1.5,<1.7``) and the version installed (None: not installed)."""

    requirement: str
    name: str
    installed: Optional[str]

    def __str__(self) -> str:
        found = "not installed" if self.installed is None else f"{self.installed} is installed"
        return f"{self.requirement} ({found})"


def requirements(runtime: Optional[str] = None) -> list[str]:
    """The requirements of the package, and of ``runtime`` when it has its own (``"openvino"``)."""
    files = [_FILES[None]] + ([_FILES[runtime]] if runtime in _FILES and runtime is not None else [])
    lines = []
    for name in files:
        for line in (_FOLDER / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def unmet_requirements(
    required: list[str], version_of: Optional[Callable[[str], str]] = None
) -> list[UnmetRequirement]:
    """The requirements the installed packages do not meet: missing, or at a version outside the
    range (``version_of``: the installed version of a distribution; default ``importlib.metadata.version``)."""
    from packaging.requirements import Requirement

    version_of = version_of or importlib.metadata.version
    unmet = []
    for text in required:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed: Optional[str] = version_of(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(UnmetRequirement(text, requirement.name, installed))
    return unmet


def require(runtime: Optional[str] = None) -> None:
    """Refuse to run while a requirement (of ``runtime`` too) is unmet, naming each and what to do."""
    unmet = unmet_requirements(requirements(runtime))
    if unmet:
        from .errors import VISTA3DError

        raise VISTA3DError(
            "VISTA3D needs these Python packages, which are not installed or not at a version it can use: "
            f"{', '.join(map(str, unmet))}. Install them from the VISTA3D panel (it offers to when you run it), "
            "or in Slicer's Python console with VISTA3DSlicer.VISTA3DSlicerLogic().installDependencies() "
            f"(outside Slicer: pip install {'vista3dslicer' if runtime is None else repr(f'vista3dslicer[{runtime}]')})."
        )


def install(unmet: list[UnmetRequirement], pip_install: Callable[[list[str]], None],
            install_torch: Callable[[str], None]) -> None:
    """Install the ``unmet`` requirements: torch first, with ``install_torch(requirement)`` (in Slicer,
    the PyTorch extension, which picks the build for the GPU driver; pip would otherwise pull a
    generic torch in as a dependency of monai), then the others in one ``pip_install(requirements)``."""
    for torch in (u for u in unmet if u.name == "torch"):
        install_torch(torch.requirement)
    packages = [u.requirement for u in unmet if u.name != "torch"]
    if packages:
        pip_install(packages)
    importlib.invalidate_caches()
