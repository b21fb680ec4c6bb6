"""The model behind the panel's searchable, checkable tree of VISTA3D's promptable classes.

VISTA3D takes 127 class IDs as a prompt without clicks (``labels.SUPPORTED``). A flat list of
127 names is slow to scan, so this module arranges them the way a radiologist reads a CT: by
body region and kind of structure. It holds no Qt: the panel builds its tree widget from
``label_tree()``, filters it with ``matching_keys()`` and keeps the ticks in a
``LabelSelection``, so all of the picking logic is testable without Slicer.

The group classes kidney (2), lung (20) and bone (21) never become leaves: VISTA3D segments a
group as its members (``labels.SUBCLASSES``), so the tree shows the members and the group is
the node above them (kidney, lung) or is explained on the Bones section (bone, whose members
span several sub-sections).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from . import labels

CheckState = Literal["checked", "partial", "unchecked"]

# How many names a one-line summary lists before it says "and N more".
SUMMARY_NAMES = 5

_BONE_GROUP = 21


@dataclass(frozen=True)
class TreeNode:
    """One row of the label tree: a section, a group (kidney, lung) or a leaf (one label ID).

    ``key`` is stable across releases ("section:abdomen", "group:2", "label:1") so that the
    panel can remember expanded rows and the search result refers to rows by it. A group node
    carries its group ID in ``label_id`` (so searching "2" finds the kidneys) but is not a leaf:
    only leaves are segmented.
    """

    key: str
    title: str
    label_id: int | None
    tooltip: str
    children: tuple[TreeNode, ...] = ()

    @property
    def is_leaf(self) -> bool:
        """True for a row that stands for exactly one segmentable label ID."""
        return not self.children

    def leaf_ids(self) -> tuple[int, ...]:
        """The label IDs of the leaves under this node (itself, for a leaf), in tree order."""
        if self.is_leaf:
            return () if self.label_id is None else (self.label_id,)
        return tuple(label_id for child in self.children for label_id in child.leaf_ids())

    def walk(self) -> Iterator[TreeNode]:
        """This node and all nodes below it, depth first, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class _SectionSpec:
    """A section as written in the layout below: its contents are label IDs or sub-sections."""

    slug: str
    title: str
    tooltip: str
    contents: tuple[int | _SectionSpec, ...]


def _spec(slug: str, title: str, tooltip: str, *contents: int | _SectionSpec) -> _SectionSpec:
    return _SectionSpec(slug, title, tooltip, contents)


# The layout: head to toe inside a section, left before right. A group ID (2, 20) in the
# contents becomes a group node with its members; every other ID becomes a leaf. Bone (21) is
# deliberately absent: its members are spread over the Bones sub-sections.
_LAYOUT: tuple[_SectionSpec, ...] = (
    _spec(
        "abdomen", "Abdominal and pelvic organs",
        "Solid and hollow organs of the abdomen and pelvis, kidneys and adrenal glands included.",
        1, 10, 3, 4, 12, 13, 19, 62, 2, 9, 8, 15, 118,
    ),
    _spec(
        "thorax", "Thorax",
        "Lungs and their lobes, airways, oesophagus and heart.",
        20, 57, 132, 11, 115, 108,
    ),
    _spec(
        "head_neck", "Head and neck",
        "Brain, thyroid gland and spinal cord (the central nervous system is kept together).",
        22, 126, 121,
    ),
    _spec(
        "vessels", "Vessels",
        "Great vessels of the neck, chest, abdomen and pelvis.",
        _spec(
            "arteries", "Arteries", "The aorta and its large branches.",
            6, 109, 112, 113, 123, 124, 58, 59,
        ),
        _spec(
            "veins", "Veins", "The venae cavae and their tributaries, pulmonary and portal veins.",
            125, 7, 110, 111, 119, 17, 60, 61,
        ),
        25,
    ),
    _spec(
        "bones", "Bones",
        "",  # stated from labels.SUBCLASSES by _bones_tooltip, so it cannot drift from the data
        120,
        _spec(
            "spine", "Spine", "Vertebrae from C1 down to S1, and the sacrum.",
            _spec("cervical_spine", "Cervical spine", "Vertebrae C1 to C7.", *range(56, 49, -1)),
            _spec("thoracic_spine", "Thoracic spine", "Vertebrae T1 to T12.", *range(49, 37, -1)),
            _spec("lumbar_spine", "Lumbar spine", "Vertebrae L1 to L5.", *range(37, 32, -1)),
            127, 97,
        ),
        _spec(
            "ribs", "Ribs", "Ribs 1 to 12 on each side.",
            _spec("left_ribs", "Left ribs", "Left ribs 1 to 12.", *range(63, 75)),
            _spec("right_ribs", "Right ribs", "Right ribs 1 to 12.", *range(75, 87)),
        ),
        122, 114,
        _spec(
            "shoulder_arm", "Shoulder and arm", "Clavicles, scapulae and humeri.",
            91, 92, 89, 90, 87, 88,
        ),
        _spec(
            "pelvis_leg", "Pelvis and leg", "Hip bones and femurs.",
            95, 96, 93, 94,
        ),
    ),
    _spec(
        "muscles", "Muscles",
        "Back, hip flexor and gluteal muscles.",
        104, 105, 106, 107, 98, 99, 100, 101, 102, 103,
    ),
    _spec(
        "lesions", "Tumours and lesions",
        "Tumours and the bone lesion overlap the organs they grow in, so Everything leaves them out: "
        "tick them to segment them. Kidney cysts are part of Everything.",
        23, 24, 26, 27, 128, 116, 117,
    ),
)


def _join_and(items: Sequence[str]) -> str:
    """Items as a sentence lists them: "a", "a and b", "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _id_ranges(ids: Iterable[int]) -> list[str]:
    """Sorted IDs with consecutive runs written as "33..56", so a long group reads at a glance."""
    ranges: list[str] = []
    run: list[int] = []
    for label_id in sorted(ids):
        if run and label_id != run[-1] + 1:
            ranges.append(str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}")
            run = []
        run.append(label_id)
    if run:
        ranges.append(str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}")
    return ranges


def _named(label_id: int) -> str:
    """A label as "left kidney (14)": the VISTA3D name, which is what a prompt uses."""
    return f"{labels.label_info(label_id).name} ({label_id})"


def _leaf(label_id: int) -> TreeNode:
    info = labels.label_info(label_id)
    tooltip = f"Label {label_id}: {info.name}."
    if label_id not in labels.EVERYTHING:
        tooltip += " Not part of Everything, because it overlaps other structures: tick it to segment it."
    return TreeNode(key=f"label:{label_id}", title=info.display_name, label_id=label_id, tooltip=tooltip)


def _label_node(label_id: int) -> TreeNode:
    """A leaf, or for a group ID the group with its members in the bundle's order."""
    members = labels.SUBCLASSES.get(label_id)
    if members is None:
        return _leaf(label_id)
    name = labels.label_info(label_id).name
    return TreeNode(
        key=f"group:{label_id}",
        title=labels.label_info(label_id).display_name,
        label_id=label_id,
        tooltip=f"Label {label_id} ({name}) is a group: VISTA3D segments it as "
        f"{_join_and([_named(member) for member in members])}.",
        children=tuple(_leaf(member) for member in members),
    )


def _bones_tooltip(section_ids: Iterable[int]) -> str:
    """The bone group's rule, since the group itself has no node: members and the exceptions."""
    members = labels.SUBCLASSES[_BONE_GROUP]
    text = (
        f"Label {_BONE_GROUP} ({labels.label_info(_BONE_GROUP).name}) is a group: VISTA3D segments it as "
        f"its {len(members)} members, IDs {_join_and(_id_ranges(members))}."
    )
    outside = sorted(set(section_ids) - set(members))
    if outside:
        listed = _join_and([_named(label_id) for label_id in outside])
        text += f" {listed[:1].upper()}{listed[1:]} {'is' if len(outside) == 1 else 'are'} not a member: "
        text += f"the prompt \"bone\" leaves {'it' if len(outside) == 1 else 'them'} out, this section does not."
    return text


def _section(spec: _SectionSpec) -> TreeNode:
    children = tuple(_section(item) if isinstance(item, _SectionSpec) else _label_node(item) for item in spec.contents)
    tooltip = spec.tooltip
    if spec.slug == "bones":
        tooltip = _bones_tooltip(label_id for child in children for label_id in child.leaf_ids())
    return TreeNode(key=f"section:{spec.slug}", title=spec.title, label_id=None, tooltip=tooltip, children=children)


@functools.cache
def label_tree() -> tuple[TreeNode, ...]:
    """The top-level sections of the tree, built once from the layout and the label table."""
    return tuple(_section(spec) for spec in _LAYOUT)


@functools.cache
def _nodes_by_key() -> dict[str, TreeNode]:
    return {node.key: node for top in label_tree() for node in top.walk()}


def find_node(key: str) -> TreeNode:
    """The node with this key (as returned by ``matching_keys``); KeyError if there is none."""
    return _nodes_by_key()[key]


@functools.cache
def _all_leaf_ids() -> frozenset[int]:
    return frozenset(label_id for top in label_tree() for label_id in top.leaf_ids())


@functools.cache
def _search_texts() -> dict[str, tuple[str, frozenset[str]]]:
    """Node key -> what a search word is compared with: the normalised title (plus the VISTA3D
    name, which differs for a few Latin names such as "clavicula"), and its separate words."""
    texts: dict[str, tuple[str, frozenset[str]]] = {}
    for key, node in _nodes_by_key().items():
        parts = [node.title]
        if node.label_id is not None:
            parts.append(labels.label_info(node.label_id).name)
        text = labels.normalise_name(" ".join(parts))  # find_label's normalisation, so search and prompts agree
        texts[key] = (text, frozenset(text.split()))
    return texts


def _matches(node: TreeNode, words: Sequence[str]) -> bool:
    """Every word occurs in the node's name; a number must be the node's ID or a whole word of
    its name, so "26" finds hepatic tumor alone and "rib 1" finds rib 1 but not rib 10."""
    text, tokens = _search_texts()[node.key]
    for word in words:
        if word.isascii() and word.isdigit():  # "²" is a digit to str.isdigit, not to int()
            if int(word) != node.label_id and word not in tokens:
                return False
        elif word not in text:
            return False
    return True


def matching_keys(query: str) -> set[str]:
    """The keys of the nodes to show for a search text.

    Case-insensitive; every whitespace-separated word must match (see ``_matches``). A section
    or group whose title matches is shown whole; every shown node's ancestors are shown, so
    the tree stays navigable. An empty query shows everything.
    """
    words = labels.normalise_name(query).split()
    if not words:
        return set(_nodes_by_key())
    shown: set[str] = set()

    def visit(node: TreeNode, ancestors: tuple[str, ...]) -> None:
        if _matches(node, words):
            shown.update(ancestors)
            shown.update(descendant.key for descendant in node.walk())
            return
        for child in node.children:
            visit(child, (*ancestors, node.key))

    for top in label_tree():
        visit(top, ())
    return shown


def _count(number: int) -> str:
    return f"{number} structure{'' if number == 1 else 's'}"


def _names_line(ids: Sequence[int]) -> str:
    """Up to SUMMARY_NAMES VISTA3D names, then "and N more": short enough for one panel line."""
    names = [labels.label_info(label_id).name for label_id in ids[:SUMMARY_NAMES]]
    rest = len(ids) - len(names)
    return ", ".join(names) + (f" and {rest} more" if rest else "")


class LabelSelection:
    """The ticked label IDs: always leaves of the tree, i.e. IDs VISTA3D segments without clicks."""

    def __init__(self, ids: Iterable[int] = ()) -> None:
        """A selection of these IDs; groups are expanded, unsupported IDs refused."""
        self._ids: set[int] = set()
        for label_id in ids:
            self.set_checked(label_id, True)

    @classmethod
    def from_prompt(cls, text: str) -> LabelSelection:
        """The selection a prompt string stands for ("everything, hepatic tumor", "kidney", "1, 3").

        Groups become their members, as the bundle does. An unknown name raises
        ``labels.UnknownLabelError`` with the closest names; a legacy or zero-shot ID raises
        ``VISTA3DError`` with what to use instead.
        """
        return cls(labels.expand_subclasses(labels.automatic_prompt(text)))

    @staticmethod
    def _leaf_ids_of(node_or_id: TreeNode | int) -> tuple[int, ...]:
        if isinstance(node_or_id, TreeNode):
            return node_or_id.leaf_ids()
        # Says why an ID cannot be ticked (legacy class and its replacement, zero-shot, unknown).
        labels.validate_automatic_prompt([node_or_id])
        return tuple(labels.expand_subclasses([node_or_id]))

    def set_checked(self, node_or_id: TreeNode | int, checked: bool) -> None:
        """Tick or untick a leaf, or every leaf under a section or group (or a group ID's members)."""
        ids = self._leaf_ids_of(node_or_id)
        if checked:
            self._ids.update(ids)
        else:
            self._ids.difference_update(ids)

    def check_state(self, node: TreeNode) -> CheckState:
        """The tri-state of a row: all, some or none of its leaves ticked."""
        leaf_ids = node.leaf_ids()
        ticked = sum(label_id in self._ids for label_id in leaf_ids)
        if ticked == 0:
            return "unchecked"
        return "checked" if ticked == len(leaf_ids) else "partial"

    def select_everything(self) -> None:
        """Replace the selection by the bundle's "everything" set."""
        self._ids = set(labels.EVERYTHING)

    def clear(self) -> None:
        """Untick everything."""
        self._ids.clear()

    @property
    def ids(self) -> list[int]:
        """The ticked IDs, sorted: what goes to the engine."""
        return sorted(self._ids)

    @property
    def is_everything(self) -> bool:
        """True when the selection is exactly the bundle's "everything" set."""
        return self._ids == set(labels.EVERYTHING)

    @property
    def includes_everything(self) -> bool:
        """True when the selection is "everything", possibly with extras (tumours, airway, ...)."""
        return self._ids.issuperset(labels.EVERYTHING)

    def _extras(self) -> list[int]:
        """The ticked IDs outside "everything", for a selection that includes it."""
        return sorted(self._ids.difference(labels.EVERYTHING))

    def to_prompt(self) -> str:
        """The selection as a prompt string that ``from_prompt`` reads back; "" when nothing is ticked.

        "everything" stands for the bundle's set, so a selection built on it stays short
        ("everything, hepatic tumor"); otherwise the VISTA3D names, comma-separated.
        """
        if self.includes_everything:
            return ", ".join(["everything", *(labels.label_info(label_id).name for label_id in self._extras())])
        return ", ".join(labels.label_info(label_id).name for label_id in self.ids)

    def summary(self) -> str:
        """One short line for the panel saying what will be segmented."""
        if not self._ids:
            return "Nothing selected: tick structures or Everything"
        if not self.includes_everything:
            return f"{_count(len(self._ids))}: {_names_line(self.ids)}"
        extras = self._extras()
        text = "Everything" + (f" + {_names_line(extras)}" if extras else "") + f": {_count(len(self._ids))}"
        if _all_leaf_ids().difference(self._ids):
            # VISTA3D's rule, easy to miss: these overlap organs, so "everything" omits them.
            text += " (tumours, bone lesion, hepatic vessel and airway are not in Everything: tick them to add them)"
        return text
