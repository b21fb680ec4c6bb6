"""The one list of requirements and the check of installed versions against it (``dependencies``)."""

from __future__ import annotations

import importlib.metadata

import pytest

from VISTA3DSlicerLib.dependencies import UnmetRequirement, requirements, unmet_requirements


def installed(**versions):
    """``importlib.metadata.version`` of a machine with these distributions (None: not installed)."""
    def version(name: str) -> str:
        if versions.get(name) is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]
    return version


def test_a_version_too_old_too_new_or_missing_is_unmet_and_says_which():
    required = ["monai>=1.5,<1.7", "nibabel>=5.0", "psutil>=5.9", "torch>=2.4"]
    unmet = unmet_requirements(required, installed(monai="1.3.0", psutil="7.2.2", torch="2.13.0+cpu"))
    assert unmet == [UnmetRequirement("monai>=1.5,<1.7", "monai", "1.3.0"),
                     UnmetRequirement("nibabel>=5.0", "nibabel", None)]
    assert [str(u) for u in unmet] == ["monai>=1.5,<1.7 (1.3.0 is installed)", "nibabel>=5.0 (not installed)"]
    too_new = unmet_requirements(["monai>=1.5,<1.7"], installed(monai="1.7.0"))
    assert [u.installed for u in too_new] == ["1.7.0"]


def test_prereleases_in_the_range_and_requirements_for_another_platform_are_met():
    assert unmet_requirements(["torch>=2.4"], installed(torch="2.14.0.dev20260101+cu130")) == []
    assert unmet_requirements(['pywin32>=300; sys_platform == "win32-never"'], installed()) == []


def test_the_lists_hold_every_package_and_the_runtime_s_own():
    package = requirements()
    assert "torch>=2.4" in package and "monai>=1.5,<1.7" in package
    assert all(not line.startswith("#") and line == line.strip() for line in package)
    assert requirements("openvino") == package + ["openvino>=2024.4"]
    assert requirements("torch") == package


def test_this_machine_meets_the_package_s_requirements():
    """The test environment is installed from the same list (make test): nothing is unmet."""
    assert unmet_requirements(requirements()) == []


@pytest.mark.parametrize("bad", ["monai>>1", "not a requirement!"])
def test_a_malformed_line_is_a_programming_error(bad):
    from packaging.requirements import InvalidRequirement

    with pytest.raises(InvalidRequirement):
        unmet_requirements([bad], installed())


def test_install_puts_torch_first_through_its_own_installer_then_the_rest_in_one_pip_call():
    from VISTA3DSlicerLib.dependencies import install

    calls = []
    unmet = [UnmetRequirement("monai>=1.5,<1.7", "monai", "1.3.0"), UnmetRequirement("torch>=2.4", "torch", None),
             UnmetRequirement("psutil>=5.9", "psutil", None)]
    install(unmet, lambda packages: calls.append(("pip", packages)), lambda torch: calls.append(("torch", torch)))
    assert calls == [("torch", "torch>=2.4"), ("pip", ["monai>=1.5,<1.7", "psutil>=5.9"])]
    calls.clear()
    install([], lambda packages: calls.append(packages), lambda torch: calls.append(torch))
    assert calls == []


def test_require_names_each_unmet_package_and_how_to_install_it(monkeypatch):
    from VISTA3DSlicerLib import dependencies
    from VISTA3DSlicerLib.errors import VISTA3DError

    dependencies.require()  # this machine meets them
    real = importlib.metadata.version

    def version(name: str) -> str:  # this machine without monai and psutil
        if name in ("monai", "psutil"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(VISTA3DError) as error:
        dependencies.require()
    message = str(error.value)
    assert "monai>=1.5,<1.7 (not installed)" in message and "psutil>=5.9 (not installed)" in message
    assert "installDependencies()" in message
