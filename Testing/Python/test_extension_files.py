"""The files Slicer's build and the Extensions Index read: every script and resource listed in
CMake (a file left out is missing from the installed extension), and the index entry."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_CMAKE = REPO / "VISTA3DSlicer" / "CMakeLists.txt"


def cmake_list(name: str) -> list[str]:
    match = re.search(rf"set\({name}\n(.*?)\n  \)", MODULE_CMAKE.read_text(encoding="utf-8"), flags=re.S)
    assert match, f"VISTA3DSlicer/CMakeLists.txt sets no {name}"
    return [line.strip().replace("${MODULE_NAME}", "VISTA3DSlicer") for line in match.group(1).splitlines()]


def test_cmake_lists_every_library_script():
    listed = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    on_disk = {str(p.relative_to(REPO / "VISTA3DSlicer")) for p in (REPO / "VISTA3DSlicer").rglob("*.py")}
    assert listed == on_disk


def test_cmake_installs_the_library_s_package_data_beside_its_scripts():
    """What pyproject ships in the wheel, CMake copies into Slicer: the same files."""
    import tomllib

    listed = set(cmake_list("MODULE_PYTHON_RESOURCES"))
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    packaged = {str(path.relative_to(REPO / "VISTA3DSlicer"))
                for package, patterns in package_data.items() for pattern in patterns
                for path in REPO.joinpath("VISTA3DSlicer", *package.split(".")).glob(pattern)}
    assert listed == packaged
    from VISTA3DSlicerLib.labels import colour_table_path, terminology_context_paths

    for path in (colour_table_path(), *terminology_context_paths()):
        assert str(path.relative_to(REPO / "VISTA3DSlicer")) in listed


def test_cmake_resources_exist_and_include_what_the_module_loads():
    resources = cmake_list("MODULE_RESOURCES")
    for resource in resources:
        assert (REPO / "Resources" / resource).is_file(), resource
    assert set(resources) == {"UI/VISTA3DSlicer.ui", "Icons/VISTA3DSlicer.png"}


def test_extension_metadata_depends_on_pytorch_and_points_at_files_in_the_repository():
    entry = json.loads((REPO / "VISTA3DSlicer.json").read_text(encoding="utf-8"))
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Segmentation"
    s4ext = dict(line.split(" ", 1) for line in (REPO / "VISTA3DSlicer.s4ext").read_text(encoding="utf-8").splitlines()
                 if line and not line.startswith("#") and " " in line)
    assert s4ext["depends"] == "PyTorch" and s4ext["category"] == "Segmentation"
    top_cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top_cmake
    urls = s4ext["screenshoturls"].split() + [s4ext["iconurl"]]
    urls += re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', top_cmake).group(1).split()
    prefix = "https://raw.githubusercontent.com/vista3dslicer/SlicerVISTA3D/main/"
    for url in urls:
        assert url.startswith(prefix) and (REPO / url.removeprefix(prefix)).is_file(), url
