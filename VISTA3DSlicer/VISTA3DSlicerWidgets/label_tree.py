"""Segmentation > the structures to segment: a tree with tick boxes, a search box and
"Everything", kept in step with the parameter node's label prompt."""

from typing import Callable

import qt

from VISTA3DSlicerLib import label_picker, labels
from VISTA3DSlicerLib.errors import VISTA3DError

class LabelTree:
    """The tree of VISTA3D's classes by group. ``selection`` is what is ticked; ``onTicked`` gets the
    prompt text each time the user changes it, and ``showPrompt`` ticks what a prompt names (the
    prompt line was edited, or a scene loaded)."""

    def __init__(self, ui, onTicked: Callable[[str], None]) -> None:
        self.ui = ui
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
            self.selection = (label_picker.LabelSelection.from_prompt(text) if text.strip()
                              else label_picker.LabelSelection())
        except VISTA3DError as error:
            self.ui.selectionSummaryLabel.text = str(error)
            return
        self._refreshChecks()

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
                red, green, blue = labels.label_info(node.label_id).color
                pixmap = qt.QPixmap(12, 12)
                pixmap.fill(qt.QColor(red, green, blue))
                item.setIcon(0, qt.QIcon(pixmap))
            self._items[node.key] = item
            for child in node.children:
                add(item, child)

        for section in label_picker.label_tree():
            add(tree, section)
        self._refreshChecks()

    def _refreshChecks(self) -> None:
        states = {"checked": qt.Qt.Checked, "partial": qt.Qt.PartiallyChecked, "unchecked": qt.Qt.Unchecked}
        self._updating = True
        try:
            for key, item in self._items.items():
                item.setCheckState(0, states[self.selection.check_state(label_picker.find_node(key))])
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
        node = label_picker.find_node(item.data(0, qt.Qt.UserRole))
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
        shown = label_picker.matching_keys(text)
        for key, item in self._items.items():
            item.setHidden(key not in shown)
            item.setExpanded(bool(text.strip()) and key in shown)
