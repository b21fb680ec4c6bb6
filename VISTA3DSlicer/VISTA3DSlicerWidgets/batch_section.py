"""Batch: segment the ticked loaded volumes one after another, into the scene and, when a folder
is chosen, into files with the batch workflow's naming, resume and summary."""

import qt
import slicer
from slicer.i18n import tr as _

from VISTA3DSlicerLib.batch import SUMMARY_NAME
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.progress import CancelToken

from .dialogs import downloadAllowed, installDependencies, reportingErrors
from .weights_section import chosenWeights


class BatchSection:
    """The volumes of the scene to segment one after another, the output folder, and the run."""

    def __init__(self, panel, labelTree) -> None:
        self.panel = panel
        self.labelTree = labelTree  # what to segment: the same ticks as a single run
        self.cancel = None  # the running batch's CancelToken
        panel.ui.batchSelectAllCheckBox.connect("toggled(bool)", self.onSelectAll)
        panel.ui.batchRunButton.connect("clicked(bool)", self.onRun)
        panel.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.refreshList)
        panel.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.refreshList)
        self.refreshList()

    def refreshList(self, caller=None, event=None) -> None:
        """The scene's scalar volumes (not labelmaps, not hidden ones), keeping their ticks."""
        volumeList = self.panel.ui.batchVolumeList
        checked = set(self._checkedIds())
        volumeList.clear()
        for volumeNode in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if volumeNode.IsA("vtkMRMLLabelMapVolumeNode") or volumeNode.GetHideFromEditors():
                continue
            item = qt.QListWidgetItem(volumeNode.GetName())
            item.setData(qt.Qt.UserRole, volumeNode.GetID())
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if volumeNode.GetID() in checked else qt.Qt.Unchecked)
            volumeList.addItem(item)

    def _checkedIds(self) -> list[str]:
        volumeList = self.panel.ui.batchVolumeList
        return [volumeList.item(row).data(qt.Qt.UserRole) for row in range(volumeList.count)
                if volumeList.item(row).checkState() == qt.Qt.Checked]

    def onSelectAll(self, checked: bool) -> None:
        volumeList = self.panel.ui.batchVolumeList
        for row in range(volumeList.count):
            volumeList.item(row).setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)

    def onRun(self) -> None:
        panel, parameters = self.panel, self.panel.parameters
        volumeNodes = [slicer.mrmlScene.GetNodeByID(nodeId) for nodeId in self._checkedIds()]
        labelIds = self.labelTree.selection.ids
        with reportingErrors(_("The batch could not start.")):
            if not volumeNodes:
                raise VISTA3DError(_("Tick the volumes to segment first."))
            if not labelIds:
                raise VISTA3DError(_("Tick the structures to segment (or Everything) first."))
            installDependencies(panel.logic, parameters.runtime)
            weights = chosenWeights(parameters.model)
            allowDownload = downloadAllowed(panel.logic.missingWeights(weights, parameters.model))
            self.cancel = CancelToken()
            panel.updateButtons()
            outputFolder = panel.ui.batchOutputPathLineEdit.currentPath or None
            try:
                report = panel.logic.segmentVolumes(
                    volumeNodes, labelIds, outputFolder, device=parameters.device, precision=parameters.precision,
                    runtime=parameters.runtime, weights=weights, allowDownload=allowDownload,
                    progress=panel.showProgress, cancel=self.cancel)
            finally:
                self.cancel = None
                panel.finishJob()
            summary = report.summary()
            if outputFolder:
                summary += " " + _("Files and {summary}: {folder}").format(summary=SUMMARY_NAME, folder=outputFolder)
            panel.ui.batchReportLabel.text = summary
            panel.ui.statusLabel.text = summary
