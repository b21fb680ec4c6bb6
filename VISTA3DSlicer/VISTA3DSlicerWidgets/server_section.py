"""Model > Run on: this computer, or a `vista3d serve` server (its address, your token, and what it
runs). The address and the token are kept in Slicer's settings, never in the scene, which is
shared with others."""

from pathlib import Path

import qt
from slicer.i18n import tr as _

from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.remote import read_token

#: QSettings keys.
RUN_ON_SETTING = "VISTA3D/server/runOn"
URL_SETTING = "VISTA3D/server/url"
TOKEN_SETTING = "VISTA3D/server/token"


class ServerSection:
    """Sets the Logic's ``server`` and ``serverToken`` from the Run on row."""

    def __init__(self, panel) -> None:
        self.panel = panel
        ui, settings = panel.ui, qt.QSettings()
        ui.runOnComboBox.currentIndex = 1 if settings.value(RUN_ON_SETTING) == "server" else 0
        ui.serverUrlLineEdit.text = settings.value(URL_SETTING) or ""
        ui.serverTokenLineEdit.text = settings.value(TOKEN_SETTING) or ""
        ui.runOnComboBox.connect("currentIndexChanged(int)", self._changed)
        ui.serverUrlLineEdit.connect("editingFinished()", self._changed)
        ui.serverTokenLineEdit.connect("editingFinished()", self._changed)
        ui.testConnectionButton.connect("clicked(bool)", self.onTest)
        self._changed()

    def _onServer(self) -> bool:
        return self.panel.ui.runOnComboBox.currentIndex == 1

    def _token(self) -> str:
        """The token typed, or read from the file named after an @."""
        text = self.panel.ui.serverTokenLineEdit.text.strip()
        return read_token(Path(text[1:]).expanduser()) if text.startswith("@") else text

    def _changed(self, *args) -> None:
        ui, logic, settings = self.panel.ui, self.panel.logic, qt.QSettings()
        onServer = self._onServer()
        for widget in (ui.serverUrlLineEdit, ui.serverTokenLineEdit, ui.testConnectionButton):
            widget.enabled = onServer
        for widget in (ui.deviceComboBox, ui.precisionComboBox, ui.runtimeComboBox):
            widget.enabled = not onServer  # the server's own
        settings.setValue(RUN_ON_SETTING, "server" if onServer else "this computer")
        settings.setValue(URL_SETTING, ui.serverUrlLineEdit.text.strip())
        settings.setValue(TOKEN_SETTING, ui.serverTokenLineEdit.text.strip())
        try:
            logic.server = ui.serverUrlLineEdit.text.strip() or None if onServer else None
            logic.serverToken = self._token() if onServer and logic.server else None
        except VISTA3DError as error:  # a token file that cannot be read
            logic.serverToken = None
            ui.serverInfoLabel.text = str(error)
        ui.serverInfoLabel.visible = onServer

    def onTest(self) -> None:
        ui = self.panel.ui
        self._changed()
        try:
            ui.serverInfoLabel.text = _("Connected: {what}").format(
                what=self.panel.logic.testConnection(ui.serverUrlLineEdit.text.strip(), self._token()))
        except VISTA3DError as error:
            ui.serverInfoLabel.text = str(error)
