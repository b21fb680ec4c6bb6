"""VISTA3D in 3D Slicer: the scripted module (panel, logic, self-test).

Glue only. What the panel does is in ``VISTA3DSlicerLib`` (label picking, the click editor,
export, the batch workflow, the worker thread) and is tested without Slicer; the panel's sections
(Qt: the label tree, weights, points, zero-shot, batch, export) are in ``VISTA3DSlicerWidgets``.
This file holds the module, its parameter node, the Widget that puts the sections together and
reports their jobs, the Logic that binds the library to MRML nodes, and the self-test. Slicer imports every module at start-up, before VISTA3D's
Python packages may be installed, so this file imports at module level only Slicer, the
standard library and the ``VISTA3DSlicerLib`` modules that need no third-party package;
everything needing torch or monai runs on the worker thread, once the panel has installed them.
The Logic asks the user nothing; the Widget asks (install packages, download weights, replace
earlier results) and passes the answers to the Logic.

Threads: all torch work runs on the logic's one ``Worker`` thread (PyTorch's cuDNN caches are
per thread); MRML and Qt are touched on the main thread only, in the worker's callbacks, which a
QTimer dispatches (or ``Job.wait`` when the caller asks to wait for completion).
"""

import importlib.util
import logging
from pathlib import Path
from typing import Annotated, Callable, Optional, Union

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VISTA3DSlicerLib import labels, slicer_adapter
from VISTA3DSlicerLib.dependencies import require as requireDependencies
from VISTA3DSlicerLib.errors import Cancelled, VISTA3DError
from VISTA3DSlicerLib.model import DEVICES, PRECISIONS, RUNTIMES
from VISTA3DSlicerLib.models import DEFAULT_MODEL, MODELS
from VISTA3DSlicerLib.ct_check import MODALITY_TITLES, choose_modality
from VISTA3DSlicerLib.panel import (
    ClickEditor, ClickSession, EngineCache, EngineSettings, PointPrompt, click_session_for, locate_checkpoint,
    missing_weights, segments_replaced,
)
from VISTA3DSlicerLib.progress import CancelToken, ProgressCallback
from VISTA3DSlicerLib.worker import Job, Worker
from VISTA3DSlicerWidgets.batch_section import BatchSection
from VISTA3DSlicerWidgets.dialogs import downloadAllowed, installDependencies, namesInShort, reportingErrors
from VISTA3DSlicerWidgets.export_section import EXPORT_FORMATS, ExportSection
from VISTA3DSlicerWidgets.label_tree import LabelTree
from VISTA3DSlicerWidgets.points_section import PointsSection
from VISTA3DSlicerWidgets.server_section import ServerSection
from VISTA3DSlicerWidgets.weights_section import WeightsSection, chosenWeights
from VISTA3DSlicerWidgets.zero_shot_section import ZeroShotSection

DOCUMENTATION_URL = "https://github.com/vista3dslicer/SlicerVISTA3D#readme"
#: Voxels of margin around a structure's points for "supervoxels around the points".
SUPERVOXEL_MARGIN = 24
POSITIVE_COLOR = (0.2, 0.8, 0.2)
NEGATIVE_COLOR = (0.9, 0.2, 0.2)


def moduleResource(relativePath: str) -> Path:
    """A file of the module's ``Resources``: beside this file in an installed extension, at the
    repository's top level in a checkout added as a module path."""
    here = Path(__file__).resolve().parent
    candidates = [folder / "Resources" / relativePath for folder in (here, here.parent)]
    return next((path for path in candidates if path.is_file()), candidates[0])


#
# VISTA3DSlicer
#


class VISTA3DSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VISTA3D")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["VISTA3DSlicer contributors"]
        self.parent.helpText = _("""
Segments CT volumes with NVIDIA's VISTA3D model: tick structures (or Everything) and Segment; correct a
segment with + and − points; segment structures outside the 127 classes with the zero-shot tool; run
every loaded volume in a batch; export a labelmap with VISTA3D's label IDs and a colour table.
See the <a href="{url}">documentation</a>.
""").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
VISTA3D is described in Y. He et al., "VISTA3D: A Unified Segmentation Foundation Model for 3D
Medical Imaging", CVPR 2025. The model weights are NVIDIA's and are used under NVIDIA's licence,
not under this extension's Apache-2.0 licence: check which licence applies to your use.
""")
        # Slicer's terminology selector must find VISTA3D's codes in the contexts the segments'
        # tags name, also in scenes loaded before the module is opened; the module logics exist
        # once Slicer has started.
        slicer.app.connect("startupCompleted()", slicer_adapter.load_terminology_contexts)


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
    runtime - what runs automatic segmentation: "torch" (the reference) or "openvino" (faster on a CPU).
    supervoxelsWholeVolume - compute supervoxels over the whole volume, not around the points.
    snapFraction - snap zero-shot segments to supervoxels covered above this fraction (0: off).
    model - which model runs (``models.MODELS``): the VISTA3D bundle, NV-Segment-CT or NV-Segment-CTMR.
    modality - what the volume is, for a CT and MR model: "auto" (CT if it looks like one, else body MR),
      "ct", "mri-body" or "mri-brain"; it decides that model's "everything".
    exportFormat - the labelmap file type of Export.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    labels: str = "everything"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    precision: Annotated[str, Choice(list(PRECISIONS))] = "fp32"
    runtime: Annotated[str, Choice(list(RUNTIMES))] = "torch"
    supervoxelsWholeVolume: bool = False
    snapFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    model: Annotated[str, Choice(list(MODELS))] = DEFAULT_MODEL
    modality: Annotated[str, Choice(["auto", *MODALITY_TITLES])] = "auto"
    exportFormat: Annotated[str, Choice(list(EXPORT_FORMATS))] = ".seg.nrrd"


#
# VISTA3DSlicerWidget
#


class VISTA3DSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: its sections (``VISTA3DSlicerWidgets``) bind the .ui to the logic; this
    class owns the parameter node, the running job and the status line they report to."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.parameters: Optional[VISTA3DSlicerParameterNode] = None
        self._parameterNodeGuiTag = None
        self.runningJob: Optional[Job] = None
        self._ctCheckedKey = None
        self._modality: Optional[str] = None  # what the input volume is segmented as (inferred or chosen)

    # -- set-up -------------------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(moduleResource("UI/VISTA3DSlicer.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VISTA3DSlicerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.labelTree = LabelTree(self.ui, onTicked=self._onLabelsTicked)
        self.weights = WeightsSection(self)
        self.server = ServerSection(self)
        self.points = PointsSection(self)
        self.zeroShot = ZeroShotSection(self, self.points)
        self.batch = BatchSection(self, self.labelTree)
        self.export = ExportSection(self)
        self.ui.applyButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._updateDeviceInfo)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.points.removeShortcuts()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._updateDeviceInfo()  # free GPU memory changes while other modules are used
        self.points.installShortcuts()

    def exit(self) -> None:
        self.points.removeShortcuts()
        self.points.stopPlacing()
        if self.parameters:
            self.parameters.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self.parameters, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.points.forgetPointLists()
        self.logic.forgetVolume()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self.parameters.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self.parameters.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[VISTA3DSlicerParameterNode]) -> None:
        if self.parameters:
            self.parameters.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self.parameters, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self.parameters = inputParameterNode
        if self.parameters:
            # Widgets are bound by their "SlicerParameterName" dynamic property in the .ui file.
            self._parameterNodeGuiTag = self.parameters.connectGui(self.ui)
            self.addObserver(self.parameters, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self.parameters
        volumeNode = parameters.inputVolume if parameters else None
        self.logic.model = parameters.model if parameters else DEFAULT_MODEL
        self.logic.modality = None if not parameters or parameters.modality == "auto" else parameters.modality
        self._updateCtWarning(volumeNode)
        self._showModel()
        if parameters:
            self.labelTree.showPrompt(parameters.labels)
        segmentationNode = parameters.outputSegmentation if parameters else None
        self.ui.targetSegmentSelector.setCurrentNode(segmentationNode)
        if segmentationNode and not self.ui.exportSegmentationSelector.currentNode():
            self.ui.exportSegmentationSelector.setCurrentNode(segmentationNode)
        self.ui.exportDicomButton.enabled = bool(volumeNode and volumeNode.GetAttribute("DICOM.instanceUIDs"))
        self.logic.snapFraction = parameters.snapFraction if parameters else 0.0
        self.updateButtons()

    def _showModel(self) -> None:
        """What the chosen model offers: its weights and licence, its classes in the tree (its
        "everything" for the modality), the modality choice, and clicks only where it takes them."""
        model = MODELS[self.logic.model]
        self.weights.showModel(model.key)
        self.labelTree.showLabels(model.labels, self.logic.chosenModality() or self._modality)
        self.ui.modalityComboBox.enabled = len(model.labels.modalities) > 1
        reason = "" if model.takes_clicks else _("{model} segments automatically only: choose vista3d or "
                                                 "nv-segment-ct in Model for clicks.").format(model=model.title)
        for section in (self.ui.interactiveCollapsibleButton, self.ui.zeroShotCollapsibleButton):
            section.enabled = model.takes_clicks
            section.toolTip = reason

    def _onLabelsTicked(self, prompt: str) -> None:
        self.updateButtons()
        if self.parameters:
            self.parameters.labels = prompt

    def updateButtons(self) -> None:
        busy = self.runningJob is not None or self.batch.cancel is not None
        hasVolume = bool(self.parameters and self.parameters.inputVolume)
        self.ui.applyButton.enabled = hasVolume and bool(self.labelTree.selection.ids) and not busy
        self.ui.applyButton.toolTip = _("Segment the ticked structures") if hasVolume else _("Select an input volume")
        self.points.updateButtons(hasVolume)
        self.ui.batchRunButton.enabled = not busy
        self.ui.cancelButton.enabled = busy

    # -- status -------------------------------------------------------------------------------

    def showProgress(self, done: int, total: int, message: str) -> None:
        # An unknown total (0) shows a busy bar: a range of 0 to 0.
        self.ui.progressBar.maximum = max(total, 0)
        self.ui.progressBar.value = min(done, total) if total > 0 else 0
        self.ui.statusLabel.text = message

    def showError(self, error: BaseException, where=None) -> None:
        """A user error in the status line (and ``where``); a bug with its traceback in the log."""
        if isinstance(error, Cancelled):
            message = _("Cancelled: nothing was changed.")
        elif isinstance(error, VISTA3DError):
            message = str(error)
        else:
            logging.error("VISTA3D failed", exc_info=error)
            message = _("VISTA3D failed: {error}. The Python console has the details.").format(error=error)
        self.ui.statusLabel.text = message
        if where is not None:
            where.text = message

    def finishJob(self) -> None:
        self.runningJob = None
        self.ui.progressBar.maximum = 100
        self.updateButtons()

    def onJobFailed(self, error: BaseException) -> None:
        self.finishJob()
        self.showError(error)

    def onCancel(self) -> None:
        if self.runningJob is not None:
            self.runningJob.cancel()
        if self.batch.cancel is not None:
            self.batch.cancel.cancel()

    # -- input checks -------------------------------------------------------------------------

    def _updateCtWarning(self, volumeNode) -> None:
        """The modality the volume is segmented as (``ct_check.choose_modality``) and what to say about it."""
        imageData = volumeNode.GetImageData() if volumeNode is not None else None
        key = ((volumeNode.GetID(), imageData.GetMTime(), self.logic.model, self.logic.modality)
               if imageData is not None else None)
        if key == self._ctCheckedKey:
            return  # the parameter node changes at each keystroke: read the voxels once per volume and choice
        self._ctCheckedKey = key
        warning, self._modality = None, None
        if imageData is not None:
            try:
                choice = choose_modality(
                    MODELS[self.logic.model], slicer_adapter.image_from_volume_node(volumeNode),
                    self.logic.chosenModality())
                # A CT shown as CT needs no word; a non-CT, a guessed MR or brain MR's needs do.
                self._modality = choice.modality
                warning = choice.message if choice.warning or choice.modality != "ct" else None
            except VISTA3DError as error:
                warning = str(error)
        self.ui.ctWarningLabel.text = warning or ""
        self.ui.ctWarningLabel.visible = bool(warning)

    def _updateDeviceInfo(self, *args) -> None:
        if importlib.util.find_spec("torch") is None:
            self.ui.deviceInfoLabel.text = _("PyTorch is installed on the first run (through the PyTorch extension).")
            return
        from VISTA3DSlicerLib.model import describe_device

        self.ui.deviceInfoLabel.text = describe_device(self.ui.deviceComboBox.currentText)

    # -- automatic segmentation ---------------------------------------------------------------

    def onSegment(self) -> None:
        parameters = self.parameters
        weights = chosenWeights(parameters.model)
        with reportingErrors(_("Could not start VISTA3D."), waitCursor=False):
            installDependencies(self.logic, parameters.runtime)
            self.runningJob = self.logic.segment(
                parameters.inputVolume, self.labelTree.selection.ids, parameters.outputSegmentation,
                device=parameters.device, precision=parameters.precision, runtime=parameters.runtime,
                weights=weights,
                replaceExisting=self._replaceExisting(parameters.outputSegmentation, self.labelTree.selection.ids),
                allowDownload=downloadAllowed(self.logic.missingWeights(weights, parameters.model)),
                waitForCompletion=False, progress=self.showProgress,
                onDone=self._onSegmented, onError=self.onJobFailed,
            )
        self.updateButtons()

    def _replaceExisting(self, segmentationNode, labelIds: list[int]) -> bool:
        """Ask before a result replaces segments VISTA3D made earlier (the user's answer, for the
        Logic); a "no" cancels the run."""
        existing = self.logic.segmentsToReplace(segmentationNode, labelIds) if segmentationNode else []
        if not existing:
            return False
        if not slicer.util.confirmOkCancelDisplay(
                _("'{segmentation}' already has {names}. Replace them with the new result?").format(
                    segmentation=segmentationNode.GetName(), names=namesInShort(existing))):
            raise Cancelled()
        return True

    def _onSegmented(self, segmentationNode) -> None:
        self.finishJob()
        self.parameters.outputSegmentation = segmentationNode
        self.ui.statusLabel.text = _("Done: {count} segments in '{name}'.").format(
            count=segmentationNode.GetSegmentation().GetNumberOfSegments(), name=segmentationNode.GetName())


#
# VISTA3DSlicerLogic
#


class VISTA3DSlicerLogic(ScriptedLoadableModuleLogic):
    """VISTA3D without the panel, usable from Slicer's Python console and from scripts::

        logic = VISTA3DSlicerLogic()
        segmentationNode = logic.segment(volumeNode, ["liver", "spleen"], allowDownload=True)

    Every long method takes ``waitForCompletion`` (default True: returns the result, keeping
    Slicer responsive while it waits) or, with False, returns a ``Job`` at once and calls
    ``onDone`` / ``onError`` on the main thread; a download it is allowed to make is part of that
    job. The Logic never asks the user anything: what the panel asks (replace earlier results,
    download weights, install packages) comes in as arguments, and without them it refuses with
    a ``VISTA3DError`` saying what to pass. Call it from the main thread.

    It owns the network it keeps loaded and the click session of the volume being corrected.
    """

    # One GPU thread for every logic instance (PyTorch's cuDNN caches are per thread).
    _worker: Optional[Worker] = None

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.snapFraction = 0.0
        self.model = DEFAULT_MODEL  # which of models.MODELS runs (the panel sets it from its parameter node)
        self.modality: Optional[str] = None  # a CT and MR model's "ct", "mri-body" or "mri-brain"; None: inferred
        self.server: Optional[str] = None  # a `vista3d serve` URL to run on instead of this computer
        self.serverToken: Optional[str] = None
        self._engines = EngineCache()  # used on the worker thread
        self._clickSession: Optional[ClickSession] = None  # read and replaced on the main thread only
        self._supervoxelNode = None

    def getParameterNode(self) -> VISTA3DSlicerParameterNode:
        return VISTA3DSlicerParameterNode(super().getParameterNode())

    # -- jobs ---------------------------------------------------------------------------------

    @classmethod
    def worker(cls) -> Worker:
        if cls._worker is None:
            cls._worker = Worker()
            cls._dispatchTimer = qt.QTimer()
            cls._dispatchTimer.setInterval(50)
            cls._dispatchTimer.connect("timeout()", cls._worker.dispatch)
            cls._dispatchTimer.start()
        return cls._worker

    def _run(self, function: Callable, *, name: str, key: Optional[str] = None, waitForCompletion: bool = True,
             progress: Optional[ProgressCallback] = None, onDone: Optional[Callable] = None,
             onError: Optional[Callable] = None, apply: Optional[Callable] = None,
             cancel: Optional[CancelToken] = None):
        """``function(progress, cancel)`` on the worker, ``apply(result)`` (MRML writes) on the main
        thread (``Worker.run``); waiting, Slicer stays responsive and ``cancel`` stops the job."""
        return self.worker().run(function, name=name, key=key, wait=waitForCompletion, pump=slicer.app.processEvents,
                                 progress=progress, apply=apply, on_done=onDone, on_error=onError, cancel=cancel)

    # -- automatic segmentation ---------------------------------------------------------------

    def segment(
        self,
        volumeNode: vtkMRMLScalarVolumeNode,
        labelPrompt: Union[list[Union[str, int]], str, None],
        segmentationNode: Optional[vtkMRMLSegmentationNode] = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
        runtime: str = "torch",
        weights: Union[str, Path, None] = None,
        replaceExisting: bool = False,
        allowDownload: bool = False,
        waitForCompletion: bool = True,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        onDone: Optional[Callable] = None,
        onError: Optional[Callable] = None,
    ):
        """Segment ``labelPrompt`` of ``volumeNode`` into ``segmentationNode`` (None: a new one).

        ``labelPrompt``: a prompt string ("liver, spleen, 1, 3" or "everything"), a list of names
        and VISTA3D IDs, or None for everything. Segments of the same classes already in
        ``segmentationNode`` (``segmentsToReplace``) are replaced only with ``replaceExisting``;
        otherwise nothing changes and a ``VISTA3DError`` says so. ``weights``: a checkpoint file;
        None uses $VISTA3D_WEIGHTS or the download cache, and downloads them only with
        ``allowDownload``. ``runtime``: one of ``model.RUNTIMES``. Returns the segmentation node
        (or, without ``waitForCompletion``, the Job; ``onDone(segmentationNode)`` follows on the
        main thread).
        """
        if volumeNode is None:
            raise VISTA3DError(_("No input volume is selected. Load a CT volume and select it as the input."))
        requireDependencies(runtime)
        self.automaticPrompt(labelPrompt)  # a bad prompt is refused before the voxels are read
        image = slicer_adapter.image_from_volume_node(volumeNode)
        labelIds = self.automaticPrompt(labelPrompt, image)
        replaced = self.segmentsToReplace(segmentationNode, labelIds) if segmentationNode is not None else []
        if replaced and not replaceExisting:
            raise VISTA3DError(_("Nothing was changed: {names} would have been replaced. Choose another output "
                                 "segmentation, or agree to replace them (replaceExisting=True).").format(
                                     names=namesInShort(replaced)))
        job = self._labelmapJob(weights, device, precision, runtime, allowDownload)
        return self._run(lambda report, cancel: job(image, labelIds, report, cancel), name=f"Segmenting {volumeNode.GetName()}", waitForCompletion=waitForCompletion,
                         progress=progress, onDone=onDone, onError=onError, cancel=cancel,
                         apply=lambda labelmap: self._showLabelmap(labelmap, volumeNode, segmentationNode))

    def automaticPrompt(self, labelPrompt, image=None) -> list[int]:
        """The chosen model's class IDs for ``labelPrompt``; "everything" is that of the modality
        chosen, else of the one ``image`` looks like (``ct_check.choose_modality``)."""
        model, modality = MODELS[self.model], self.chosenModality()
        if image is not None and len(model.labels.modalities) > 1:  # the voxels are read only where there is a choice
            modality = choose_modality(model, image, modality).modality
        return model.labels.automatic_prompt(labelPrompt, modality)

    def chosenModality(self) -> Optional[str]:
        """``modality`` for a model with several (None: inferred); None for a CT-only model, for which a
        choice made for another model stays in the parameter node unused (the panel disables the box)."""
        return self.modality if len(MODELS[self.model].labels.modalities) > 1 else None

    def _labelmapJob(self, weights, device: str, precision: str, runtime: str, allowDownload: bool) -> Callable:
        """The worker's part of segmenting: ``job(image, labelIds, progress, cancel)`` gives the labelmap
        of ``image``. A checkpoint it may download is downloaded by its first call."""
        settingsOf = self._engineSettings(weights, device, precision, runtime, allowDownload)[1]
        settings = []

        def job(image, labelIds, report, cancel):
            if not settings:
                settings.append(settingsOf(report, cancel))
            return self._engines.get(settings[0]).segment(image, labelIds, progress=report, cancel=cancel)

        return job

    def _showLabelmap(self, labelmap, volumeNode, segmentationNode=None) -> vtkMRMLSegmentationNode:
        """Segments of ``labelmap`` into ``segmentationNode`` (None: a new one beside ``volumeNode``)."""
        target = segmentationNode or self.newSegmentationNode(volumeNode)
        if not slicer_adapter.labelmap_to_segmentation(labelmap, target, volumeNode, MODELS[self.model].labels):
            logging.warning("VISTA3D found none of the requested structures in %s", volumeNode.GetName())
        self.forgetEdits()  # the segments changed under the click editor
        return target

    def segmentsToReplace(self, segmentationNode: vtkMRMLSegmentationNode,
                          labelPrompt: Union[list[Union[str, int]], str, None]) -> list[str]:
        """Names of the segments of ``segmentationNode`` that a result for ``labelPrompt`` replaces
        (those VISTA3D made for one of its classes; never segments the user drew)."""
        return segments_replaced(slicer_adapter.segment_labels(segmentationNode), self.automaticPrompt(labelPrompt))

    def segmentVolumes(self, volumeNodes: list, labelPrompt, outputFolder: Union[str, Path, None] = None, *,
                       outputFormat: str = "seg.nrrd", overwrite: bool = False, device: str = "auto",
                       precision: str = "fp32", runtime: str = "torch", weights: Union[str, Path, None] = None,
                       allowDownload: bool = False, progress: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelToken] = None):
        """Segment each volume into a new segmentation of its own, with the batch workflow of
        ``vista3d batch`` (``VISTA3DSlicerLib.batch``): a failing volume is reported and the batch goes
        on; cancel stops after the current window. With ``outputFolder``, each labelmap is also saved
        there as ``<volume name>.<outputFormat>`` with ``vista3d_summary.csv``, and volumes whose file
        is there already are skipped (unless ``overwrite``), so that a batch run again finishes what an
        interrupted one started. The other options are ``segment``'s. Returns a ``batch.BatchReport``."""
        from VISTA3DSlicerLib.batch import segment_cases, volume_cases

        requireDependencies(runtime)
        self.automaticPrompt(labelPrompt)  # a bad prompt is refused before any volume is read
        cases = volume_cases([node.GetName() for node in volumeNodes],
                             [lambda node=node: slicer_adapter.image_from_volume_node(node) for node in volumeNodes])
        volumeOf = {case.name: node for case, node in zip(cases, volumeNodes)}
        job = self._labelmapJob(weights, device, precision, runtime, allowDownload)

        def segment(case, image, report, token):
            labelIds = self.automaticPrompt(labelPrompt, image)  # each volume's own modality
            return self._run(lambda r, c: job(image, labelIds, r, c), name=f"Segmenting {case.source}",
                             progress=report, cancel=token)

        return segment_cases(
            cases, segment, out_dir=Path(outputFolder) if outputFolder else None, output_format=outputFormat,
            overwrite=overwrite, progress=progress, cancel=cancel, label_space=MODELS[self.model].labels,
            on_labelmap=lambda case, labelmap: self._showLabelmap(labelmap, volumeOf[case.name]))

    def newSegmentationNode(self, volumeNode) -> vtkMRMLSegmentationNode:
        """A new segmentation "<volume> VISTA3D" on the volume's grid, under its transform."""
        return slicer_adapter.new_segmentation_node(volumeNode, f"{volumeNode.GetName()} VISTA3D")

    # -- points -------------------------------------------------------------------------------

    def pointListNode(self, positive: bool) -> vtkMRMLMarkupsFiducialNode:
        """The scene's + (green) or − (red) point list, made on first use."""
        return slicer_adapter.point_list_node(slicer.mrmlScene, "VISTA3D + points" if positive else "VISTA3D - points",
                                              POSITIVE_COLOR if positive else NEGATIVE_COLOR, "+" if positive else "-")

    def updateSegmentFromPoints(self, volumeNode, segmentationNode, segmentId: str, positiveNode, negativeNode, *,
                                device: str = "auto", precision: str = "fp32", runtime: str = "torch", weights=None,
                                allowDownload: bool = False, waitForCompletion: bool = True, progress=None,
                                onDone=None, onError=None):
        """Recompute a segment from the points of the two lists (all of them: added, moved or
        removed ones are all handled) and rewrite only the part of it that changed. A point outside
        the volume is refused (``onError``) and nothing changes. Returns whether the segment changed.

        The click session (the volume's encoder features and every segment's point history) is
        kept for the volume and the engine settings; clicks with other settings, or on a changed
        volume, start a new one and let the old one and its network go.
        """
        requireDependencies(runtime)
        points = ([PointPrompt(p, True) for p in slicer_adapter.points_from_markups(positiveNode, volumeNode)]
                  + [PointPrompt(p, False) for p in slicer_adapter.points_from_markups(negativeNode, volumeNode)])
        label = slicer_adapter.segment_label(segmentationNode, segmentId)
        current = slicer_adapter.segment_mask(segmentationNode, segmentId, volumeNode)
        sessionOf = self._clickSessionFor(volumeNode, *self._engineSettings(weights, device, precision, runtime,
                                                                            allowDownload))
        fraction = self.snapFraction

        def work(report, cancel):
            session = sessionOf(report, cancel)
            session.editor.snap_fraction = fraction
            try:
                return session, session.editor.set_points(segmentId, label, points, current, progress=report,
                                                          cancel=cancel)
            except VISTA3DError as error:  # a refused point: the session (its features) is still worth keeping
                return session, error

        return self._run(work, name="Points", key="points", waitForCompletion=waitForCompletion, progress=progress,
                         onDone=onDone, onError=onError,
                         apply=lambda result: self._applyEdit(result, segmentationNode, segmentId, volumeNode))

    def stepHistory(self, which: str, volumeNode, segmentationNode, segmentId: str, *, waitForCompletion=True,
                    onDone=None, onError=None):
        """Undo (``which="undo"``) or redo the last change of a segment's points."""
        session = self._clickSession
        if session is None:
            raise VISTA3DError(_("There are no points to undo or redo."))

        def work(report, cancel):
            return session, (session.editor.undo(segmentId) if which == "undo" else session.editor.redo(segmentId))

        return self._run(work, name=which, waitForCompletion=waitForCompletion, onDone=onDone, onError=onError,
                         apply=lambda result: self._applyEdit(result, segmentationNode, segmentId, volumeNode))

    def reshow(self, segmentationNode, segmentId: str, volumeNode, *, waitForCompletion=True, onDone=None, onError=None):
        """Rewrite a segment after the snap fraction or the supervoxels changed."""
        session = self._clickSession
        if session is None:
            raise VISTA3DError(_("This segment has no points yet: place a point on it first."))
        fraction = self.snapFraction

        def work(report, cancel):
            session.editor.snap_fraction = fraction
            return session, session.editor.reshow(segmentId)

        return self._run(work, name="Snap", key="points", waitForCompletion=waitForCompletion, onDone=onDone,
                         onError=onError,
                         apply=lambda result: self._applyEdit(result, segmentationNode, segmentId, volumeNode))

    def _clickSessionFor(self, volumeNode, settings: Optional[EngineSettings],
                         settingsOf) -> Callable[[ProgressCallback, CancelToken], ClickSession]:
        """A function (for the worker) giving the click session of ``volumeNode`` for the engine
        settings (``panel.click_session_for``); a session that does not match is dropped now. An
        automatic-only model is refused here, before anything runs."""
        MODELS[self.model].check_clicks()
        imageData = volumeNode.GetImageData()
        volume = (volumeNode.GetID(), imageData.GetMTime() if imageData else 0)
        self._clickSession, sessionOf = click_session_for(
            self._clickSession, volume, settings, settingsOf,
            lambda: slicer_adapter.image_from_volume_node(volumeNode), self._engines)
        return sessionOf

    def _applyEdit(self, result, segmentationNode, segmentId: str, volumeNode) -> bool:
        """On the main thread: make the job's session the Logic's, then write its edit (or raise
        the error it refused the points with)."""
        session, edit = result
        self._clickSession = session
        if isinstance(edit, Exception):
            raise edit
        if edit.changed is None:
            return False
        with slicer.util.RenderBlocker():
            slicer_adapter.write_segment_region(segmentationNode, segmentId, edit.mask, edit.changed, volumeNode)
        return True

    def _editor(self) -> Optional[ClickEditor]:
        return self._clickSession.editor if self._clickSession is not None else None

    def pointsOf(self, segmentId: str) -> list[PointPrompt]:
        return self._editor().points(segmentId) if self._editor() is not None and segmentId else []

    def canUndo(self, segmentId: str) -> bool:
        return bool(self._editor() is not None and segmentId and self._editor().can_undo(segmentId))

    def canRedo(self, segmentId: str) -> bool:
        return bool(self._editor() is not None and segmentId and self._editor().can_redo(segmentId))

    def forgetEdits(self) -> None:
        """Segments were rewritten by a run: point histories no longer describe them."""
        if self._editor() is not None:
            self._editor().forget_all()

    def forgetVolume(self) -> None:
        """The scene closed: drop the click session (the network stays loaded)."""
        self._clickSession = None
        self._supervoxelNode = None

    # -- zero-shot ----------------------------------------------------------------------------

    def newZeroShotSegment(self, segmentationNode, volumeNode, name: str = "") -> str:
        """A new, empty segment for a structure outside the 127 classes, with its own zero-shot ID."""
        MODELS[self.model].check_clicks()
        label = labels.next_zero_shot_id(
            used for _name, used in slicer_adapter.segment_labels(segmentationNode) if used is not None)
        return slicer_adapter.add_segment(segmentationNode, name.strip() or labels.label_info(label).display_name,
                                          label, volumeNode)

    def computeSupervoxels(self, volumeNode, segmentId: Optional[str], *, device="auto", precision="fp32",
                           samWeights=None, samKind: str = "vit_b", allowDownload: bool = False,
                           waitForCompletion=True, progress=None, onDone=None, onError=None):
        """SAM supervoxels of the whole volume (``segmentId`` None) or around that segment's points;
        they are used to snap zero-shot segments and shown as an overlay. SAM's checkpoint is
        downloaded only with ``allowDownload``; for a session on a server its own SAM makes them and
        nothing is loaded here. Returns their number."""
        from VISTA3DSlicerLib.remote import RemoteSession

        requireDependencies()
        session = self._clickSession
        if session is None:
            raise VISTA3DError(_("Place a point on the structure first; supervoxels are computed for its volume."))
        editor = session.editor
        box = editor.snap_box(segmentId, SUPERVOXEL_MARGIN) if segmentId else None
        onServer = isinstance(editor.session, RemoteSession)  # the session's place, whatever the panel says now
        samPathOf = None if onServer else locate_checkpoint(f"sam_{samKind}", samWeights, allowDownload)[1]

        def work(report, cancel):
            from VISTA3DSlicerLib.zero_shot import load_sam, on_the_server, on_this_machine

            make = on_the_server if onServer else on_this_machine(
                *load_sam(samKind, samPathOf(report, cancel), device), precision)
            supervoxels = make(editor.session, box, progress=report, cancel=cancel)
            editor.set_supervoxels(supervoxels)
            return supervoxels

        def apply(supervoxels) -> int:
            self._supervoxelNode = slicer_adapter.show_label_volume(
                supervoxels, self._supervoxelNode, slicer.mrmlScene, "VISTA3D supervoxels", volumeNode)
            return int(supervoxels.array.max())

        return self._run(work, name="Supervoxels", waitForCompletion=waitForCompletion, progress=progress,
                         onDone=onDone, onError=onError, apply=apply)

    def showSupervoxelBoundaries(self, show: bool) -> None:
        """Outline the supervoxels in the slice views (or take the outline away)."""
        if self._supervoxelNode is not None and self._supervoxelNode.GetScene() is not None:
            slicer_adapter.outline_in_slice_views(self._supervoxelNode, show)

    # -- export -------------------------------------------------------------------------------

    def export(self, segmentationNode, referenceVolumeNode, path: Union[str, Path], overwrite: bool = False):
        """Write a segmentation as a labelmap with VISTA3D IDs (.nii.gz, .nrrd or .seg.nrrd) and a
        CSV colour table with terminology beside it, painting one segment at a time. The
        segmentation itself is not changed."""
        from VISTA3DSlicerLib.export import export_segmentation

        if referenceVolumeNode is None:
            raise VISTA3DError(_("Select the volume the segmentation belongs to (its grid is the labelmap's)."))
        requireDependencies()
        segments = slicer_adapter.export_segments(segmentationNode, referenceVolumeNode)
        return export_segmentation(segments, slicer_adapter.ijk_to_ras(referenceVolumeNode), path,
                                   overwrite=overwrite)

    # -- weights and engine -------------------------------------------------------------------

    def missingWeights(self, weights: Union[str, Path, None] = None, model: str = "vista3d"):
        """The ``weights.WeightsSource`` that ``allowDownload`` would download for ``model`` (one of
        ``weights.MODELS``: "vista3d", "sam_vit_b", ...), or None when its checkpoint is here (or a
        file was named)."""
        return missing_weights(model, weights)

    def downloadWeights(self, source, *, waitForCompletion=True, progress=None, onDone=None, onError=None):
        """Download ``source`` (a ``weights.WeightsSource``) into the cache on the worker; returns its path."""
        from VISTA3DSlicerLib import weights

        requireDependencies()
        return self._run(lambda report, cancel: weights.download(source, progress=report, cancel=cancel),
                         name="Download", waitForCompletion=waitForCompletion, progress=progress, onDone=onDone,
                         onError=onError)

    def _engineSettings(self, weights, device: str, precision: str, runtime: str, allowDownload: bool):
        """``EngineSettings.locate``; a click session made with other settings is dropped now, so
        that its network can be freed before the next one loads."""
        settings, settingsOf = EngineSettings.locate(weights, device, precision, runtime, allowDownload, self.model,
                                                     self.server, self.serverToken)
        if self._clickSession is not None and self._clickSession.settings != settings:
            self._clickSession = None
        return settings, settingsOf

    def testConnection(self, url: str, token: str) -> str:
        """What the ``vista3d serve`` server at ``url`` runs, in one line; a ``VISTA3DError`` says why not."""
        from VISTA3DSlicerLib.remote import RemoteEngine

        engine = RemoteEngine(url, token)
        return f"{engine.model.title} on {engine.device} ({engine.precision}), vista3dslicer {engine.info.get('version')}"

    def dropEngine(self) -> None:
        """Let the network go (its weights were deleted, say), with the click session that holds it."""
        self._clickSession = None
        self._engines.drop()

    # -- dependencies -------------------------------------------------------------------------

    def missingDependencies(self, runtime: str = "torch") -> list:
        """The requirements of VISTA3D (and of ``runtime``) that the installed packages do not meet:
        not installed, or at a version outside the range (another extension may have installed
        one), as ``dependencies.UnmetRequirement``s; ``str()`` of each says which and why."""
        from VISTA3DSlicerLib.dependencies import requirements, unmet_requirements

        return unmet_requirements(requirements(runtime))

    def installDependencies(self, runtime: str = "torch") -> None:
        """Install what ``missingDependencies`` lists, without asking: PyTorch through the PyTorch
        extension (the build that matches this computer's GPU driver), then the other packages
        with pip. Call it from the main thread (pip in a thread crashes Slicer on macOS)."""
        from VISTA3DSlicerLib.dependencies import install

        install(self.missingDependencies(runtime), slicer.util.pip_install, self._installTorch)

    @staticmethod
    def _installTorch(requirement: str) -> None:
        """Install torch meeting ``requirement`` through the PyTorch extension."""
        from packaging.requirements import Requirement

        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise VISTA3DError(_(
                "VISTA3D needs PyTorch, which Slicer installs through the PyTorch extension. Install "
                "the PyTorch extension from the Extensions Manager, restart Slicer and try again."
            )) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=str(Requirement(requirement).specifier))
        if torch is None:
            raise VISTA3DError(_("PyTorch was not installed, and VISTA3D cannot run without it."))


#
# VISTA3DSlicerTest
#


class VISTA3DSlicerTest(ScriptedLoadableModuleTest):
    """Self-test in Slicer (``ctest -R py_VISTA3DSlicer``): the adapter's geometry, then a real run
    with a small random-weights checkpoint (auto segmentation, one + and one − point, undo)."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        VISTA3DSlicerLogic().forgetVolume()

    def runTest(self):
        self.setUp()
        self.test_adapter_round_trip()
        self.setUp()
        self.test_segment_correct_and_export()

    def test_adapter_round_trip(self):
        """Volume node -> Image -> labelmap -> segmentation keeps voxels, geometry and other segments."""
        import numpy as np
        import SampleData

        volumeNode = SampleData.downloadSample("CTChest")
        image = slicer_adapter.image_from_volume_node(volumeNode)
        self.assertEqual(image.shape, tuple(volumeNode.GetImageData().GetDimensions()))
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        np.testing.assert_allclose(image.affine, slicer.util.arrayFromVTKMatrix(ijkToRas))

        liver, spleen = labels.find_label("liver"), labels.find_label("spleen")
        labelmap = np.zeros(image.shape, np.uint8)
        x, y, z = (n // 4 for n in image.shape)  # boxes in quarters of the volume, whatever its size
        labelmap[x:2 * x, y:3 * y, z:2 * z] = liver
        labelmap[2 * x:3 * x, y:2 * y, 2 * z:3 * z] = spleen
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        manualId = segmentationNode.GetSegmentation().AddEmptySegment("", "drawn by hand")
        segmentIds = slicer_adapter.labelmap_to_segmentation(image.with_array(labelmap), segmentationNode, volumeNode)
        self.assertEqual(len(segmentIds), 2)
        for segmentId, label in zip(segmentIds, (liver, spleen)):
            np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentationNode, segmentId, volumeNode),
                                          labelmap == label)
            self.assertEqual(slicer_adapter.segment_label(segmentationNode, segmentId), label)

        # Rewriting a region touches only that region of that segment, and leaves the rest of it.
        mask = labelmap == liver
        mask[x:x + 4, y:y + 4, z:z + 2] = False
        mask[3 * x:3 * x + 4, 3 * y:3 * y + 4, z:z + 2] = True
        region = (slice(x, 3 * x + 4), slice(y, 3 * y + 4), slice(z, z + 2))
        slicer_adapter.write_segment_region(segmentationNode, segmentIds[0], mask, region, volumeNode)
        np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentationNode, segmentIds[0], volumeNode), mask)
        np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentationNode, segmentIds[1], volumeNode),
                                      labelmap == spleen)
        self.assertIsNotNone(segmentationNode.GetSegmentation().GetSegment(manualId))
        self.delayDisplay("Adapter round trip passed")

    def test_segment_correct_and_export(self):
        """Auto segmentation, a + and a − point, undo and export, with a tiny random network of
        VISTA3D's design: the segment in Slicer must equal what the library computes for the same points."""
        import tempfile

        import numpy as np
        import SampleData
        import torch

        from VISTA3DSlicerLib.engine import Engine
        from VISTA3DSlicerLib.interactive import Session
        from VISTA3DSlicerLib.model import ModelSpec, build_network

        logic = VISTA3DSlicerLogic()
        if logic.missingDependencies():
            logic.installDependencies()
        volumeNode = SampleData.downloadSample("CTChest")
        folder = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        network = build_network(ModelSpec(embed_dim=8, blocks_down=(1, 1, 1, 1, 1))).eval()
        checkpoint = folder / "small_model.pt"
        torch.save(network.state_dict(), checkpoint)

        segmentationNode = logic.segment(volumeNode, ["aorta", "trachea"], weights=checkpoint, device="cpu")
        image = slicer_adapter.image_from_volume_node(volumeNode)
        expected = Engine(network).segment(image, [6, 57])
        segmentation = segmentationNode.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            label = slicer_adapter.segment_label(segmentationNode, segmentId)
            self.assertEqual(segmentation.GetSegment(segmentId).GetName(), labels.label_info(label).display_name)
            np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentationNode, segmentId, volumeNode),
                                          expected.array == label)
        self.delayDisplay("Automatic segmentation matches the library")

        segmentId = segmentation.GetNthSegmentID(0)
        label = slicer_adapter.segment_label(segmentationNode, segmentId)
        before = slicer_adapter.segment_mask(segmentationNode, segmentId, volumeNode)
        centre = np.array(image.shape) // 2
        positive, negative = logic.pointListNode(True), logic.pointListNode(False)
        positive.AddControlPoint(image.index_to_ras(centre.astype(float)).tolist())
        negative.AddControlPoint(image.index_to_ras((centre + [12, 0, 2]).astype(float)).tolist())
        changed = logic.updateSegmentFromPoints(volumeNode, segmentationNode, segmentId, positive, negative,
                                                weights=checkpoint, device="cpu")
        after = slicer_adapter.segment_mask(segmentationNode, segmentId, volumeNode)
        structure = Session(Engine(network), image).structure(label, mask=before)
        reference = structure.add_clicks([(centre, True), (centre + [12, 0, 2], False)]).mask
        np.testing.assert_array_equal(after, reference)
        self.assertEqual(changed, not np.array_equal(before, after))
        self.delayDisplay("Points match the library")

        logic.stepHistory("undo", volumeNode, segmentationNode, segmentId)
        np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentationNode, segmentId, volumeNode), before)

        result = logic.export(segmentationNode, volumeNode, folder / "result.seg.nrrd")
        self.assertTrue(result.labelmap_path.is_file() and result.colour_table_path.is_file())
        self.delayDisplay("VISTA3D self-test passed")
