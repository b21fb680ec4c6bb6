"""VISTA3D in 3D Slicer: the scripted module (panel, logic, self-test).

Glue only: the engine, label table and weights live in ``VISTA3DSlicerLib``. Slicer imports
every module at start-up, before VISTA3D's Python packages may be installed, so this file
imports at module level only Slicer, the standard library and the ``VISTA3DSlicerLib`` modules
that need no third-party package; everything needing torch or monai is imported inside the
methods that use it, after ``installMissingDependencies`` has made sure it is there.
"""

import importlib.util
import logging
from pathlib import Path
from typing import Annotated, Optional, Union

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.model import DEVICES, PRECISIONS
from VISTA3DSlicerLib.progress import ProgressCallback

#: The torch versions the engine supports (pyproject.toml's "torch>=2.4"); torch is installed
#: by the PyTorch extension, which picks the build that matches the computer's GPU driver.
TORCH_VERSION_REQUIREMENT = ">=2.4"

#: Import name -> pip requirement of every other package the engine needs, as pinned in
#: pyproject.toml (numpy comes with Slicer).
PIP_REQUIREMENTS = {
    "monai": "monai>=1.5,<1.7",
    "SimpleITK": "SimpleITK>=2.3",
    "nibabel": "nibabel>=5.0",
    "skimage": "scikit-image>=0.22",
    "slicerio": "slicerio>=1.1",
    "nrrd": "pynrrd>=1.0",
    "safetensors": "safetensors>=0.4",
    "filelock": "filelock>=3.9",
    "requests": "requests>=2.28",
    "tqdm": "tqdm>=4.60",
    "PIL": "pillow>=10",
    "segment_anything": "segment-anything>=1.0",
}

DOCUMENTATION_URL = "https://github.com/vista3dslicer/SlicerVISTA3D#readme"


#
# VISTA3DSlicer
#


class VISTA3DSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VISTA3D")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VISTA3DSlicer contributors"]
        self.parent.helpText = _("""
Segments CT volumes with NVIDIA's VISTA3D model. Labels: structure names or VISTA3D label numbers
separated by commas (for example <i>liver, spleen, 1, 3</i>), or <i>everything</i> for all classes.<br>
Each structure found becomes one segment of the output segmentation; running again replaces only the
segments of the same labels. See the <a href="{url}">documentation</a>.
""").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
VISTA3D is described in Y. He et al., "VISTA3D: A Unified Segmentation Foundation Model for 3D
Medical Imaging", CVPR 2025. The model weights are NVIDIA's and are used under NVIDIA's licence,
not under this extension's Apache-2.0 licence: check which licence applies to your use.
""")


#
# VISTA3DSlicerParameterNode
#


@parameterNodeWrapper
class VISTA3DSlicerParameterNode:
    """The panel's choices, saved with the scene.

    inputVolume - the CT volume to segment.
    outputSegmentation - where the segments go; a new segmentation is made when none is chosen.
    labels - the label prompt: names or VISTA3D IDs separated by commas, or "everything".
    device - "auto" (the GPU if PyTorch sees one), "cpu" or "cuda".
    precision - "fp32" (the reference) or the faster, lower-precision "fp16" / "bf16".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    labels: str = "everything"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    precision: Annotated[str, Choice(list(PRECISIONS))] = "fp32"


#
# VISTA3DSlicerWidget
#


class VISTA3DSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, label prompt, output segmentation, Apply and progress."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # for observing the parameter node
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VISTA3DSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level mrmlSceneChanged signal to each node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VISTA3DSlicerLogic()

        # A closed scene takes the parameter node with it: drop it first, make a new one after.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()  # also needed after a module reload

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # The panel is hidden: stop mirroring the parameter node until it is shown again.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        # Save the user a click: pre-select the first volume of the scene.
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[VISTA3DSlicerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets are bound by their "SlicerParameterName" dynamic property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Segment the input volume with VISTA3D")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False

    def onApplyButton(self) -> None:
        parameters = self._parameterNode
        # Installing packages asks the user first: no wait cursor over those questions.
        with slicer.util.tryWithErrorDisplay(_("Could not install what VISTA3D needs.")):
            self.logic.installMissingDependencies()
        with slicer.util.tryWithErrorDisplay(_("VISTA3D segmentation failed."), waitCursor=True):
            # Progress updates let Qt process events; a second click must not start a second run.
            self.ui.applyButton.enabled = False
            try:
                segmentationNode = self.logic.segment(
                    parameters.inputVolume,
                    parameters.labels,
                    parameters.outputSegmentation,
                    device=parameters.device,
                    precision=parameters.precision,
                    progress=self._showProgress,
                )
            finally:
                self._checkCanApply()
            parameters.outputSegmentation = segmentationNode
            self.ui.progressBar.format = _("Done")

    def _showProgress(self, done: int, total: int, message: str) -> None:
        # An unknown total (0) shows a busy bar: a range of 0 to 0.
        self.ui.progressBar.maximum = max(total, 0)
        self.ui.progressBar.value = min(done, total) if total > 0 else 0
        self.ui.progressBar.format = f"{message} %p%"
        slicer.app.processEvents()  # repaint the bar: the engine runs on this (the main) thread


#
# VISTA3DSlicerLogic
#


class VISTA3DSlicerLogic(ScriptedLoadableModuleLogic):
    """Segmentation without the panel, usable from Slicer's Python console::

        logic = slicer.util.getModuleLogic("VISTA3DSlicer")  # or VISTA3DSlicerLogic()
        segmentationNode = logic.segment(volumeNode, ["liver", "spleen"])

    Call it from the main thread (the console and the panel are): it may ask the user questions
    and install packages.
    """

    # Shared by every logic instance (panel, console, test): the network takes ~1 GB and seconds
    # to load. Only the latest (weights file, device, precision) is kept, so a switch frees memory.
    _engineCache: dict = {}

    def getParameterNode(self) -> VISTA3DSlicerParameterNode:
        return VISTA3DSlicerParameterNode(super().getParameterNode())

    def segment(
        self,
        volumeNode: vtkMRMLScalarVolumeNode,
        labels: Union[list[Union[str, int]], str, None],
        segmentationNode: Optional[vtkMRMLSegmentationNode] = None,
        device: str = "auto",
        precision: str = "fp32",
        weights: Union[str, Path, None] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> vtkMRMLSegmentationNode:
        """Segment ``labels`` of ``volumeNode`` into ``segmentationNode`` and return that node.

        ``labels``: a prompt string ("liver, spleen, 1, 3" or "everything"), a list of names and
        VISTA3D IDs, or None for everything. ``segmentationNode``: None makes a new one beside
        the volume. ``weights``: a checkpoint file; None uses $VISTA3D_WEIGHTS or the download
        cache (and offers the download when neither has them). ``progress(done, total, message)``
        is called as the work goes on. Segments of other labels in ``segmentationNode`` are kept.
        """
        if volumeNode is None:
            raise VISTA3DError(_("No input volume is selected. Load a CT volume and select it as the input."))
        self.installMissingDependencies()

        from VISTA3DSlicerLib import slicer_adapter

        labelIds = self._labelIds(labels)
        image = slicer_adapter.image_from_volume_node(volumeNode)
        engine = self._engine(weights, device, precision, progress)
        labelmap = engine.segment(image, labelIds, progress=progress)

        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} VISTA3D"))
            segmentationNode.CreateDefaultDisplayNodes()
            # Under the volume's transform, so the segments move with the volume.
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        written = slicer_adapter.labelmap_to_segmentation(labelmap, segmentationNode, volumeNode)
        if not written:
            logging.warning("VISTA3D found none of the requested structures in %s", volumeNode.GetName())
        return segmentationNode

    def installMissingDependencies(self) -> None:
        """Install PyTorch (through the PyTorch extension) and the packages of ``PIP_REQUIREMENTS``
        that are missing, each after asking the user. Raises ``VISTA3DError`` if the user says no.
        """
        # torch first: pip would otherwise pull a generic torch build in as a dependency of monai.
        if importlib.util.find_spec("torch") is None:
            self._installTorch()
        missing = [requirement for name, requirement in PIP_REQUIREMENTS.items()
                   if importlib.util.find_spec(name) is None]
        if not missing:
            return
        packages = ", ".join(missing)
        if not slicer.util.confirmOkCancelDisplay(
            _("VISTA3D needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
              "Download and install them now? This can take a few minutes.").format(packages=packages)
        ):
            raise VISTA3DError(_("VISTA3D cannot run without these Python packages: {packages}.").format(packages=packages))
        with slicer.util.WaitCursor():
            slicer.util.pip_install(missing)
        importlib.invalidate_caches()

    @staticmethod
    def _installTorch() -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise VISTA3DError(_(
                "VISTA3D needs PyTorch, which Slicer installs through the PyTorch extension. Install "
                "the PyTorch extension from the Extensions Manager, restart Slicer and try again."
            )) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
        if torch is None:
            raise VISTA3DError(_("PyTorch was not installed, and VISTA3D cannot run without it."))

    @staticmethod
    def _labelIds(labels: Union[list[Union[str, int]], str, None]) -> Optional[list[int]]:
        """VISTA3D IDs of a prompt; None means everything."""
        from VISTA3DSlicerLib import labels as labelTable

        if labels is None:
            return None
        if isinstance(labels, str):
            return labelTable.parse_label_prompt(labels)
        return [labelTable.find_label(label) for label in labels]

    def _engine(self, weights: Union[str, Path, None], device: str, precision: str,
                progress: Optional[ProgressCallback]):
        from VISTA3DSlicerLib.engine import Engine
        from VISTA3DSlicerLib.weights import WeightsNotFoundError, resolve_weights

        try:
            weightsPath = resolve_weights(weights)
        except WeightsNotFoundError:
            weightsPath = self._downloadWeights(progress)
        key = (str(weightsPath), device, precision)
        cache = VISTA3DSlicerLogic._engineCache
        if key not in cache:
            cache.clear()  # free the previous network before loading the next one
            cache[key] = Engine.from_weights(weightsPath, device=device, precision=precision)
        return cache[key]

    @staticmethod
    def _downloadWeights(progress: Optional[ProgressCallback]) -> Path:
        from VISTA3DSlicerLib import weights

        source = weights.SOURCES[weights.DEFAULT_SOURCE]
        if not slicer.util.confirmOkCancelDisplay(
            _("The VISTA3D weights are not on this computer yet. Download them ({size} MB) from "
              "{host} into {folder}?\n\n{licence}").format(
                size=round(source.size / 1e6) if source.size else "~870", host=source.host,
                folder=weights.cache_dir(), licence=source.licence_note)
        ):
            raise VISTA3DError(_(
                "VISTA3D cannot run without its weights. Download them, or set the VISTA3D_WEIGHTS "
                "environment variable to a checkpoint file you already have."
            ))
        return weights.download(source, progress=progress)


#
# VISTA3DSlicerTest
#


class VISTA3DSlicerTest(ScriptedLoadableModuleTest):
    """Self-test: geometry round trip through the adapter and, when weights are found, a real run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_adapter_round_trip()
        self.setUp()
        self.test_segment_two_labels()

    def test_adapter_round_trip(self):
        """Volume node -> Image -> labelmap -> segmentation keeps voxels, geometry and other segments."""
        import numpy as np
        import SampleData

        from VISTA3DSlicerLib import labels, slicer_adapter

        volumeNode = SampleData.downloadSample("CTChest")
        self.delayDisplay("Loaded CTChest")

        image = slicer_adapter.image_from_volume_node(volumeNode)
        self.assertEqual(image.shape, tuple(volumeNode.GetImageData().GetDimensions()))
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        np.testing.assert_allclose(image.affine, slicer.util.arrayFromVTKMatrix(ijkToRas))
        i, j, k = (n // 3 for n in image.shape)
        self.assertEqual(image.array[i, j, k], volumeNode.GetImageData().GetScalarComponentAsDouble(i, j, k, 0))

        # Two boxes in different corners: any axis swap or flip moves them.
        liver, spleen = labels.find_label("liver"), labels.find_label("spleen")
        labelmap = np.zeros(image.shape, np.uint8)
        labelmap[5:40, 10:30, 3:9] = liver
        labelmap[-50:-20, -35:-25, -12:-4] = spleen
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        manualId = segmentationNode.GetSegmentation().AddEmptySegment("", "drawn by hand")

        segmentIds = slicer_adapter.labelmap_to_segmentation(image.with_array(labelmap), segmentationNode, volumeNode)
        self.assertEqual(len(segmentIds), 2)
        segmentation = segmentationNode.GetSegmentation()
        for segmentId, label in zip(segmentIds, (liver, spleen)):
            self.assertEqual(segmentation.GetSegment(segmentId).GetName(), labels.label_info(label).display_name)
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            np.testing.assert_array_equal(voxels.transpose(2, 1, 0) > 0, labelmap == label)

        # A new liver result replaces the liver segment only.
        labelmap[:] = 0
        labelmap[60:70, 60:70, 10:12] = liver
        rewritten = slicer_adapter.labelmap_to_segmentation(image.with_array(labelmap), segmentationNode, volumeNode)
        self.assertEqual(rewritten, segmentIds[:1])
        self.assertEqual(segmentation.GetNumberOfSegments(), 3)
        self.assertIsNotNone(segmentation.GetSegment(manualId))
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentIds[0], volumeNode)
        np.testing.assert_array_equal(voxels.transpose(2, 1, 0) > 0, labelmap == liver)
        self.delayDisplay("Adapter round trip passed")

    def test_segment_two_labels(self):
        """A real two-class run, only where the VISTA3D weights are already on this computer."""
        import SampleData

        from VISTA3DSlicerLib import labels
        from VISTA3DSlicerLib.weights import WeightsNotFoundError, resolve_weights

        try:
            resolve_weights()
        except WeightsNotFoundError as error:
            logging.info("Skipping the VISTA3D inference test, no weights found: %s", error)
            return

        volumeNode = SampleData.downloadSample("CTChest")
        prompt = ["aorta", "trachea"]  # both in any chest CT
        segmentationNode = VISTA3DSlicerLogic().segment(volumeNode, prompt)
        segmentation = segmentationNode.GetSegmentation()
        names = sorted(segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments()))
        self.assertEqual(names, sorted(labels.label_info(labels.find_label(name)).display_name for name in prompt))
        self.delayDisplay("VISTA3D segmentation test passed")
