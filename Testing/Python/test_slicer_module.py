"""Checks of the Slicer module that need no Slicer.

- ``VISTA3DSlicer.py`` must import in a Slicer where none of VISTA3D's packages are installed
  yet (Slicer imports every module at start-up; the module installs them on first use).
- The panel's ``.ui`` file must load and hold every widget the module looks up, bound to the
  parameter node's fields; it is loaded with PySide6's ``QUiLoader`` and stand-ins for the
  Slicer (CTK, MRML) widget classes, and rendered to a PNG for a look (with
  ``VISTA3D_PANEL_RENDER=Resources/Screenshots/panel.png``, the README's picture of the panel).
- ``slicer_adapter``'s array conventions, with stand-in volume nodes.

What needs a real Slicer (MRML nodes, segment import, the parameter node binding) is in the
module's own self-test, ``VISTA3DSlicerTest``.
"""

from __future__ import annotations

import ast
import functools
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

from VISTA3DSlicerLib.ct_check import MODALITY_TITLES
from VISTA3DSlicerLib.models import MODELS

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "VISTA3DSlicer"
MODULE_FILE = MODULE_DIR / "VISTA3DSlicer.py"
#: The panel's sections (Qt), imported only by the module file.
WIDGETS_DIR = MODULE_DIR / "VISTA3DSlicerWidgets"
UI_FILE = REPO / "Resources" / "UI" / "VISTA3DSlicer.ui"

#: Top-level packages Slicer itself provides to a scripted module.
SLICER_PROVIDED = {"slicer", "qt", "ctk", "vtk"}
#: Packages the module installs on first use: none of them may be needed to import it.
INSTALLED_ON_DEMAND = ["torch", "monai", "SimpleITK", "nibabel", "skimage", "slicerio", "nrrd",
                       "safetensors", "filelock", "requests", "zstandard", "tqdm", "PIL", "segment_anything", "psutil",
                       "packaging"]


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def panel_trees() -> list[ast.Module]:
    """The module file and the files of its panel sections."""
    return [module_tree()] + [ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
                              for path in sorted(WIDGETS_DIR.glob("*.py"))]


def module_level_imports(tree: ast.Module, in_package: bool = False) -> list[str]:
    """Dotted names imported when the module is imported: its body and any if/try/with blocks,
    not function or class bodies. Imports relative to the package are left out ``in_package``."""
    names = []
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if in_package and node.level:
                continue
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
    """Every ``<...>.ui.<name>`` and ``ui.<name>`` the module and its panel sections use."""
    return {
        node.attr
        for tree in panel_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and (
            isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
            or isinstance(node.value, ast.Name) and node.value.id == "ui")
    }


def class_members(tree: ast.Module, class_name: str) -> set[str]:
    """The methods of ``class_name`` and the attributes its methods assign to ``self``."""
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    members = {node.name for node in cls.body if isinstance(node, ast.FunctionDef)}
    members |= {target.attr for node in ast.walk(cls) if isinstance(node, (ast.Assign, ast.AnnAssign))
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self"}
    return members


def attributes_used_on(name: str) -> set[str]:
    """Every ``<x>`` of ``name.<x>`` and ``<...>.name.<x>`` in the panel sections (``panel.ui``,
    ``self.panel.showProgress``, ``panel.logic.export``)."""
    return {
        node.attr
        for tree in panel_trees()[1:]
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and (
            isinstance(node.value, ast.Name) and node.value.id == name
            or isinstance(node.value, ast.Attribute) and node.value.attr == name)
    }


# ------------------------------------------------------------------------------ module imports


def test_the_panel_sections_use_only_what_the_widget_and_the_logic_have():
    """The sections run only inside Slicer's GUI: a renamed Widget or Logic member would first fail
    there, so every ``panel.<x>`` and ``panel.logic.<x>`` they use is checked against the classes."""
    tree = module_tree()
    widget = class_members(tree, "VISTA3DSlicerWidget") | {"addObserver", "parent"}  # VTKObservationMixin, Slicer
    used = attributes_used_on("panel")
    assert {"ui", "logic", "parameters", "showProgress", "updateButtons"} <= used
    assert sorted(used - widget) == []
    logic = class_members(tree, "VISTA3DSlicerLogic")
    used_on_logic = attributes_used_on("logic")
    assert {"segmentVolumes", "updateSegmentFromPoints", "downloadWeights"} <= used_on_logic
    assert sorted(used_on_logic - logic) == []


def test_module_imports_only_what_slicer_has_at_start_up():
    imports = module_level_imports(module_tree()) + [
        name for tree in panel_trees()[1:] for name in module_level_imports(tree, in_package=True)]
    allowed_roots = set(sys.stdlib_module_names) | SLICER_PROVIDED | {"VISTA3DSlicerLib", "VISTA3DSlicerWidgets"}
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
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr


def test_importing_the_whole_library_loads_no_torch_or_monai():
    """Slicer imports the module (and so the library) at every start-up: with torch and monai
    installed, importing every VISTA3DSlicerLib module must still not load them."""
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import VISTA3DSlicerLib
        names = [m.name for m in pkgutil.iter_modules(VISTA3DSlicerLib.__path__)]
        for name in names:
            importlib.import_module("VISTA3DSlicerLib." + name)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "segment_anything"))
        print(len(names), heavy)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 15  # every module was really imported


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


def test_the_module_checks_the_one_requirements_list_the_package_is_built_from():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]
    library = MODULE_DIR / "VISTA3DSlicerLib"
    assert dynamic["dependencies"]["file"] == [str((library / "requirements.txt").relative_to(REPO))]
    assert dynamic["optional-dependencies"]["openvino"]["file"] == [
        str((library / "requirements-openvino.txt").relative_to(REPO))]
    assert "dependencies" in pyproject["project"]["dynamic"] and "dependencies" not in pyproject["project"]
    # What the module installs on demand can be imported by these names (the import test blocks them).
    from VISTA3DSlicerLib.dependencies import requirements

    import_names = {"scikit-image": "skimage", "pynrrd": "nrrd", "pillow": "PIL", "segment-anything": "segment_anything"}
    names = {requirement.split(">")[0].split("<")[0].split("=")[0] for requirement in requirements()}
    assert {import_names.get(name, name) for name in names} - {"numpy"} == set(INSTALLED_ON_DEMAND)
    # make reinstalls when the list changes.
    assert "VISTA3DSlicer/VISTA3DSlicerLib/requirements.txt" in (REPO / "Makefile").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ the .ui file

#: The panel's widgets and their classes: the contract between the .ui and VISTA3DSlicer.py.
PANEL_WIDGETS = {
    "VISTA3DSlicer": "qMRMLWidget",
    # 1. Input and output
    "inputsCollapsibleButton": "ctkCollapsibleButton",
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "ctWarningLabel": "QLabel",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    # 2. Model
    "modelCollapsibleButton": "ctkCollapsibleButton",
    "modelComboBox": "QComboBox",
    "modelInfoLabel": "QLabel",
    "modalityComboBox": "QComboBox",
    "runOnComboBox": "QComboBox",
    "serverUrlLineEdit": "QLineEdit",
    "serverTokenLineEdit": "QLineEdit",
    "testConnectionButton": "QPushButton",
    "serverInfoLabel": "QLabel",
    "deviceComboBox": "QComboBox",
    "deviceInfoLabel": "QLabel",
    "precisionComboBox": "QComboBox",
    "runtimeComboBox": "QComboBox",
    "weightsModelComboBox": "QComboBox",
    "weightsStatusLabel": "QLabel",
    "downloadWeightsButton": "QPushButton",
    "browseWeightsButton": "QPushButton",
    "openWeightsFolderButton": "QPushButton",
    "deleteWeightsButton": "QPushButton",
    # 3. Automatic segmentation
    "autoCollapsibleButton": "ctkCollapsibleButton",
    "labelSearchBox": "ctkSearchBox",
    "everythingCheckBox": "QCheckBox",
    "labelTree": "QTreeWidget",
    "selectionSummaryLabel": "QLabel",
    "labelsLineEdit": "QLineEdit",
    "applyButton": "QPushButton",
    # 4. Correct with clicks
    "interactiveCollapsibleButton": "ctkCollapsibleButton",
    "targetSegmentSelector": "qMRMLSegmentSelectorWidget",
    "positivePointButton": "QPushButton",
    "negativePointButton": "QPushButton",
    "undoButton": "QPushButton",
    "redoButton": "QPushButton",
    "clearPointsButton": "QPushButton",
    "interactiveStatusLabel": "QLabel",
    # 5. Zero-shot
    "zeroShotCollapsibleButton": "ctkCollapsibleButton",
    "zeroShotNameLineEdit": "QLineEdit",
    "newZeroShotSegmentButton": "QPushButton",
    "supervoxelsWholeVolumeCheckBox": "QCheckBox",
    "computeSupervoxelsButton": "QPushButton",
    "snapSlider": "ctkSliderWidget",
    "showSupervoxelsCheckBox": "QCheckBox",
    # 6. Batch
    "batchCollapsibleButton": "ctkCollapsibleButton",
    "batchVolumeList": "QListWidget",
    "batchOutputPathLineEdit": "ctkPathLineEdit",
    "batchSelectAllCheckBox": "QCheckBox",
    "batchRunButton": "QPushButton",
    "batchReportLabel": "QLabel",
    # 7. Export
    "exportCollapsibleButton": "ctkCollapsibleButton",
    "exportSegmentationSelector": "qMRMLNodeComboBox",
    "exportFormatComboBox": "QComboBox",
    "exportPathLineEdit": "ctkPathLineEdit",
    "exportButton": "QPushButton",
    "exportDicomButton": "QPushButton",
    # 8. Status, outside the sections
    "progressBar": "QProgressBar",
    "cancelButton": "QPushButton",
    "statusLabel": "QLabel",
}

#: The sections in the order of the work: (name, title, collapsed, the widgets in it).
PANEL_SECTIONS = [
    ("inputsCollapsibleButton", "Input and output", False,
     ["inputVolumeSelector", "ctWarningLabel", "outputSegmentationSelector"]),
    ("modelCollapsibleButton", "Model", False,
     ["modelComboBox", "modelInfoLabel", "modalityComboBox", "runOnComboBox", "serverUrlLineEdit",
      "serverTokenLineEdit", "testConnectionButton", "serverInfoLabel", "deviceComboBox", "deviceInfoLabel", "precisionComboBox", "runtimeComboBox", "weightsModelComboBox",
      "weightsStatusLabel", "downloadWeightsButton", "browseWeightsButton", "openWeightsFolderButton",
      "deleteWeightsButton"]),
    ("autoCollapsibleButton", "Automatic segmentation", False,
     ["labelSearchBox", "everythingCheckBox", "labelTree", "selectionSummaryLabel", "labelsLineEdit", "applyButton"]),
    ("interactiveCollapsibleButton", "Correct with clicks", False,
     ["targetSegmentSelector", "positivePointButton", "negativePointButton", "undoButton", "redoButton",
      "clearPointsButton", "interactiveStatusLabel"]),
    ("zeroShotCollapsibleButton", "Zero-shot: structures outside the 127 classes", True,
     ["zeroShotNameLineEdit", "newZeroShotSegmentButton", "supervoxelsWholeVolumeCheckBox",
      "computeSupervoxelsButton", "snapSlider", "showSupervoxelsCheckBox"]),
    ("batchCollapsibleButton", "Batch: every loaded volume", True,
     ["batchVolumeList", "batchOutputPathLineEdit", "batchSelectAllCheckBox", "batchRunButton", "batchReportLabel"]),
    ("exportCollapsibleButton", "Export", True,
     ["exportSegmentationSelector", "exportFormatComboBox", "exportPathLineEdit", "exportButton",
      "exportDicomButton"]),
]

#: Widgets that sit side by side, in this order, in one horizontal row.
PANEL_ROWS = [
    ["downloadWeightsButton", "browseWeightsButton", "openWeightsFolderButton", "deleteWeightsButton"],
    ["labelsLabel", "labelsLineEdit"],
    ["zeroShotNameLabel", "zeroShotNameLineEdit"],
    ["positivePointButton", "negativePointButton", "undoButton", "redoButton", "clearPointsButton"],
    ["batchOutputLabel", "batchOutputPathLineEdit"],
    ["batchSelectAllCheckBox", "batchRunButton"],
    ["exportButton", "exportDicomButton"],
    ["progressBar", "cancelButton"],
]

#: The widgets bound to the parameter node, and the field each is bound to (SlicerParameterName).
PARAMETER_BINDINGS = {
    "inputVolumeSelector": "inputVolume",
    "outputSegmentationSelector": "outputSegmentation",
    "labelsLineEdit": "labels",
    "modelComboBox": "model",
    "modalityComboBox": "modality",
    "deviceComboBox": "device",
    "precisionComboBox": "precision",
    "runtimeComboBox": "runtime",
    "supervoxelsWholeVolumeCheckBox": "supervoxelsWholeVolume",
    "snapSlider": "snapFraction",
    "exportFormatComboBox": "exportFormat",
}

#: The fixed items of the combo boxes (the parameter values, so never translated).
COMBO_ITEMS = {
    "modelComboBox": list(MODELS),  # every model of models.MODELS, by its --model name
    "modalityComboBox": ["auto", *MODALITY_TITLES],
    "deviceComboBox": ["auto", "cpu", "cuda"],
    "precisionComboBox": ["fp32", "fp16", "bf16"],
    "runtimeComboBox": ["torch", "openvino"],
    "exportFormatComboBox": [".nii.gz", ".nrrd", ".seg.nrrd"],
}

SEGMENTATION = ["vtkMRMLSegmentationNode"]
#: Properties the module relies on, as the loaded widgets report them.
PANEL_PROPERTIES = {
    "inputVolumeSelector": {"nodeTypes": ["vtkMRMLScalarVolumeNode"], "showChildNodeTypes": False,
                            "addEnabled": False, "removeEnabled": False, "noneEnabled": False},
    "ctWarningLabel": {"wordWrap": True, "text": ""},
    "outputSegmentationSelector": {"nodeTypes": SEGMENTATION, "addEnabled": True, "renameEnabled": True,
                                   "removeEnabled": False, "noneEnabled": True,
                                   "noneDisplay": "Create new segmentation"},
    "weightsStatusLabel": {"wordWrap": True},
    "downloadWeightsButton": {"text": "Download"},
    "browseWeightsButton": {"text": "Use a file..."},
    "openWeightsFolderButton": {"text": "Open folder"},
    "deleteWeightsButton": {"text": "Delete"},
    "labelSearchBox": {"placeholderText": "Search structures (name or ID)"},
    "everythingCheckBox": {"text": "Everything (117 structures)"},
    "labelTree": {"headerHidden": True, "columnCount": 1},
    "selectionSummaryLabel": {"wordWrap": True},
    "applyButton": {"text": "Segment"},
    "targetSegmentSelector": {"noneEnabled": False, "editEnabled": False},
    "positivePointButton": {"text": "+ point", "checkable": True},
    "negativePointButton": {"text": "\u2212 point", "checkable": True},
    "undoButton": {"text": "Undo"},
    "redoButton": {"text": "Redo"},
    "clearPointsButton": {"text": "Clear"},
    "interactiveStatusLabel": {"wordWrap": True},
    "zeroShotNameLineEdit": {"placeholderText": "Name of the new structure, e.g. left psoas abscess"},
    "newZeroShotSegmentButton": {"text": "New zero-shot segment"},
    "supervoxelsWholeVolumeCheckBox": {"text": "Whole volume (GPU recommended); otherwise around the points"},
    "computeSupervoxelsButton": {"text": "Compute supervoxels"},
    "snapSlider": {"minimum": 0.0, "maximum": 1.0, "singleStep": 0.05, "decimals": 2, "value": 0.0},
    "showSupervoxelsCheckBox": {"text": "Show supervoxel boundaries"},
    "batchSelectAllCheckBox": {"text": "All"},
    "batchRunButton": {"text": "Segment checked volumes"},
    "batchReportLabel": {"wordWrap": True},
    "exportSegmentationSelector": {"nodeTypes": SEGMENTATION, "addEnabled": False, "noneEnabled": False},
    "exportButton": {"text": "Export labelmap + colour table"},
    "exportDicomButton": {"text": "DICOM SEG..."},
    "progressBar": {"textVisible": True, "format": "%p%"},
    "cancelButton": {"text": "Cancel", "enabled": False},
    "statusLabel": {"wordWrap": True},
}

#: Declared <extends> of the Slicer classes (what Designer and Slicer's uic build on).
CUSTOM_WIDGET_BASES = {
    "ctkCollapsibleButton": "QWidget",
    "ctkPathLineEdit": "QWidget",
    "ctkSearchBox": "QLineEdit",
    "ctkSliderWidget": "QWidget",
    "qMRMLNodeComboBox": "QWidget",
    "qMRMLSegmentSelectorWidget": "qMRMLWidget",
    "qMRMLWidget": "QWidget",
}

#: Width of Slicer's module panel the .ui has to fit (pixels).
PANEL_WIDTH = 400

#: Properties holding text the user reads, which Slicer's translation tools must pick up.
TRANSLATABLE_PROPERTIES = {"text", "toolTip", "placeholderText", "noneDisplay", "title", "windowTitle"}


def ui_root() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def ui_widgets(root: ElementTree.Element) -> dict[str, ElementTree.Element]:
    return {widget.get("name"): widget for widget in root.iter("widget")}


def ui_ancestors(root: ElementTree.Element) -> dict[str, list[ElementTree.Element]]:
    """For each named widget or layout: its enclosing elements, innermost first."""
    ancestors: dict[str, list[ElementTree.Element]] = {}

    def walk(element, chain):
        if element.tag in ("widget", "layout", "spacer") and element.get("name"):
            ancestors[element.get("name")] = list(reversed(chain))
        for sub in element:
            walk(sub, chain + [element])

    walk(root, [])
    return ancestors


def enclosing_section(root, name: str):
    for element in ui_ancestors(root)[name]:
        if element.tag == "widget" and element.get("class") == "ctkCollapsibleButton":
            return element.get("name")
    return None


def test_ui_declares_its_custom_widgets_and_connects_existing_widgets():
    root = ui_root()
    names = set(ui_widgets(root))
    custom = {c.findtext("class"): c for c in root.iter("customwidget")}
    used_classes = {widget.get("class") for widget in root.iter("widget")}
    # Every class that is not Qt's own is declared, with the header Slicer's uic includes.
    assert {c for c in used_classes if not c.startswith("Q")} <= set(custom)
    assert set(custom) == {c for c in used_classes if not c.startswith("Q")} | {"qMRMLWidget"}
    for class_name, declaration in custom.items():
        assert declaration.findtext("header") == f"{class_name}.h"
        assert declaration.findtext("extends") == CUSTOM_WIDGET_BASES[class_name], class_name
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in names and connection.findtext("receiver") in names
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    scene_users = {w.get("name") for w in root.iter("widget")
                   if w.get("class") in ("qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget")}
    assert receivers == scene_users, "every node selector and segment selector needs the scene"
    assert all(c.findtext("sender") == "VISTA3DSlicer" and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
               for c in root.iter("connection"))


def test_ui_declares_every_widget_of_the_panel_with_its_class():
    widgets = ui_widgets(ui_root())
    assert {name: widgets[name].get("class") for name in PANEL_WIDGETS if name in widgets} == PANEL_WIDGETS


def test_ui_sections_follow_the_order_of_the_work():
    root = ui_root()
    top_layout = ui_widgets(root)["VISTA3DSlicer"].find("layout")
    assert top_layout.get("class") == "QVBoxLayout"
    items = [item[0] for item in top_layout.findall("item")]
    sections = [e.get("name") for e in items if e.get("class") == "ctkCollapsibleButton"]
    assert sections == [name for name, *_ in PANEL_SECTIONS]
    for name, _, _, contents in PANEL_SECTIONS:
        for widget_name in contents:
            assert enclosing_section(root, widget_name) == name, widget_name
    # The status area follows the sections, outside them (always visible), and a spacer ends the panel.
    assert [e.get("name") for e in items[len(sections):]][-2] == "statusLabel"
    assert items[-1].tag == "spacer" and items[-1].find("property/enum").text == "Qt::Vertical"
    for name in ("progressBar", "cancelButton", "statusLabel"):
        assert enclosing_section(root, name) is None


def test_ui_puts_rows_of_controls_side_by_side():
    ancestors = ui_ancestors(ui_root())
    for row in PANEL_ROWS:
        layouts = {id(ancestors[name][1]) for name in row}  # [0] is the <item>, [1] its layout
        assert len(layouts) == 1, f"{row} are not in one row"
        layout = ancestors[row[0]][1]
        assert layout.get("class") == "QHBoxLayout"
        assert [item[0].get("name") for item in layout.findall("item")][:len(row)] == row


def test_ui_texts_are_translatable_and_controls_explain_themselves():
    root = ui_root()
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") in TRANSLATABLE_PROPERTIES and prop.find("string") is not None:
                assert prop.find("string").attrib == {}, f"{widget.get('name')}.{prop.get('name')} is not translatable"
            if prop.get("name") == "SlicerParameterName":  # a translated field name would break the binding
                assert prop.find("string").get("notr") == "true", widget.get("name")
    inert = {"QLabel", "QWidget", "qMRMLWidget", "ctkCollapsibleButton"}
    for name, widget in ui_widgets(root).items():
        if widget.get("class") not in inert:
            tip = widget.findtext("property[@name='toolTip']/string") or ""
            assert len(tip) > 15, f"{name} has no useful tooltip"
    snap_tip = ui_widgets(root)["snapSlider"].findtext("property[@name='toolTip']/string")
    assert "0 turns snapping off" in snap_tip


def test_ui_export_path_asks_where_to_save_a_file():
    filters = ui_widgets(ui_root())["exportPathLineEdit"].findtext("property[@name='filters']/set")
    # Files and Writable: ctkPathLineEdit's "..." opens a save-file dialog.
    assert set(filters.split("|")) == {"ctkPathLineEdit::Files", "ctkPathLineEdit::Writable"}


@pytest.fixture(scope="module")
def qt_application():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed (pip install PySide6-Essentials)")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


@functools.cache
def slicer_widget_stand_ins() -> tuple[type, ...]:
    """Plain Qt classes named like the Slicer classes the .ui uses, for QUiLoader to build.

    Made once and kept (QUiLoader does not keep the classes alive; a class collected by the
    garbage collector makes the loader fall back to the base class).

    They take the properties the .ui sets (as Slicer's classes do) and draw roughly as Slicer
    draws them, so a rendering of the panel looks like the panel in Slicer. The ``add…``
    methods stand in for what the MRML scene would show (nodes, segments).
    """
    from PySide6.QtCore import Property, QRect, QSize, Qt, Signal, Slot
    from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap
    from PySide6.QtWidgets import (QAbstractSpinBox, QComboBox, QDoubleSpinBox, QGridLayout, QHBoxLayout, QLabel,
                                   QLineEdit, QSizePolicy, QSlider, QStyle, QStyleOptionButton, QStylePainter,
                                   QToolButton, QWidget)

    QWIDGETSIZE_MAX = (1 << 24) - 1

    def flag(name: str, default: bool, changed=None):
        """A bool Qt property stored on the instance, calling ``changed(self)`` when set."""
        attribute = f"_{name}"

        def setter(self, value: bool) -> None:
            setattr(self, attribute, bool(value))
            if changed:
                changed(self)

        return Property(bool, lambda self: getattr(self, attribute, default), setter)

    def text_property(name: str, default: str = "", changed=None):
        attribute = f"_{name}"

        def setter(self, value: str) -> None:
            setattr(self, attribute, value)
            if changed:
                changed(self)

        return Property(str, lambda self: getattr(self, attribute, default), setter)

    def swatch(color) -> QIcon:
        pixmap = QPixmap(12, 12)
        pixmap.fill(QColor(*color))
        return QIcon(pixmap)

    class qMRMLWidget(QWidget):
        mrmlSceneChanged = Signal("vtkMRMLScene*")

        @Slot("vtkMRMLScene*")
        def setMRMLScene(self, scene) -> None:
            self._scene = scene

    class ctkCollapsibleButton(QWidget):
        """A full-width button with an arrow and the title; the contents below it, hidden when collapsed."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._text = ""
            self._collapsed = False
            self._folded: list[QWidget] = []
            self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
            self._apply()

        def header_height(self) -> int:
            return self.fontMetrics().height() + 10

        def _apply(self) -> None:
            self.setContentsMargins(0, self.header_height(), 0, 0)
            contents = [w for w in self.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly)
                        if not w.isWindow()]
            if self._collapsed:
                for widget in contents:
                    if not widget.isHidden():
                        self._folded.append(widget)
                        widget.hide()
                self.setMaximumHeight(self.header_height())
            else:
                for widget in self._folded:
                    widget.show()
                self._folded = []
                self.setMaximumHeight(QWIDGETSIZE_MAX)
            self.update()

        def showEvent(self, event) -> None:  # the contents exist only after the properties are set
            self._apply()
            super().showEvent(event)

        def minimumSizeHint(self) -> QSize:
            header = QSize(self.fontMetrics().horizontalAdvance(self._text) + 40, self.header_height())
            return super().minimumSizeHint().expandedTo(header)

        def mousePressEvent(self, event) -> None:
            if event.position().y() < self.header_height():
                self._set_collapsed(not self._collapsed)

        def paintEvent(self, event) -> None:
            painter = QStylePainter(self)
            option = QStyleOptionButton()
            option.initFrom(self)
            option.rect = QRect(0, 0, self.width(), self.header_height())
            option.state |= QStyle.StateFlag.State_Raised
            painter.drawControl(QStyle.ControlElement.CE_PushButtonBevel, option)
            arrow = QStyleOptionButton()
            arrow.initFrom(self)
            arrow.rect = QRect(6, (self.header_height() - 10) // 2, 10, 10)
            painter.drawPrimitive(QStyle.PrimitiveElement.PE_IndicatorArrowRight if self._collapsed
                                  else QStyle.PrimitiveElement.PE_IndicatorArrowDown, arrow)
            painter.drawText(QRect(22, 0, self.width() - 28, self.header_height()),
                             Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, self._text)

        def _set_text(self, text: str) -> None:
            self._text = text
            self.update()

        def _set_collapsed(self, collapsed: bool) -> None:
            self._collapsed = bool(collapsed)
            self._apply()

        text = Property(str, lambda self: self._text, _set_text)
        collapsed = Property(bool, lambda self: self._collapsed, _set_collapsed)

    class qMRMLNodeComboBox(QComboBox):
        """Shows what the scene would: its nodes (``addNode``), and the "none" entry when enabled."""

        def __init__(self, parent=None):
            super().__init__(parent)
            self._node_types: list[str] = []
            self._nodes: list[str] = []
            self._update()

        def _update(self) -> None:
            current = self.currentText()
            self.clear()
            if self.noneEnabled:
                self.addItem(self.noneDisplay)
            self.addItems(self._nodes)
            if current and self.findText(current) >= 0:
                self.setCurrentIndex(self.findText(current))

        def addNode(self, name: str, select: bool = True) -> None:
            self._nodes.append(name)
            self._update()
            if select:
                self.setCurrentIndex(self.findText(name))

        def _set_node_types(self, node_types: list[str]) -> None:
            self._node_types = list(node_types)

        nodeTypes = Property(list, lambda self: self._node_types, _set_node_types)
        noneDisplay = text_property("noneDisplay", "None", _update)
        baseName = text_property("baseName")
        noneEnabled = flag("noneEnabled", False, _update)
        addEnabled = flag("addEnabled", True)
        removeEnabled = flag("removeEnabled", True)
        editEnabled = flag("editEnabled", False)
        renameEnabled = flag("renameEnabled", False)
        showHidden = flag("showHidden", False)
        showChildNodeTypes = flag("showChildNodeTypes", True)
        selectNodeUponCreation = flag("selectNodeUponCreation", True)

        @Slot("vtkMRMLScene*")
        def setMRMLScene(self, scene) -> None:
            self._scene = scene

    class qMRMLSegmentSelectorWidget(qMRMLWidget):
        """As Slicer lays it out: the segmentation selector, and under it "Segment:" and the segments."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QGridLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.setHorizontalSpacing(4)
            layout.setVerticalSpacing(2)
            self.segmentationSelector = qMRMLNodeComboBox(self)
            self.segmentationSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
            layout.addWidget(self.segmentationSelector, 0, 0, 1, 2)
            self.segmentLabel = QLabel("Segment: ", self)
            layout.addWidget(self.segmentLabel, 1, 0)
            self.segmentComboBox = QComboBox(self)
            self.segmentComboBox.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            layout.addWidget(self.segmentComboBox, 1, 1)

        def addSegment(self, name: str, color=(128, 128, 128), select: bool = True) -> None:
            self.segmentComboBox.addItem(swatch(color), name)
            if select:
                self.segmentComboBox.setCurrentIndex(self.segmentComboBox.count() - 1)

        def _show_selector(self) -> None:
            self.segmentationSelector.setVisible(self.segmentationNodeSelectorVisible)

        noneEnabled = flag("noneEnabled", False)
        editEnabled = flag("editEnabled", False)
        multiSelection = flag("multiSelection", False)
        horizontalLayout = flag("horizontalLayout", False)
        segmentationNodeSelectorVisible = flag("segmentationNodeSelectorVisible", True, _show_selector)

        @Slot("vtkMRMLScene*")
        def setMRMLScene(self, scene) -> None:
            self.segmentationSelector.setMRMLScene(scene)

    class ctkSearchBox(QLineEdit):
        """A line edit with a magnifying glass in front and a clear button."""

        def __init__(self, parent=None):
            super().__init__(parent)
            pixmap = QPixmap(16, 16)
            pixmap.fill(Qt.GlobalColor.transparent)
            painter = QPainter(pixmap)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(QPen(self.palette().placeholderText().color(), 1.6))
            painter.drawEllipse(2, 2, 8, 8)
            painter.drawLine(10, 10, 14, 14)
            painter.end()
            self.addAction(QIcon(pixmap), QLineEdit.ActionPosition.LeadingPosition)
            self.setClearButtonEnabled(True)

        showSearchIcon = flag("showSearchIcon", True)

    class ctkSliderWidget(QWidget):
        """A slider and a spin box side by side, holding one double value."""

        valueChanged = Signal(float)

        def __init__(self, parent=None):
            super().__init__(parent)
            self._minimum, self._maximum, self._step, self._page, self._value = 0.0, 99.0, 1.0, 10.0, 0.0
            layout = QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.slider = QSlider(Qt.Orientation.Horizontal, self)
            self.spinBox = QDoubleSpinBox(self)
            self.spinBox.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.UpDownArrows)
            layout.addWidget(self.slider, 1)
            layout.addWidget(self.spinBox)
            self.slider.valueChanged.connect(lambda tick: self.setValue(self._minimum + tick * self._step))
            self.spinBox.valueChanged.connect(self.setValue)
            self._sync()

        def _ticks(self, value: float) -> int:
            return round((value - self._minimum) / self._step) if self._step > 0 else 0

        def _sync(self) -> None:
            for widget in (self.slider, self.spinBox):
                widget.blockSignals(True)
            self.spinBox.setRange(self._minimum, self._maximum)
            self.spinBox.setSingleStep(self._step)
            self.spinBox.setValue(self._value)
            self.slider.setRange(0, self._ticks(self._maximum))
            self.slider.setPageStep(max(1, self._ticks(self._minimum + self._page)))
            self.slider.setValue(self._ticks(self._value))
            for widget in (self.slider, self.spinBox):
                widget.blockSignals(False)

        def setValue(self, value: float) -> None:
            value = min(max(float(value), self._minimum), self._maximum)
            if value != self._value:
                self._value = value
                self._sync()
                self.valueChanged.emit(value)

        def _setter(attribute: str):
            def set_(self, value: float) -> None:
                setattr(self, attribute, float(value))
                self._value = min(max(self._value, self._minimum), self._maximum)
                self._sync()
            return set_

        def _set_decimals(self, decimals: int) -> None:
            self.spinBox.setDecimals(decimals)
            self._sync()

        minimum = Property(float, lambda self: self._minimum, _setter("_minimum"))
        maximum = Property(float, lambda self: self._maximum, _setter("_maximum"))
        singleStep = Property(float, lambda self: self._step, _setter("_step"))
        pageStep = Property(float, lambda self: self._page, _setter("_page"))
        decimals = Property(int, lambda self: self.spinBox.decimals(), _set_decimals)
        value = Property(float, lambda self: self._value, setValue)

    class ctkPathLineEdit(QWidget):
        """A line edit for the path and a "..." button that browses."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.setSpacing(2)
            self.lineEdit = QLineEdit(self)
            self.browseButton = QToolButton(self)
            self.browseButton.setText("...")
            layout.addWidget(self.lineEdit, 1)
            layout.addWidget(self.browseButton)
            self._name_filters: list[str] = []

        def _set_name_filters(self, name_filters: list[str]) -> None:
            self._name_filters = list(name_filters)

        # (No "filters": a Python class cannot declare the Qt flags type the .ui's value names,
        # so the loader warns that it cannot read it; the test reads it from the XML.)
        currentPath = Property(str, lambda self: self.lineEdit.text(), lambda self, path: self.lineEdit.setText(path))
        nameFilters = Property(list, lambda self: self._name_filters, _set_name_filters)
        showBrowseButton = flag("showBrowseButton", True,
                                lambda self: self.browseButton.setVisible(self.showBrowseButton))

    return (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLSegmentSelectorWidget, ctkSearchBox,
            ctkSliderWidget, ctkPathLineEdit)


def load_panel():
    """The panel as QUiLoader builds it from the .ui, with the stand-ins for Slicer's classes."""
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
    return widget


@pytest.fixture(scope="module")
def panel(qt_application):
    widget = load_panel()
    yield widget
    widget.deleteLater()


def child(panel, name: str):
    from PySide6.QtCore import QObject

    found = panel.findChild(QObject, name)
    assert found is not None, f"the .ui has no widget named {name}"
    return found


def qt_class_name(widget) -> str:
    """The class name Slicer would see (a stand-in's Qt class name carries its Python scope)."""
    return widget.metaObject().className().rsplit(".", 1)[-1]


def test_ui_has_every_widget_the_module_uses(panel):
    from PySide6.QtCore import QObject

    used = ui_names_used_by_module()
    assert {"applyButton", "progressBar"} <= used
    missing = sorted(name for name in used if panel.findChild(QObject, name) is None)
    assert missing == [], f"VISTA3DSlicer.py uses self.ui.{missing} that the .ui does not have"


def test_ui_loads_every_widget_of_the_panel_with_its_class(panel):
    assert panel.objectName() == "VISTA3DSlicer"
    assert {name: qt_class_name(panel if name == "VISTA3DSlicer" else child(panel, name))
            for name in PANEL_WIDGETS} == PANEL_WIDGETS


def test_ui_gives_the_scene_to_every_node_and_segment_selector(panel):
    from PySide6.QtCore import SIGNAL
    from PySide6.QtWidgets import QWidget

    # (The segment selector's own segmentation selector gets the scene from it, as in Slicer.)
    selectors = [w for w in panel.findChildren(QWidget)
                 if qt_class_name(w) in ("qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget")
                 and qt_class_name(w.parent()) != "qMRMLSegmentSelectorWidget"]
    assert sorted(w.objectName() for w in selectors) == sorted(
        ["inputVolumeSelector", "outputSegmentationSelector", "targetSegmentSelector", "exportSegmentationSelector"])
    assert panel.receivers(SIGNAL("mrmlSceneChanged(vtkMRMLScene*)")) == len(selectors)


def test_ui_binds_exactly_the_parameters_of_the_spec(panel):
    from PySide6.QtWidgets import QWidget

    bound = {w.objectName(): w.property("SlicerParameterName") for w in panel.findChildren(QWidget)
             if w.property("SlicerParameterName")}
    assert bound == PARAMETER_BINDINGS


def test_ui_binds_one_widget_to_each_parameter(panel):
    from PySide6.QtWidgets import QWidget

    bound = [w.property("SlicerParameterName") for w in panel.findChildren(QWidget)
             if w.property("SlicerParameterName")]
    assert sorted(bound) == sorted(parameter_names())


def test_ui_widgets_are_set_up_as_the_module_expects(panel):
    from VISTA3DSlicerLib.model import DEVICES, PRECISIONS
    from VISTA3DSlicerLib.models import MODELS

    for name, expected in PANEL_PROPERTIES.items():
        widget = child(panel, name)
        actual = {key: widget.property(key) for key in expected}
        if "text" in actual:  # a long check box text may be broken over two lines
            actual["text"] = " ".join(actual["text"].split())
        assert actual == pytest.approx(expected) if name == "snapSlider" else actual == expected, name
    assert "everything" in child(panel, "labelsLineEdit").placeholderText()
    assert child(panel, "applyButton").minimumHeight() >= 28
    assert child(panel, "labelTree").minimumHeight() >= 150
    assert child(panel, "batchVolumeList").minimumHeight() >= 60
    assert "color" in child(panel, "ctWarningLabel").styleSheet()
    for name, choices in COMBO_ITEMS.items():
        combo = child(panel, name)
        assert [combo.itemText(i) for i in range(combo.count())] == choices, name
    assert COMBO_ITEMS["deviceComboBox"] == list(DEVICES)
    assert COMBO_ITEMS["modelComboBox"] == list(MODELS)
    assert COMBO_ITEMS["precisionComboBox"] == list(PRECISIONS)


def test_ui_sections_are_collapsed_as_in_the_spec(panel):
    for name, title, collapsed, _ in PANEL_SECTIONS:
        section = child(panel, name)
        assert (section.property("text"), section.property("collapsed")) == (title, collapsed), name


def grab(widget, width: int = PANEL_WIDTH):
    """Lay the panel out at ``width`` (the height it needs) and render it."""
    from PySide6.QtWidgets import QApplication

    widget.show()
    for _ in range(3):  # word-wrapped labels settle their height after a layout pass
        QApplication.processEvents()
        height = widget.heightForWidth(width) if widget.hasHeightForWidth() else widget.sizeHint().height()
        widget.resize(width, max(height, widget.minimumSizeHint().height()))
    QApplication.processEvents()
    return widget.grab().toImage()


def assert_painted(image) -> None:
    assert not image.isNull() and image.width() >= 300 and image.height() >= 100
    # Not a blank rectangle: the widgets were painted.
    assert len({image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}) > 10


def test_panel_renders(panel, tmp_path):
    image = grab(panel)
    assert_painted(image)
    assert image.save(str(tmp_path / "vista3d_panel_empty.png"))


def fill_like_the_module(panel) -> None:
    """Put in the stand-ins what the module shows at run time: a chest CT loaded, VISTA3D ready on
    a GPU, the kidneys, liver and spleen chosen, a correction under way."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QIcon, QPixmap
    from PySide6.QtWidgets import QListWidgetItem, QTreeWidgetItem

    from VISTA3DSlicerLib import labels
    from VISTA3DSlicerLib.models import MODELS
    from VISTA3DSlicerLib.panel import WEIGHTS_MODELS

    def ui(name: str):
        return child(panel, name)

    ui("inputVolumeSelector").addNode("CT chest")
    ui("ctWarningLabel").hide()  # the module shows it only for a volume that does not look like a CT
    ui("modelComboBox").setCurrentText("vista3d")
    licence = MODELS["vista3d"].licence
    ui("modelInfoLabel").setText(f"132 classes of CT; automatic, points, zero-shot. Licence: {licence.name} "
                                 f"({licence.url}). Commercial use: {licence.commercial_use}.")
    ui("modalityComboBox").setEnabled(False)  # a CT-only model: the module disables it
    ui("runOnComboBox").setCurrentText("this computer")
    for name in ("serverUrlLineEdit", "serverTokenLineEdit", "testConnectionButton"):
        ui(name).setEnabled(False)  # as the module shows them when running on this computer
    ui("serverInfoLabel").hide()
    ui("deviceComboBox").setCurrentText("auto")
    ui("deviceInfoLabel").setText("NVIDIA RTX 4090 \u00b7 21.3 GB free")
    ui("precisionComboBox").setCurrentText("fp32")
    ui("weightsModelComboBox").addItems([model.title for model in WEIGHTS_MODELS])
    ui("weightsStatusLabel").setText("Ready (downloaded): ~/.cache/vista3d/model.pt")
    ui("downloadWeightsButton").setEnabled(False)  # already downloaded

    chosen = {"liver", "spleen", "left kidney", "right kidney"}
    groups = [
        ("Abdominal organs", ["liver", "spleen", "left kidney", "right kidney", "pancreas", "gallbladder"], True),
        ("Thorax", ["left lung upper lobe", "heart", "trachea"], False),
        ("Vessels", ["aorta", "inferior vena cava", "portal vein and splenic vein"], False),
        ("Bones", ["sacrum", "left hip"], False),
        ("Muscles", ["left gluteus maximus", "left iliopsoas"], False),
        ("Tumours and lesions", ["lung tumor", "hepatic tumor"], False),
    ]
    tree = ui("labelTree")
    for group, names, expanded in groups:
        section = QTreeWidgetItem(tree, [group])
        section.setFlags(section.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        ticked = 0
        for name in names:
            info = labels.label_info(labels.find_label(name))
            item = QTreeWidgetItem(section, [f"{info.display_name}  ({info.id})"])
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(0, Qt.CheckState.Checked if name in chosen else Qt.CheckState.Unchecked)
            pixmap = QPixmap(12, 12)
            pixmap.fill(QColor(*info.color))
            item.setIcon(0, QIcon(pixmap))
            ticked += name in chosen
        section.setCheckState(0, Qt.CheckState.PartiallyChecked if 0 < ticked < len(names)
                              else Qt.CheckState.Checked if ticked else Qt.CheckState.Unchecked)
        section.setExpanded(expanded)
    ui("selectionSummaryLabel").setText("4 structures: liver, spleen, left kidney, right kidney")
    ui("labelsLineEdit").setText("liver, spleen, left kidney, right kidney")
    ui("applyButton").setEnabled(True)

    target = ui("targetSegmentSelector")
    target.segmentationSelector.addNode("CT chest segmentation")
    target.addSegment("Liver", labels.label_info(labels.find_label("liver")).color)
    ui("positivePointButton").setChecked(True)
    ui("undoButton").setEnabled(True)
    ui("redoButton").setEnabled(False)
    ui("interactiveStatusLabel").setText(
        "Click in a slice view to add a + point. A: + point, D: \u2212 point, Ctrl+Z / Ctrl+Y: undo / redo.")

    ui("zeroShotNameLineEdit").setText("")
    for name in ("CT chest", "CT abdomen follow-up"):
        item = QListWidgetItem(name, ui("batchVolumeList"))
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if name == "CT chest" else Qt.CheckState.Unchecked)
    ui("exportSegmentationSelector").addNode("CT chest segmentation")
    ui("exportPathLineEdit").currentPath = "~/exports/ct_chest_labels.nii.gz"

    ui("progressBar").setValue(62)
    ui("cancelButton").setEnabled(True)
    ui("statusLabel").setText("Segmenting CT chest: window 5 of 8 \u2026")


def assert_nothing_clipped(panel) -> None:
    """The panel fits Slicer's module panel, and every visible text has the room it needs."""
    from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QLineEdit, QPushButton, QWidget

    assert panel.minimumSizeHint().width() <= PANEL_WIDTH, "the panel is wider than Slicer's module panel"
    for widget in panel.findChildren(QWidget):
        if not widget.isVisible():
            continue
        metrics, name = widget.fontMetrics(), widget.objectName() or qt_class_name(widget.parent())
        if isinstance(widget, QPushButton):  # Fusion pads a button's text by 2 x 6 px at least
            assert metrics.horizontalAdvance(widget.text()) + 12 <= widget.width(), name
        elif isinstance(widget, QComboBox) and widget.currentText():
            assert metrics.horizontalAdvance(widget.currentText()) + 40 <= widget.width(), name
        elif isinstance(widget, QLineEdit) and widget.echoMode() != QLineEdit.EchoMode.Normal:
            continue  # a token's dots scroll like any secret: their width says nothing
        elif isinstance(widget, QLineEdit):
            text = widget.text() or widget.placeholderText()
            icons = 24 * (qt_class_name(widget) == "ctkSearchBox")
            icons += 24 * bool(widget.text() and widget.isClearButtonEnabled())
            assert metrics.horizontalAdvance(text) + 8 + icons <= widget.width(), name
        elif isinstance(widget, (QCheckBox, QLabel)) and not (isinstance(widget, QLabel) and widget.wordWrap()):
            need = widget.minimumSizeHint()
            assert widget.width() >= need.width() and widget.height() >= need.height(), name


def panel_picture(panel):
    """The rendered panel down to the status line (not the stretch below it)."""
    image = grab(panel)
    status = child(panel, "statusLabel")
    bottom = status.mapTo(panel, status.rect().bottomLeft()).y() + 10
    ratio = image.devicePixelRatio()
    return image.copy(0, 0, image.width(), round(min(bottom, panel.height()) * ratio))


def test_panel_renders_as_in_slicer(qt_application, tmp_path):
    """The picture of the panel in the README: set VISTA3D_PANEL_RENDER to the PNG to write."""
    panel = load_panel()
    try:
        fill_like_the_module(panel)
        image = panel_picture(panel)
        assert_painted(image)
        assert abs(image.width() - PANEL_WIDTH * image.devicePixelRatio()) <= 1
        assert_nothing_clipped(panel)
        for path in (tmp_path / "vista3d_panel.png", os.environ.get("VISTA3D_PANEL_RENDER")):
            if path:
                assert image.save(str(path))
        # Expanded, the other sections fit the panel's width too.
        for name, *_ in PANEL_SECTIONS:
            child(panel, name).collapsed = False
        child(panel, "ctWarningLabel").setText("This does not look like a CT: there is no air (about -1000 HU) in it.")
        child(panel, "ctWarningLabel").show()
        grab(panel)
        assert_nothing_clipped(panel)
    finally:
        panel.deleteLater()


def fill_for_ctmr(panel) -> None:
    """The panel as the module shows it with NV-Segment-CTMR chosen for a brain MR: its licence and
    caveat, the modality, its own tree (the brain sections, from ``label_picker``), and the click
    and zero-shot sections disabled with the reason."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QIcon, QPixmap
    from PySide6.QtWidgets import QTreeWidgetItem

    from VISTA3DSlicerLib.label_picker import LabelSelection, label_tree
    from VISTA3DSlicerLib.labels import CTMR_LABELS
    from VISTA3DSlicerLib.models import MODELS

    fill_like_the_module(panel)
    ctmr = MODELS["nv-segment-ctmr"]
    child(panel, "inputVolumeSelector").addNode("MR brain T1")
    child(panel, "inputVolumeSelector").setCurrentIndex(1)
    child(panel, "modelComboBox").setCurrentText(ctmr.key)
    child(panel, "modalityComboBox").setEnabled(True)
    child(panel, "modalityComboBox").setCurrentText("mri-brain")
    child(panel, "modelInfoLabel").setText(
        f"{ctmr.classes} classes of {' and '.join(ctmr.modalities)}; {', '.join(ctmr.prompts)}. Licence: "
        f"{ctmr.licence.name} ({ctmr.licence.url}). Commercial use: {ctmr.licence.commercial_use}. {ctmr.caveat}")
    child(panel, "weightsModelComboBox").setCurrentText(ctmr.title)
    child(panel, "runOnComboBox").setCurrentText("server")  # a laptop using the department's GPU server
    for name in ("serverUrlLineEdit", "serverTokenLineEdit", "testConnectionButton"):
        child(panel, name).setEnabled(True)
    for name in ("deviceComboBox", "precisionComboBox", "runtimeComboBox"):
        child(panel, name).setEnabled(False)
    child(panel, "serverUrlLineEdit").setText("https://gpu01:8765")
    child(panel, "serverTokenLineEdit").setText("a-token-of-32-characters-or-more")
    child(panel, "serverInfoLabel").setText("Connected: NV-Segment-CTMR on cuda:0 on https://gpu01:8765 "
                                            "(fp32), vista3dslicer 0.1.0")
    child(panel, "serverInfoLabel").show()
    selection = LabelSelection.from_prompt("everything", space=CTMR_LABELS, modality="mri-brain")
    tree = child(panel, "labelTree")
    tree.clear()
    states = {"checked": Qt.CheckState.Checked, "partial": Qt.CheckState.PartiallyChecked,
              "unchecked": Qt.CheckState.Unchecked}

    def add(parent, node) -> None:
        item = QTreeWidgetItem(parent, [node.title if not node.is_leaf else f"{node.title}  ({node.label_id})"])
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(0, states[selection.check_state(node)])
        if node.is_leaf:
            pixmap = QPixmap(12, 12)
            pixmap.fill(QColor(*CTMR_LABELS.label_info(node.label_id).color))
            item.setIcon(0, QIcon(pixmap))
        for below in node.children:
            add(item, below)
        item.setExpanded(node.key in ("section:brain", "section:brain_deep"))

    for section in label_tree(CTMR_LABELS):
        add(tree, section)
    child(panel, "everythingCheckBox").setChecked(True)
    child(panel, "everythingCheckBox").setText(f"Everything ({len(selection.ids)} structures)")
    child(panel, "selectionSummaryLabel").setText(selection.summary())
    child(panel, "labelsLineEdit").setText(selection.to_prompt())
    for name in ("interactiveCollapsibleButton", "zeroShotCollapsibleButton"):
        child(panel, name).setEnabled(False)
        child(panel, name).setToolTip("NV-Segment-CTMR segments automatically only: choose vista3d or "
                                      "nv-segment-ct in Model for clicks.")
    child(panel, "statusLabel").setText("Segmenting MR brain T1: window 1 of 2 \u2026")


def test_the_panel_with_ctmr_chosen_renders(qt_application, tmp_path):
    """The Model combo on NV-Segment-CTMR: set VISTA3D_PANEL_RENDER_CTMR to the PNG to write, and look at it."""
    panel = load_panel()
    try:
        fill_for_ctmr(panel)
        image = panel_picture(panel)
        assert_painted(image)
        assert_nothing_clipped(panel)
        assert child(panel, "modelComboBox").currentText() == "nv-segment-ctmr"  # an item of the .ui's combo
        assert child(panel, "modalityComboBox").currentText() == "mri-brain"
        for path in (tmp_path / "vista3d_panel_ctmr.png", os.environ.get("VISTA3D_PANEL_RENDER_CTMR")):
            if path:
                assert image.save(str(path))
    finally:
        panel.deleteLater()


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


# ------------------------------------------------------------------------ the module's own Python


@pytest.fixture
def module(monkeypatch):
    """``VISTA3DSlicer.py`` imported with mock stand-ins for Slicer, Qt and VTK: for the parts of the
    Logic and the slots' error reporting that are plain Python."""
    from unittest import mock

    class Base:
        def __init__(self, *args, **kwargs) -> None:
            pass

    stand_ins = {name: mock.MagicMock(name=name) for name in (
        "slicer", "slicer.util", "slicer.i18n", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule",
        "qt", "vtk", "ctk")}
    scripted = stand_ins["slicer.ScriptedLoadableModule"]
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (Base,), {}))
    stand_ins["slicer.util"].VTKObservationMixin = type("VTKObservationMixin", (), {})
    stand_ins["slicer.parameterNodeWrapper"].parameterNodeWrapper = lambda cls: cls
    stand_ins["slicer.i18n"].tr = lambda text: text
    stand_ins["slicer"].util = stand_ins["slicer.util"]
    for name, stand_in in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    for name in [name for name in sys.modules if name.split(".")[0] in ("VISTA3DSlicer", "VISTA3DSlicerWidgets")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, with these stand-ins
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    import VISTA3DSlicer

    return VISTA3DSlicer


@pytest.mark.parametrize("raised, details", [("VISTA3DError", False), ("RuntimeError", True), ("Cancelled", None)])
def test_slot_errors_reach_the_user_as_a_message_and_never_as_a_raised_traceback(module, caplog, raised, details):
    from VISTA3DSlicerLib import errors

    error = getattr(errors, raised, None) or RuntimeError
    errorDisplay = module.slicer.util.errorDisplay
    with module.reportingErrors("Export failed."):
        raise error("the folder is read-only") if error is not errors.Cancelled else error()
    if details is None:  # a cancel the user asked for: no message box
        errorDisplay.assert_not_called()
        return
    (message,), options = errorDisplay.call_args
    assert message == "Export failed.\n\nthe folder is read-only"
    assert ("Traceback" in options.get("detailedText", "")) is details  # a bug keeps its traceback for a report
    assert ("Export failed." in caplog.text) is details


class _Logic:
    """The Logic's answer to which segments a run would replace, for the Widget's question."""

    def __init__(self, replaced: list[str]) -> None:
        self.replaced = replaced

    def segmentsToReplace(self, segmentationNode, labelPrompt) -> list[str]:
        return self.replaced


@pytest.mark.parametrize("answer, replaces", [(True, True), (False, None)])
def test_the_panel_asks_before_replacing_earlier_results_and_passes_the_answer_on(module, answer, replaces):
    """The Logic never asks (it refuses unless told to replace, see test_slicer_core_module); the panel does."""
    widget = module.VISTA3DSlicerWidget()
    widget.logic = _Logic(["liver", "spleen"])
    node = module.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.GetName.return_value = "Segmentation"
    confirm = module.slicer.util.confirmOkCancelDisplay
    confirm.return_value = answer
    if replaces:
        assert widget._replaceExisting(node, [1, 3]) is True
    else:
        with pytest.raises(module.Cancelled):  # the user's "no": the run stops, nothing is reported
            widget._replaceExisting(node, [1, 3])
    assert "'Segmentation' already has liver, spleen" in confirm.call_args.args[0]


def test_nothing_to_replace_asks_nothing(module):
    widget = module.VISTA3DSlicerWidget()
    widget.logic = _Logic([])
    assert widget._replaceExisting(object(), [1]) is False
    assert widget._replaceExisting(None, [1]) is False  # a new segmentation
    module.slicer.util.confirmOkCancelDisplay.assert_not_called()
