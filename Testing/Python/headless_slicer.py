"""A headless 3D Slicer for the tests of the Slicer side, built from Slicer's own core (slicer-core).

Real, from Kitware's ``slicer-core`` wheel (Slicer 5.13's C++ libraries): the MRML scene and every
node in it (volumes, segmentations, markups, transforms, scripted module nodes, storage nodes),
``vtkSlicerApplicationLogic``, the module logics of Colors, Volumes, Segmentations, Markups,
Terminologies, Subject Hierarchy and Transforms, and Slicer's ``slicer/util.py``. The
Terminologies logic loads Slicer's default contexts from ``../shared/reference/terminology``
(the files Slicer ships), as Slicer does from its share folder.

Stand-ins, for what slicer-core does not have (it has no Qt and no application object); each
hands out the real objects above:

- ``slicer.app``: the application logic, the scene, no-op event processing and render pausing
  (there is no event loop and there are no views), and the ``startupCompleted()`` signal;
- ``slicer.modules``: ``slicer.modules.<name>.logic()`` for the module logics above;
- ``qt``: only ``QTimer``, the Logic's dispatch timer (a test fires it with ``timeout()``);
- ``slicer.i18n``, ``slicer.parameterNodeWrapper``, ``slicer.ScriptedLoadableModule``: Python
  files of Slicer's application, written here after their documented behaviour over real
  scripted module nodes (their code is not copied);
- ``SampleData``: ``downloadSample("CTChest")`` reads a crop of the example CT (one 128³ window of
  the network, for speed) through the real volumes logic (there is no network);
- Slicer's dialogs, ``pip_install`` and the wait cursor raise ``GuiUsed``: the Logic must run
  headless and never ask the user anything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import types
import typing
import unittest
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TERMINOLOGY_SOURCE = REPO.parent / "shared" / "reference" / "terminology"
EXAMPLE_CT = REPO.parent / "shared" / "data" / "totalsegmentator-example" / "example_ct_sm.nii.gz"

#: The file names Slicer's Terminologies logic loads its default contexts from (its share
#: folder), and the copies of those files in ../shared/reference/terminology.
DEFAULT_CONTEXT_FILES = {
    "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json": "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json",
    "SegmentationCategoryTypeModifier-DICOM-Master.term.json": "SegmentationCategoryTypeModifier-DICOM-Master.json",
    "AnatomicRegionAndModifier-DICOM-Master.term.json": "AnatomicRegionAndModifier-DICOM-Master.json",
}

#: slicer.util's functions that open a dialog or install packages, which the Logic must not call.
GUI_FUNCTIONS = ("errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay",
                 "confirmRetryCloseDisplay", "messageBox", "delayDisplay", "pip_install", "pip_uninstall",
                 "WaitCursor")


def slicer_core_missing() -> Optional[str]:
    """Why the real-MRML tests cannot run here, or None when they can."""
    if importlib.util.find_spec("slicer_core") is None:
        return ("slicer-core (3D Slicer's core as a wheel) is not installed; it exists for CPython 3.11 on "
                "x86-64 Linux: `pip install slicer-core==5.13.31053.0` there (make test does)")
    return None


class GuiUsed(AssertionError):
    """Code under test opened a dialog, installed packages or touched the GUI."""


# ------------------------------------------------------------------------------ the application


class HeadlessApplication:
    """``slicer.app``: what Slicer's application object gives scripted modules, without Qt."""

    def __init__(self, scene, application_logic) -> None:
        self._scene = scene
        self._application_logic = application_logic
        self._slots: dict[str, list[Callable[[], None]]] = {}

    def applicationLogic(self):
        return self._application_logic

    def mrmlScene(self):
        return self._scene

    def processEvents(self) -> None:
        """Nothing to process: there is no Qt event loop."""

    def pauseRender(self) -> None:
        """Nothing to pause: there are no views."""

    def resumeRender(self) -> None:
        """Nothing to resume: there are no views."""

    def testingEnabled(self) -> bool:
        return True

    def connect(self, signal: str, slot: Callable[[], None]) -> None:
        self._slots.setdefault(signal, []).append(slot)

    def emit(self, signal: str) -> None:
        """What Qt does when the application emits ``signal`` (e.g. ``startupCompleted()``)."""
        for slot in self._slots.get(signal, []):
            slot()


class HeadlessSlicer:
    """One Slicer core application: a scene, the application logic and the module logics."""

    def __init__(self, share_dir: Optional[Path]) -> None:
        import slicer
        from vtkmodules.vtkCommonCore import vtkCollection

        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)

        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        colors = self.application_logic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.application_logic.SetSliceLogics(vtkCollection())
        self.application_logic.SetViewLogics(vtkCollection())

        self.logics: dict[str, Any] = {"colors": colors}
        self.application_logic.SetModuleLogic("Colors", colors)
        for name, module_name, logic_class in (
            ("volumes", "Volumes", slicer.vtkSlicerVolumesLogic),
            ("segmentations", "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
            ("markups", "Markups", slicer.vtkSlicerMarkupsLogic),
            ("terminologies", "Terminologies", slicer.vtkSlicerTerminologiesModuleLogic),
            ("subjecthierarchy", "SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
            ("transforms", "Transforms", slicer.vtkSlicerTransformLogic),
        ):
            logic = logic_class()
            if name == "terminologies" and share_dir is not None:
                # Before the scene: the logic loads its default contexts when it gets one.
                logic.SetModuleShareDirectory(str(share_dir))
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.application_logic)
            self.application_logic.SetModuleLogic(module_name, logic)
            self.logics[name] = logic
        self.has_terminology = share_dir is not None
        self.app = HeadlessApplication(self.scene, self.application_logic)
        self.modules = types.SimpleNamespace(**{
            name: types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in self.logics.items()})

    def add_slice_views(self) -> None:
        """The three slice views' nodes, as Slicer's default layout makes them."""
        for name in ("Red", "Yellow", "Green"):
            slice_node = self.scene.AddNewNodeByClass("vtkMRMLSliceNode")
            slice_node.SetLayoutName(name)
            composite = self.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            composite.SetLayoutName(name)

    def load_volume(self, path: Path | list[Path], name: str = "CT"):
        """A scalar volume read by Slicer's volumes logic (a list: the files of one DICOM series)."""
        import vtk

        files = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
        file_list = vtk.vtkStringArray()
        for file in files:
            file_list.InsertNextValue(str(file))
        node = self.logics["volumes"].AddArchetypeVolume(str(files[0]), name, 0, file_list)
        if node is None:
            raise RuntimeError(f"Slicer's volumes logic could not read {files[0]}")
        return node


def terminology_share_dir(folder: Path) -> Optional[Path]:
    """A share folder for the Terminologies logic holding Slicer's default contexts under the
    names Slicer looks for, or None when ../shared/reference/terminology is not there."""
    if not all((TERMINOLOGY_SOURCE / source).is_file() for source in DEFAULT_CONTEXT_FILES.values()):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in DEFAULT_CONTEXT_FILES.items():
        link = folder / name
        if not link.exists():
            os.symlink(TERMINOLOGY_SOURCE / source, link)
    return folder


# ------------------------------------------------------------------------------ stand-in modules


def _qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt", "Stand-in for PythonQt's qt: only the timer the Logic dispatches with.")

    class QTimer:
        """A timer that never fires by itself (no event loop): ``timeout()`` fires it."""

        def __init__(self, parent=None) -> None:
            self._slots: list[Callable[[], None]] = []
            self.interval = 0
            self.active = False

        def setInterval(self, milliseconds: int) -> None:
            self.interval = milliseconds

        def connect(self, signal: str, slot: Callable[[], None]) -> None:
            if signal != "timeout()":
                raise AttributeError(f"the stand-in QTimer has no signal {signal}")
            self._slots.append(slot)

        def start(self) -> None:
            self.active = True

        def stop(self) -> None:
            self.active = False

        def timeout(self) -> None:
            for slot in self._slots:
                slot()

    qt.QTimer = QTimer
    return qt


def _i18n_module() -> types.ModuleType:
    i18n = types.ModuleType("slicer.i18n", "Stand-in for slicer.i18n: no translations.")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return i18n


def _parameter_node_wrapper_module(slicer) -> types.ModuleType:
    """``@parameterNodeWrapper``: typed attributes stored in a scripted module node's parameters
    (node-typed ones as node references), with defaults and the Choice / WithinRange validators."""
    module = types.ModuleType("slicer.parameterNodeWrapper", "Stand-in for slicer.parameterNodeWrapper.")

    class Choice:
        def __init__(self, choices) -> None:
            self.choices = list(choices)

        def validate(self, value) -> None:
            if value not in self.choices:
                raise ValueError(f"{value!r} is not one of {self.choices}")

    class WithinRange:
        def __init__(self, minimum, maximum) -> None:
            self.minimum, self.maximum = minimum, maximum

        def validate(self, value) -> None:
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"{value!r} is not within [{self.minimum}, {self.maximum}]")

    def parse(kind: type, text: str):
        if kind is bool:
            return text == "True"
        return kind(text)

    def field(name: str, hint, default):
        kind, *validators = typing.get_args(hint) if typing.get_origin(hint) is typing.Annotated else (hint,)
        if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
            return property(lambda self: self.parameterNode.GetNodeReference(name),
                            lambda self, node: self.parameterNode.SetNodeReferenceID(name, node.GetID() if node else None))

        def set_value(self, value) -> None:
            value = kind(value)
            for validator in validators:
                validator.validate(value)
            self.parameterNode.SetParameter(name, str(value))

        def get_value(self):
            text = self.parameterNode.GetParameter(name)
            return default if text == "" and kind is not str else parse(kind, text)

        return property(get_value, set_value)

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        defaults = {name: cls.__dict__[name] for name in hints if name in cls.__dict__}

        def __init__(self, parameterNode) -> None:
            self.parameterNode = parameterNode
            for name, value in defaults.items():  # a new node holds the defaults, as in Slicer
                if not parameterNode.HasParameter(name):
                    setattr(self, name, value)

        namespace = {"__init__": __init__, "__doc__": cls.__doc__}
        namespace.update({name: field(name, hint, defaults.get(name)) for name, hint in hints.items()})
        return type(cls.__name__, (), namespace)

    module.Choice = Choice
    module.WithinRange = WithinRange
    module.parameterNodeWrapper = parameterNodeWrapper
    return module


def _scripted_loadable_module(slicer) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule", "Stand-in for slicer.ScriptedLoadableModule.")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            raise GuiUsed("a module widget needs Qt, which the headless Slicer does not have")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            """The scene's one parameter node of this module (a singleton scripted module node)."""
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                node.SetAttribute("ModuleName", self.moduleName)
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: Optional[int] = None) -> None:
            logging.info(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


def _sample_data_module(application: HeadlessSlicer, folder: Path) -> types.ModuleType:
    module = types.ModuleType("SampleData", "Stand-in for SampleData: the example CT, read by the volumes logic.")

    def downloadSample(name: str):
        import nibabel
        import pytest

        if name != "CTChest":
            raise ValueError(f"the headless SampleData has only CTChest, not {name}")
        if not EXAMPLE_CT.is_file():
            pytest.skip(f"example data not available ({EXAMPLE_CT})")
        path = folder / "CTChest.nii.gz"
        if not path.is_file():  # 60 x 60 x 30 voxels of 3 mm of the abdomen: one window at 1.5 mm
            crop = nibabel.load(EXAMPLE_CT).slicer[30:90, 25:85, :]
            nibabel.save(nibabel.Nifti1Image(np.asanyarray(crop.dataobj).astype(np.int16), crop.affine), path)
        return application.load_volume(path, "CTChest")

    module.downloadSample = downloadSample
    return module


def _gui_used(name: str):
    def refuse(*args, **kwargs):
        raise GuiUsed(f"slicer.util.{name} was called: the Logic must not open dialogs or touch the GUI")
    return refuse


@contextlib.contextmanager
def installed(application: HeadlessSlicer, folder: Path) -> Iterator[types.ModuleType]:
    """Make ``application`` the one ``import slicer`` gives (``slicer.app``, ``slicer.mrmlScene``,
    ``slicer.modules``, the stand-in modules; ``folder`` for SampleData's files); everything is put
    back afterwards."""
    import slicer
    import slicer.util

    stand_ins = {
        "qt": _qt_module(),
        "slicer.i18n": _i18n_module(),
        "slicer.parameterNodeWrapper": _parameter_node_wrapper_module(slicer),
        "slicer.ScriptedLoadableModule": _scripted_loadable_module(slicer),
        "SampleData": _sample_data_module(application, folder),
    }
    attributes = {
        "app": application.app, "mrmlScene": application.scene, "modules": application.modules,
        "i18n": stand_ins["slicer.i18n"], "parameterNodeWrapper": stand_ins["slicer.parameterNodeWrapper"],
        "ScriptedLoadableModule": stand_ins["slicer.ScriptedLoadableModule"],
    }
    saved_modules = {name: sys.modules.get(name) for name in stand_ins}
    saved_attributes = {name: getattr(slicer, name, None) for name in attributes}
    saved_gui = {name: getattr(slicer.util, name) for name in GUI_FUNCTIONS}
    sys.modules.update(stand_ins)
    for name, value in attributes.items():
        setattr(slicer, name, value)
    for name in GUI_FUNCTIONS:
        setattr(slicer.util, name, _gui_used(name))
    try:
        yield slicer
    finally:
        for name, value in saved_gui.items():
            setattr(slicer.util, name, value)
        for name, value in saved_attributes.items():
            if value is None:
                delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# ------------------------------------------------------------------------------ helpers for tests


def volume_from_array(slicer, array_ijk: np.ndarray, ijk_to_ras: np.ndarray, name: str = "CT"):
    """A scalar volume node holding ``array_ijk`` (``[i, j, k]``) with that ``IJKToRAS``."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def linear_transform(slicer, matrix: np.ndarray, name: str = "Transform"):
    """A linear transform node (its matrix: to parent)."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def rotation(degrees: float, axis: int, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A rigid 4x4 matrix: a rotation about RAS axis ``axis`` and a translation."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(4)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    matrix[:3, 3] = translation
    return matrix
