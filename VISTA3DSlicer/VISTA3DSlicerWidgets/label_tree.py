"""Segmentation > the structures to segment: a tree with tick boxes, a search box and
"Everything", kept in step with the parameter node's label prompt."""

from typing import Callable

import qt
from slicer.i18n import tr as _

from VISTA3DSlicerLib import label_picker
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.labels import VISTA3D_LABELS

class LabelTree:
    """The tree of the chosen model's classes by group. ``selection`` is what is ticked; ``onTicked``
    gets the prompt text each time the user changes it, ``showPrompt`` ticks what a prompt names
    (the prompt line was edited, or a scene loaded), and ``showLabels`` shows another model's classes."""

    def __init__(self, ui, onTicked: Callable[[str], None]) -> None:
        self.ui = ui
        self.space, self.modality = VISTA3D_LABELS, None
        self.selection = label_picker.LabelSelection.from_prompt("everything")
        self._onTicked = onTicked
        self._items: dict = {}  # node key -> QTreeWidgetItem
        self._updating = False
        self._build()  # before connecting: filling the tree emits itemChanged for each item
        ui.labelTree.connect("itemChanged(QTreeWidgetItem*,int)", self._onItemChanged)
        ui.labelSearchBox.connect("textChanged(QString)", self._onSearch)
        ui.everythingCheckBox.connect("toggled(bool)", self._onEverythingToggled)

    def showPrompt(self, text: str) -> None:
        """Tick what the label prompt ``text`` names; an unknown name is said, the ticks stay."""
        if self._updating or text == self.selection.to_prompt():
            return
        try:
            self.selection = self._selection(text)
        except VISTA3DError as error:
            self.ui.selectionSummaryLabel.text = str(error)
            return
        self._refreshChecks()

    def showLabels(self, space, modality) -> None:
        """The classes of ``space`` (a model's ``labels.LabelSpace``), Everything being that of
        ``modality``; the ticks carry over where the names exist there, else Everything is ticked."""
        if (space, modality) == (self.space, self.modality):
            return
        prompt = self.selection.to_prompt()
        self.space, self.modality = space, modality
        try:
            self.selection = self._selection(prompt or "everything")
        except VISTA3DError:  # structures the other model does not have
            self.selection = self._selection("everything")
        self.ui.everythingCheckBox.text = _("Everything ({count} structures)").format(
            count=len(space.everything_for(modality)))
        self._updating = True  # filling the tree emits itemChanged for each item
        try:
            self._build()
        finally:
            self._updating = False
        if self.selection.to_prompt() != prompt:
            self._onTicked(self.selection.to_prompt())

    def _selection(self, text: str) -> "label_picker.LabelSelection":
        if not text.strip():
            return label_picker.LabelSelection(space=self.space, modality=self.modality)
        return label_picker.LabelSelection.from_prompt(text, space=self.space, modality=self.modality)

    def _build(self) -> None:
        tree = self.ui.labelTree
        tree.clear()
        self._items.clear()

        def add(parentItem, node) -> None:
            item = qt.QTreeWidgetItem(parentItem)
            item.setText(0, node.title if node.label_id is None or not node.is_leaf else f"{node.title}  ({node.label_id})")
            item.setToolTip(0, node.tooltip)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setData(0, qt.Qt.UserRole, node.key)
            if node.is_leaf:
                red, green, blue = self.space.label_info(node.label_id).color
                pixmap = qt.QPixmap(12, 12)
                pixmap.fill(qt.QColor(red, green, blue))
                item.setIcon(0, qt.QIcon(pixmap))
            self._items[node.key] = item
            for child in node.children:
                add(item, child)

        for section in label_picker.label_tree(self.space):
            add(tree, section)
        self._refreshChecks()

    def _refreshChecks(self) -> None:
        states = {"checked": qt.Qt.Checked, "partial": qt.Qt.PartiallyChecked, "unchecked": qt.Qt.Unchecked}
        self._updating = True
        try:
            for key, item in self._items.items():
                item.setCheckState(0, states[self.selection.check_state(label_picker.find_node(key, self.space))])
            self.ui.everythingCheckBox.checked = self.selection.includes_everything
            self.ui.selectionSummaryLabel.text = self.selection.summary()
        finally:
            self._updating = False

    def _ticked(self) -> None:
        self._refreshChecks()
        self._onTicked(self.selection.to_prompt())

    def _onItemChanged(self, item, column) -> None:
        if self._updating:
            return
        node = label_picker.find_node(item.data(0, qt.Qt.UserRole), self.space)
        self.selection.set_checked(node, item.checkState(0) != qt.Qt.Unchecked)
        self._ticked()

    def _onEverythingToggled(self, checked: bool) -> None:
        if self._updating:
            return
        if checked:
            self.selection.select_everything()
        else:
            self.selection.clear()
        self._ticked()

    def _onSearch(self, text: str) -> None:
        shown = label_picker.matching_keys(text, self.space)
        for key, item in self._items.items():
            item.setHidden(key not in shown)
            item.setExpanded(bool(text.strip()) and key in shown)
