"""Model > weights: which checkpoint each model uses (the downloaded one, or a file the user chose,
kept in Slicer's settings), and downloading, showing and deleting the downloaded ones."""

from typing import Optional

import qt
import slicer
from slicer.i18n import tr as _

from VISTA3DSlicerLib.models import get_model
from VISTA3DSlicerLib.panel import WEIGHTS_MODELS, weights_status

from .dialogs import confirmDownload, installDependencies, reportingErrors

#: QSettings keys of the checkpoint files the user chose with "Use a file..." (one per model).
WEIGHTS_SETTING = "VISTA3D/weights/{key}"


def chosenWeights(model: str) -> Optional[str]:
    """The checkpoint file the user chose for ``model`` ("vista3d", "sam_vit_b", ...), or None for
    the downloaded one."""
    return qt.QSettings().value(WEIGHTS_SETTING.format(key=model)) or None


class WeightsSection:
    """The weights row of the Model section, for the model its combo box shows."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self._shownModel = None
        ui = panel.ui
        for model in WEIGHTS_MODELS:
            ui.weightsModelComboBox.addItem(model.title)
        ui.weightsModelComboBox.connect("currentIndexChanged(int)", self.updateStatus)
        ui.downloadWeightsButton.connect("clicked(bool)", self.onDownload)
        ui.browseWeightsButton.connect("clicked(bool)", self.onBrowse)
        ui.openWeightsFolderButton.connect("clicked(bool)", self.onOpenFolder)
        ui.deleteWeightsButton.connect("clicked(bool)", self.onDelete)
        self.updateStatus()

    def showModel(self, model: str) -> None:
        """The model chosen to run: what it is, its licence, and its row in the weights combo box.
        Only a change of model moves the row: the parameter node changes at each keystroke, and
        the user may be looking at another row (SAM's weights, say)."""
        if model == self._shownModel:
            return
        self._shownModel = model
        described = get_model(model)
        self.panel.ui.modelInfoLabel.text = _(
            "{classes} classes of {modalities}; {prompts}. Licence: {licence} ({url}). Commercial use: {commercial}."
        ).format(classes=described.classes, modalities=" and ".join(described.modalities),
                 prompts=", ".join(described.prompts), licence=described.licence.name,
                 url=described.licence.url, commercial=described.licence.commercial_use) + (
            f" {described.caveat}" if described.caveat else "")
        keys = [entry.model for entry in WEIGHTS_MODELS]
        self.panel.ui.weightsModelComboBox.currentIndex = keys.index(model)

    def _model(self):
        return WEIGHTS_MODELS[max(self.panel.ui.weightsModelComboBox.currentIndex, 0)]

    def updateStatus(self, *args) -> None:
        model = self._model()
        status = weights_status(model, chosenWeights(model.model))
        ui = self.panel.ui
        ui.weightsStatusLabel.text = status.text
        ui.downloadWeightsButton.enabled = not status.ready
        ui.deleteWeightsButton.enabled = status.in_cache

    def onDownload(self) -> None:
        panel, model = self.panel, self._model()
        with reportingErrors(_("Could not download the weights."), waitCursor=False):
            installDependencies(panel.logic)
            if not confirmDownload(model.source):
                return
            panel.runningJob = panel.logic.downloadWeights(
                model.source, waitForCompletion=False, progress=panel.showProgress,
                onDone=self._onDownloaded, onError=panel.onJobFailed)
        panel.updateButtons()

    def _onDownloaded(self, path) -> None:
        self.panel.finishJob()
        self.updateStatus()
        self.panel.ui.statusLabel.text = _("Downloaded {path}").format(path=path)

    def onBrowse(self) -> None:
        model = self._model()
        path = qt.QFileDialog.getOpenFileName(self.panel.parent, _("Checkpoint of {title}").format(title=model.title),
                                              "", _("PyTorch checkpoints (*.pt *.pth *.safetensors);;All files (*)"))
        if path:
            qt.QSettings().setValue(WEIGHTS_SETTING.format(key=model.model), path)
            self.updateStatus()

    def onOpenFolder(self) -> None:
        from VISTA3DSlicerLib.weights import cache_dir

        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onDelete(self) -> None:
        from VISTA3DSlicerLib.weights import delete_cached

        model = self._model()
        if not slicer.util.confirmOkCancelDisplay(
                _("Delete the downloaded {title} weights? They can be downloaded again.").format(title=model.title)):
            return
        with reportingErrors(_("Could not delete the weights.")):
            delete_cached(model.source)
            self.panel.logic.dropEngine()
        self.updateStatus()
