"""Export: a segmentation as a labelmap file with VISTA3D's label IDs and its colour table, or
through Slicer's DICOM export as a DICOM SEG."""

from pathlib import Path

import slicer
from slicer.i18n import tr as _

from VISTA3DSlicerLib.errors import VISTA3DError

from .dialogs import installDependencies, reportingErrors

#: The labelmap file types Export writes (the parameter node's ``exportFormat`` choices).
EXPORT_FORMATS = (".nii.gz", ".nrrd", ".seg.nrrd")


class ExportSection:
    """The segmentation to export, the file, and Slicer's DICOM export."""

    def __init__(self, panel) -> None:
        self.panel = panel
        panel.ui.exportButton.connect("clicked(bool)", self.onExport)
        panel.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)

    def onExport(self) -> None:
        panel, parameters = self.panel, self.panel.parameters
        segmentationNode = panel.ui.exportSegmentationSelector.currentNode()
        with reportingErrors(_("Export failed."), waitCursor=True):
            if segmentationNode is None:
                raise VISTA3DError(_("Choose the segmentation to export."))
            path = panel.ui.exportPathLineEdit.currentPath
            if not path:
                raise VISTA3DError(_("Choose the file to export to."))
            if not path.lower().endswith(EXPORT_FORMATS):
                path += parameters.exportFormat
            installDependencies(panel.logic)
            from VISTA3DSlicerLib.export import colour_table_path_for

            overwrite = False
            existing = [p for p in (Path(path), colour_table_path_for(path)) if p.exists()]
            if existing:
                overwrite = slicer.util.confirmOkCancelDisplay(
                    _("These files exist:\n{files}\nReplace them?").format(files="\n".join(map(str, existing))))
                if not overwrite:
                    return
            result = panel.logic.export(segmentationNode, parameters.inputVolume, path, overwrite=overwrite)
            message = _("Exported {count} segments to {labelmap} and {table}.").format(
                count=len(result.ids), labelmap=result.labelmap_path, table=result.colour_table_path)
            if result.overlap_voxels:
                message += " " + _("{voxels} voxels belonged to more than one segment; the later segment has them.").format(
                    voxels=result.overlap_voxels)
            panel.ui.statusLabel.text = message

    def onExportDicom(self) -> None:
        segmentationNode = self.panel.ui.exportSegmentationSelector.currentNode()
        if segmentationNode is None:
            return
        # Slicer's own DICOM export writes a DICOM SEG that references the source series.
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        dialog = slicer.qSlicerDICOMExportDialog()
        dialog.setMRMLScene(slicer.mrmlScene)
        dialog.execDialog(shNode.GetItemByDataNode(segmentationNode))
