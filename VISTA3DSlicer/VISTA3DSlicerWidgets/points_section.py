"""Correct with points: + and − Markups points on the target segment, with undo and redo, and
their keyboard shortcuts while the panel is shown."""

import qt
import slicer
from slicer.i18n import tr as _

from VISTA3DSlicerLib import slicer_adapter

from .dialogs import downloadAllowed, installDependencies
from .weights_section import chosenWeights

#: Shortcuts while the panel is shown: place + points, place − points, undo, redo.
SHORTCUT_KEYS = ("A", "D", "Ctrl+Z", "Ctrl+Y")


class PointsSection:
    """Each point placed, moved or removed re-runs the target segment from all its points on the
    worker; the point lists always show the target segment's points."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self._pointNodes: dict = {}  # True (positive) / False (negative) -> markups node
        self._settingPoints = False
        self._shortcuts: list = []
        ui = panel.ui
        ui.positivePointButton.connect("toggled(bool)", lambda on: self.onPlace(True, on))
        ui.negativePointButton.connect("toggled(bool)", lambda on: self.onPlace(False, on))
        ui.undoButton.connect("clicked(bool)", lambda: self.onHistory("undo"))
        ui.redoButton.connect("clicked(bool)", lambda: self.onHistory("redo"))
        ui.clearPointsButton.connect("clicked(bool)", self.onClear)
        ui.targetSegmentSelector.connect("currentSegmentChanged(QString)", self.onTargetChanged)

    def targetSegmentId(self) -> str:
        return self.panel.ui.targetSegmentSelector.currentSegmentID() or ""

    def updateButtons(self, hasVolume: bool) -> None:
        ui, segmentId = self.panel.ui, self.targetSegmentId()
        hasTarget = hasVolume and bool(segmentId)
        for button in (ui.positivePointButton, ui.negativePointButton, ui.clearPointsButton):
            button.enabled = hasTarget
        ui.undoButton.enabled = hasTarget and self.panel.logic.canUndo(segmentId)
        ui.redoButton.enabled = hasTarget and self.panel.logic.canRedo(segmentId)

    def forgetPointLists(self) -> None:
        """The scene closes: its point lists go with it."""
        self._pointNodes.clear()

    def stopPlacing(self) -> None:
        for positive in (True, False):
            self._placeButton(positive).checked = False

    def _placeButton(self, positive: bool):
        return self.panel.ui.positivePointButton if positive else self.panel.ui.negativePointButton

    def _pointNode(self, positive: bool):
        node = self._pointNodes.get(positive)
        if node is None or node.GetScene() is None:
            node = self.panel.logic.pointListNode(positive)
            self._pointNodes[positive] = node
            for event in (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                          slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                          slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
                self.panel.addObserver(node, event, self.onPointsChanged)
        return node

    def onPlace(self, positive: bool, on: bool) -> None:
        if on:
            self._placeButton(not positive).checked = False
            slicer.modules.markups.logic().SetActiveList(self._pointNode(positive))
            interaction = slicer.app.applicationLogic().GetInteractionNode()
            interaction.SetPlaceModePersistence(1)
            interaction.SetCurrentInteractionMode(interaction.Place)
        elif not self._placeButton(not positive).checked:
            slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()

    def onPointsChanged(self, caller=None, event=None) -> None:
        if self._settingPoints:
            return
        panel, parameters, segmentId = self.panel, self.panel.parameters, self.targetSegmentId()
        if not (parameters and parameters.inputVolume and segmentId):
            panel.ui.interactiveStatusLabel.text = _("Choose the segment to correct first.")
            return
        panel.logic.snapFraction = parameters.snapFraction
        try:  # a slot: what fails here must reach the panel, not only the console
            installDependencies(panel.logic, parameters.runtime)
            weights = chosenWeights(parameters.model)
            panel.logic.updateSegmentFromPoints(
                parameters.inputVolume, panel.ui.targetSegmentSelector.currentNode(), segmentId,
                self._pointNode(True), self._pointNode(False), device=parameters.device,
                precision=parameters.precision, runtime=parameters.runtime, weights=weights,
                allowDownload=downloadAllowed(panel.logic.missingWeights(weights, parameters.model)),
                waitForCompletion=False, progress=panel.showProgress,
                onDone=self.onApplied, onError=self.onRefused)
        except Exception as error:
            self.onRefused(error)

    def onApplied(self, changed) -> None:
        self.panel.ui.interactiveStatusLabel.text = (
            _("Segment updated.") if changed else _("The points changed nothing."))
        self._showPointsOfTarget()
        self.panel.updateButtons()

    def onRefused(self, error: BaseException) -> None:
        self.panel.showError(error, self.panel.ui.interactiveStatusLabel)
        self._showPointsOfTarget()  # the refused point is taken away again
        self.panel.updateButtons()

    def _showPointsOfTarget(self) -> None:
        """The point lists show the target segment's points (after an undo, a refusal, a switch)."""
        parameters = self.panel.parameters
        if not (parameters and parameters.inputVolume):
            return
        points = self.panel.logic.pointsOf(self.targetSegmentId())
        self._settingPoints = True
        try:
            for positive in (True, False):
                slicer_adapter.set_markups_points(
                    self._pointNode(positive), [p.ras for p in points if p.positive == positive], parameters.inputVolume)
        finally:
            self._settingPoints = False

    def onHistory(self, which: str) -> None:
        panel = self.panel
        try:
            panel.logic.stepHistory(
                which, panel.parameters.inputVolume, panel.ui.targetSegmentSelector.currentNode(),
                self.targetSegmentId(), waitForCompletion=False, onDone=self.onApplied, onError=self.onRefused)
        except Exception as error:
            self.onRefused(error)

    def onClear(self) -> None:
        self._settingPoints = True
        try:
            for positive in (True, False):
                self._pointNode(positive).RemoveAllControlPoints()
        finally:
            self._settingPoints = False
        self.onPointsChanged()

    def onTargetChanged(self, segmentId: str) -> None:
        self._showPointsOfTarget()
        self.panel.updateButtons()

    def installShortcuts(self) -> None:
        """Only while the panel is shown: no clash with other modules' keys."""
        if self._shortcuts:
            return
        actions = (lambda: self._togglePlace(True), lambda: self._togglePlace(False),
                   lambda: self.onHistory("undo"), lambda: self.onHistory("redo"))
        for key, action in zip(SHORTCUT_KEYS, actions):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", action)
            self._shortcuts.append(shortcut)

    def removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []

    def _togglePlace(self, positive: bool) -> None:
        button = self._placeButton(positive)
        if button.enabled:
            button.checked = not button.checked
