"""Checks of the Slicer module that need no Slicer.

- ``VISTA3DSlicer.py`` must import in a Slicer where none of VISTA3D's packages are installed
  yet (Slicer imports every module at start-up; the module installs them on first use).
- The panel's ``.ui`` file must load and hold every widget the module looks up, bound to the
  parameter node's fields; it is loaded with PySide6's ``QUiLoader`` and stand-ins for the
  Slicer (CTK, MRML) widget classes, and rendered to a PNG for a look.
- ``slicer_adapter``'s array conventions, with stand-in volume nodes.

What needs a real Slicer (MRML nodes, segment import, the parameter node binding) is in the
module's own self-test, ``VISTA3DSlicerTest``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "VISTA3DSlicer"
MODULE_FILE = MODULE_DIR / "VISTA3DSlicer.py"
UI_FILE = REPO / "Resources" / "UI" / "VISTA3DSlicer.ui"

#: Top-level packages Slicer itself provides to a scripted module.
SLICER_PROVIDED = {"slicer", "qt", "ctk", "vtk"}
#: Packages the module installs on first use: none of them may be needed to import it.
INSTALLED_ON_DEMAND = ["torch", "monai", "SimpleITK", "nibabel", "skimage", "slicerio", "nrrd",
                       "safetensors", "filelock", "requests", "tqdm", "PIL", "segment_anything"]


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def module_level_imports(tree: ast.Module) -> list[str]:
    """Dotted names imported when the module is imported: its body and any if/try/with blocks,
    not function or class bodies."""
    names = []
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports do not work in a Slicer scripted module"
            for alias in node.names:
                submodule = MODULE_DIR.joinpath(*node.module.split("."), f"{alias.name}.py")
                names.append(f"{node.module}.{alias.name}" if submodule.is_file() else node.module)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return names


def module_constant(name: str):
    """The literal value of a module-level constant of VISTA3DSlicer.py."""
    for node in module_tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"VISTA3DSlicer.py defines no {name}")


def parameter_names() -> set[str]:
    """The fields of the module's parameterNodeWrapper class."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("VISTA3DSlicer.py has no @parameterNodeWrapper class")


def ui_names_used_by_module() -> set[str]:
    """Every ``self.ui.<name>`` the module uses."""
    return {
        node.attr
        for node in ast.walk(module_tree())
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }


# ------------------------------------------------------------------------------ module imports


def test_module_imports_only_what_slicer_has_at_start_up():
    imports = module_level_imports(module_tree())
    allowed_roots = set(sys.stdlib_module_names) | SLICER_PROVIDED | {"VISTA3DSlicerLib"}
    assert [name for name in imports if name.split(".")[0] not in allowed_roots] == []

    library_modules = sorted({name for name in imports if name.startswith("VISTA3DSlicerLib")})
    assert library_modules, "expected the module to use VISTA3DSlicerLib"
    # Import them where none of the on-demand packages can be imported.
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        BLOCKED = {INSTALLED_ON_DEMAND!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed (blocked by the test)")
                return None

        sys.meta_path.insert(0, Blocker())
        sys.path.insert(0, {str(MODULE_DIR)!r})
        for name in {library_modules!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_import_walk_sees_nested_and_submodule_imports():
    tree = ast.parse(textwrap.dedent("""
        import os
        from VISTA3DSlicerLib import weights
        try:
            import torch
        except ImportError:
            pass
        def later():
            import monai
        class Widget:
            import SimpleITK
    """))
    assert module_level_imports(tree) == ["os", "VISTA3DSlicerLib.weights", "torch"]


def test_on_demand_requirements_match_pyproject():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    installed_by_module = set(module_constant("PIP_REQUIREMENTS").values())
    torch = "torch" + module_constant("TORCH_VERSION_REQUIREMENT")
    # numpy ships with Slicer; everything else the package needs, the module installs.
    assert installed_by_module | {torch} == {d for d in dependencies if not d.startswith("numpy")}
    assert set(module_constant("PIP_REQUIREMENTS")) == set(INSTALLED_ON_DEMAND) - {"torch"}


# ------------------------------------------------------------------------------ the .ui file


def test_ui_declares_its_custom_widgets_and_connects_existing_widgets():
    root = ElementTree.parse(UI_FILE).getroot()
    names = {widget.get("name") for widget in root.iter("widget")}
    custom = {c.findtext("class"): c for c in root.iter("customwidget")}
    used_classes = {widget.get("class") for widget in root.iter("widget")}
    for class_name in used_classes - {"QLabel", "QLineEdit", "QComboBox", "QPushButton", "QProgressBar"}:
        assert class_name in custom, f"{class_name} is not declared in <customwidgets>"
        assert custom[class_name].findtext("header") == f"{class_name}.h"
        assert custom[class_name].findtext("extends")
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in names and connection.findtext("receiver") in names
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    node_selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert receivers == node_selectors, "every node selector needs the scene"


@pytest.fixture(scope="module")
def qt_application():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed (pip install PySide6-Essentials)")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def slicer_widget_stand_ins() -> list[type]:
    """Plain Qt classes named like the Slicer classes the .ui uses, for QUiLoader to build."""
    from PySide6.QtCore import Property, Signal, Slot
    from PySide6.QtWidgets import QComboBox, QGroupBox, QWidget

    QWIDGETSIZE_MAX = (1 << 24) - 1

    class qMRMLWidget(QWidget):
        mrmlSceneChanged = Signal("vtkMRMLScene*")

    class ctkCollapsibleButton(QGroupBox):
        """A group box titled with the button's text; collapsed, it shows only the title."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._text = ""
            self._collapsed = False

        def _update(self) -> None:
            self.setTitle(("▸ " if self._collapsed else "▾ ") + self._text)
            for child in self.findChildren(QWidget):
                child.setVisible(not self._collapsed)
            self.setFlat(self._collapsed)
            self.setMaximumHeight(self.fontMetrics().height() + 4 if self._collapsed else QWIDGETSIZE_MAX)

        def showEvent(self, event) -> None:  # children exist only after the properties are set
            self._update()
            super().showEvent(event)

        def _set_text(self, text: str) -> None:
            self._text = text
            self._update()

        def _set_collapsed(self, collapsed: bool) -> None:
            self._collapsed = collapsed
            self._update()

        text = Property(str, lambda self: self._text, _set_text)
        collapsed = Property(bool, lambda self: self._collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QComboBox):
        """Shows what an empty scene shows: the "none" entry when there is one."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._node_types: list[str] = []
            self._none_enabled = False
            self._none_display = "None"

        def _update(self) -> None:
            self.clear()
            if self._none_enabled:
                self.addItem(self._none_display)

        def _set_none_display(self, text: str) -> None:
            self._none_display = text
            self._update()

        def _set_none_enabled(self, enabled: bool) -> None:
            self._none_enabled = enabled
            self._update()

        def _set_node_types(self, node_types: list[str]) -> None:
            self._node_types = list(node_types)

        nodeTypes = Property(list, lambda self: self._node_types, _set_node_types)
        noneDisplay = Property(str, lambda self: self._none_display, _set_none_display)
        noneEnabled = Property(bool, lambda self: self._none_enabled, _set_none_enabled)

        @Slot("vtkMRMLScene*")
        def setMRMLScene(self, scene) -> None:
            pass

    return [qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox]


@pytest.fixture(scope="module")
def panel(qt_application):
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    loader = QUiLoader()
    for stand_in in slicer_widget_stand_ins():
        loader.registerCustomWidget(stand_in)
    ui_file = QFile(str(UI_FILE))
    assert ui_file.open(QIODevice.OpenModeFlag.ReadOnly)
    widget = loader.load(ui_file)
    ui_file.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()


def child(panel, name: str):
    from PySide6.QtCore import QObject

    found = panel.findChild(QObject, name)
    assert found is not None, f"the .ui has no widget named {name}"
    return found


def test_ui_has_every_widget_the_module_uses(panel):
    used = ui_names_used_by_module()
    assert {"applyButton", "progressBar"} <= used
    for name in used:
        child(panel, name)


def test_ui_gives_the_scene_to_every_node_selector(panel):
    from PySide6.QtCore import SIGNAL
    from PySide6.QtWidgets import QWidget

    selectors = [w for w in panel.findChildren(QWidget) if type(w).__name__ == "qMRMLNodeComboBox"]
    assert len(selectors) == 2
    assert panel.receivers(SIGNAL("mrmlSceneChanged(vtkMRMLScene*)")) == len(selectors)


def test_ui_binds_one_widget_to_each_parameter(panel):
    from PySide6.QtWidgets import QWidget

    bound = [w.property("SlicerParameterName") for w in panel.findChildren(QWidget)
             if w.property("SlicerParameterName")]
    assert sorted(bound) == sorted(parameter_names())


def test_ui_widgets_are_set_up_as_the_module_expects(panel):
    from VISTA3DSlicerLib.model import DEVICES, PRECISIONS

    assert child(panel, "inputVolumeSelector").nodeTypes == ["vtkMRMLScalarVolumeNode"]
    output = child(panel, "outputSegmentationSelector")
    assert output.nodeTypes == ["vtkMRMLSegmentationNode"]
    assert output.property("addEnabled") is True and output.noneEnabled
    assert "everything" in child(panel, "labelsLineEdit").placeholderText()
    assert child(panel, "advancedCollapsibleButton").collapsed
    assert not child(panel, "inputsCollapsibleButton").collapsed
    for name, choices in (("deviceComboBox", DEVICES), ("precisionComboBox", PRECISIONS)):
        combo = child(panel, name)
        assert [combo.itemText(i) for i in range(combo.count())] == list(choices)


def test_panel_renders(panel, tmp_path):
    from PySide6.QtWidgets import QApplication

    panel.resize(380, panel.sizeHint().height())
    panel.show()
    QApplication.processEvents()
    image = panel.grab().toImage()
    assert not image.isNull() and image.width() >= 300 and image.height() >= 100
    # Not a blank rectangle: the widgets were painted.
    assert len({image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}) > 10
    for path in (tmp_path / "vista3d_panel.png", os.environ.get("VISTA3D_PANEL_RENDER")):
        if path:
            assert image.save(str(path))


# ------------------------------------------------------------------------------ slicer_adapter


class StandInMatrix:
    def __init__(self):
        self.elements = np.eye(4)


class StandInImageData:
    def __init__(self, components: int, points: int):
        self.components, self.points = components, points

    def GetNumberOfScalarComponents(self):
        return self.components

    def GetNumberOfPoints(self):
        return self.points


class StandInVolumeNode:
    """Holds voxels as Slicer does, ``[k, j, i]``."""

    def __init__(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, class_name="vtkMRMLScalarVolumeNode",
                 components=1):
        self.array_kji, self.ijk_to_ras, self.class_name = array_kji, ijk_to_ras, class_name
        self.image_data = StandInImageData(components, array_kji.size)

    def GetName(self):
        return "CT"

    def GetClassName(self):
        return self.class_name

    def GetImageData(self):
        return self.image_data

    def GetIJKToRASMatrix(self, matrix: StandInMatrix):
        matrix.elements = self.ijk_to_ras.copy()


@pytest.fixture
def adapter(monkeypatch):
    """slicer_adapter with stand-in ``slicer`` and ``vtk`` modules (arrayFromVolume's contract)."""
    util = types.SimpleNamespace(arrayFromVolume=lambda node: node.array_kji,
                                 arrayFromVTKMatrix=lambda matrix: matrix.elements.copy())
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(util=util))
    monkeypatch.setitem(sys.modules, "vtk", types.SimpleNamespace(vtkMatrix4x4=StandInMatrix))
    from VISTA3DSlicerLib import slicer_adapter

    return slicer_adapter


def test_volume_node_becomes_an_ijk_image(adapter):
    array_kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # 6 x 5 x 4 voxels (i, j, k)
    ijk_to_ras = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    node = StandInVolumeNode(array_kji, ijk_to_ras)

    image = adapter.image_from_volume_node(node)

    assert image.shape == (6, 5, 4)
    assert image.array[5, 1, 3] == array_kji[3, 1, 5]
    np.testing.assert_array_equal(image.affine, ijk_to_ras)
    array_kji[3, 1, 5] = -1  # the image is a copy, not a view of Slicer's voxels
    assert image.array[5, 1, 3] != -1


@pytest.mark.parametrize("class_name, components", [
    ("vtkMRMLVectorVolumeNode", 3),
    ("vtkMRMLMultiVolumeNode", 10),
    ("vtkMRMLScalarVolumeNode", 2),
    ("vtkMRMLDiffusionTensorVolumeNode", 1),
])
def test_non_scalar_volumes_are_refused(adapter, class_name, components):
    from VISTA3DSlicerLib.errors import VISTA3DError

    node = StandInVolumeNode(np.zeros((2, 3, 4)), np.eye(4), class_name, components)
    with pytest.raises(VISTA3DError, match="not a single-channel 3D volume"):
        adapter.image_from_volume_node(node)


def test_missing_volume_is_a_user_error(adapter):
    from VISTA3DSlicerLib.errors import VISTA3DError

    with pytest.raises(VISTA3DError, match="No input volume"):
        adapter.image_from_volume_node(None)


def test_consecutive_labels_numbers_present_labels_in_order(adapter):
    labelmap = np.array([[[0, 117, 3], [3, 0, 1]]], dtype=np.uint8)
    assert adapter.consecutive_labels(labelmap, [1, 3, 117]).tolist() == [[[0, 3, 2], [2, 0, 1]]]
