"""Zero-shot: new segments for structures outside VISTA3D's classes, corrected with the same points,
and SAM supervoxels that snap them."""

from slicer.i18n import tr as _

from VISTA3DSlicerLib.errors import VISTA3DError

from .dialogs import downloadAllowed, installDependencies, reportingErrors
from .weights_section import chosenWeights


class ZeroShotSection:
    """A new segment for a structure outside the classes (the points section then corrects it),
    supervoxels, and the snap fraction that reshows the target segment."""

    def __init__(self, panel, points) -> None:
        self.panel = panel
        self.points = points  # the PointsSection: its target segment, its applied/refused reports
        ui = panel.ui
        ui.newZeroShotSegmentButton.connect("clicked(bool)", self.onNewSegment)
        ui.computeSupervoxelsButton.connect("clicked(bool)", self.onComputeSupervoxels)
        ui.snapSlider.connect("valueChanged(double)", self.onSnapChanged)
        ui.showSupervoxelsCheckBox.connect("toggled(bool)", panel.logic.showSupervoxelBoundaries)

    def onNewSegment(self) -> None:
        panel, parameters, ui = self.panel, self.panel.parameters, self.panel.ui
        with reportingErrors(_("Could not add a zero-shot segment.")):
            if not parameters.inputVolume:
                raise VISTA3DError(_("Select an input volume first."))
            if not parameters.outputSegmentation:
                parameters.outputSegmentation = panel.logic.newSegmentationNode(parameters.inputVolume)
            segmentId = panel.logic.newZeroShotSegment(
                parameters.outputSegmentation, parameters.inputVolume, ui.zeroShotNameLineEdit.text)
            ui.targetSegmentSelector.setCurrentNode(parameters.outputSegmentation)
            ui.targetSegmentSelector.setCurrentSegmentID(segmentId)
            ui.positivePointButton.checked = True
            ui.interactiveStatusLabel.text = _("Click on the structure in a slice view.")

    def onComputeSupervoxels(self) -> None:
        panel, parameters = self.panel, self.panel.parameters
        with reportingErrors(_("Could not compute supervoxels."), waitCursor=False):
            installDependencies(panel.logic)
            samWeights = chosenWeights("sam_vit_b")
            # On a server its own SAM makes them: nothing to download here.
            missing = None if panel.logic.server else panel.logic.missingWeights(samWeights, "sam_vit_b")
            panel.runningJob = panel.logic.computeSupervoxels(
                parameters.inputVolume, None if parameters.supervoxelsWholeVolume else self.points.targetSegmentId(),
                device=parameters.device, precision=parameters.precision, samWeights=samWeights,
                allowDownload=downloadAllowed(missing),
                waitForCompletion=False, progress=panel.showProgress,
                onDone=self._onSupervoxels, onError=panel.onJobFailed)
        panel.updateButtons()

    def _onSupervoxels(self, count: int) -> None:
        self.panel.finishJob()
        self.panel.ui.statusLabel.text = _(
            "{count} supervoxels ready: move the snap slider to snap zero-shot segments.").format(count=count)
        self.panel.logic.showSupervoxelBoundaries(self.panel.ui.showSupervoxelsCheckBox.checked)

    def onSnapChanged(self, value: float) -> None:
        panel, segmentId = self.panel, self.points.targetSegmentId()
        panel.logic.snapFraction = value
        if segmentId and panel.logic.canUndo(segmentId):
            panel.logic.reshow(panel.ui.targetSegmentSelector.currentNode(), segmentId, panel.parameters.inputVolume,
                               waitForCompletion=False, onDone=self.points.onApplied, onError=self.points.onRefused)
