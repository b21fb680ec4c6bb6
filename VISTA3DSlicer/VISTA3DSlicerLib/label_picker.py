"""The model behind the panel's searchable, checkable tree of a model's promptable classes.

VISTA3D takes 127 class IDs as a prompt without clicks (``labels.SUPPORTED``), NV-Segment-CTMR
over 300. A flat list of names is slow to scan, so this module arranges them the way a radiologist
reads a scan: by body region and kind of structure. It holds no Qt: the panel builds its tree
widget from ``label_tree(space)``, filters it with ``matching_keys()`` and keeps the ticks in a
``LabelSelection``, so all of the picking logic is testable without Slicer. Every function takes
the model's label space (``labels.LabelSpace``; default VISTA3D's).

The group classes kidney (2), lung (20) and bone (21) never become leaves: VISTA3D segments a
group as its members (``labels.SUBCLASSES``), so the tree shows the members and the group is
the node above them (kidney, lung) or is explained on the Bones section (bone, whose members
span several sub-sections).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Optional

from .labels import CTMR_LABELS, VISTA3D_LABELS, LabelSpace, normalise_name

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


def _extended(layout: tuple[_SectionSpec, ...], additions: dict[str, tuple[int | _SectionSpec, ...]]
              ) -> tuple[_SectionSpec, ...]:
    """``layout`` with ``additions[slug]`` appended to the contents of the (sub-)section ``slug``."""

    def extend(spec: _SectionSpec) -> _SectionSpec:
        contents = tuple(extend(item) if isinstance(item, _SectionSpec) else item for item in spec.contents)
        return replace(spec, contents=contents + additions.get(spec.slug, ()))

    return tuple(extend(spec) for spec in layout)


# NV-Segment-CTMR: VISTA3D's classes where they were (its IDs 1..132 are VISTA3D's), its new ones
# (MR body, head and neck, brain) beside them or in sections of their own. Deprecated IDs are absent.
_CTMR_LAYOUT: tuple[_SectionSpec, ...] = _extended(_LAYOUT, {
    "abdomen": (18, 147, 148, 161, 160),
    "thorax": (135, 136, 153, 149, 152, 151, 154, 169, 167, 163, 164),
    "head_neck": (
        165, 166,
        _spec("head_neck_organs", "Head and neck organs",
              "Eyes, optic pathway, ears, glands, jaw, larynx and pharynx (organs at risk of head and neck "
              "radiotherapy).", *(label_id for label_id in range(172, 214) if label_id != 176)),
    ),
    "arteries": (155, 170, 171),
    "spine": (146, 134),
    "lesions": (176, 150),
}) + (
    _spec("tissues", "Tissues", "Muscles, fat and skin as a whole, and the tissues of the abdomen and mediastinum.",
          156, 157, 158, 159, 168),
    _spec(
        "brain", "Brain (MR)",
        "Brain structures of a skull-stripped T1 MR (the LUMIR atlas labels): Everything for MR of the brain.",
        _spec("brain_deep", "Ventricles, deep grey matter and cerebellum",
              "Ventricles, basal ganglia, thalami, hippocampi, amygdalae, brain stem and cerebellum.", *range(214, 248)),
        _spec("brain_cortex_right", "Right cerebral cortex", "Gyri of the right hemisphere.", *range(248, 346, 2)),
        _spec("brain_cortex_left", "Left cerebral cortex", "Gyri of the left hemisphere.", *range(249, 346, 2)),
    ),
)

#: The tree layout of each label space.
_LAYOUTS = {VISTA3D_LABELS: _LAYOUT, CTMR_LABELS: _CTMR_LAYOUT}


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


def _named(space: LabelSpace, label_id: int) -> str:
    """A label as "left kidney (14)": the bundle's name, which is what a prompt uses."""
    return f"{space.label_info(label_id).name} ({label_id})"


def _leaf(space: LabelSpace, label_id: int) -> TreeNode:
    info = space.label_info(label_id)
    tooltip = f"Label {label_id}: {info.name}."
    lists = [modality for modality, ids in space.everything_lists.items() if label_id in ids]
    if not lists:
        tooltip += " Not part of Everything, because it overlaps other structures: tick it to segment it."
    elif len(space.everything_lists) > 1:
        tooltip += f" In Everything for {', '.join(lists)}."
    return TreeNode(key=f"label:{label_id}", title=info.display_name, label_id=label_id, tooltip=tooltip)


def _label_node(space: LabelSpace, label_id: int) -> TreeNode:
    """A leaf, or for a group ID the group with its members in the bundle's order."""
    members = space.subclasses.get(label_id)
    if members is None:
        return _leaf(space, label_id)
    name = space.label_info(label_id).name
    return TreeNode(
        key=f"group:{label_id}",
        title=space.label_info(label_id).display_name,
        label_id=label_id,
        tooltip=f"Label {label_id} ({name}) is a group: {space.title} segments it as "
        f"{_join_and([_named(space, member) for member in members])}.",
        children=tuple(_leaf(space, member) for member in members),
    )


def _bones_tooltip(space: LabelSpace, section_ids: Iterable[int]) -> str:
    """The bone group's rule, since the group itself has no node: members and the exceptions."""
    members = space.subclasses[_BONE_GROUP]
    text = (
        f"Label {_BONE_GROUP} ({space.label_info(_BONE_GROUP).name}) is a group: {space.title} segments it as "
        f"its {len(members)} members, IDs {_join_and(_id_ranges(members))}."
    )
    outside = sorted(set(section_ids) - set(members))
    if outside:
        listed = _join_and([_named(space, label_id) for label_id in outside])
        text += f" {listed[:1].upper()}{listed[1:]} {'is' if len(outside) == 1 else 'are'} not a member: "
        text += f"the prompt \"bone\" leaves {'it' if len(outside) == 1 else 'them'} out, this section does not."
    return text


def _section(space: LabelSpace, spec: _SectionSpec) -> TreeNode:
    children = tuple(_section(space, item) if isinstance(item, _SectionSpec) else _label_node(space, item)
                     for item in spec.contents)
    tooltip = spec.tooltip
    if spec.slug == "bones":
        tooltip = _bones_tooltip(space, (label_id for child in children for label_id in child.leaf_ids()))
    return TreeNode(key=f"section:{spec.slug}", title=spec.title, label_id=None, tooltip=tooltip, children=children)


def label_tree(space: LabelSpace = VISTA3D_LABELS) -> tuple[TreeNode, ...]:
    """The top-level sections of the tree of ``space``, built once from its layout and label table."""
    return _built_tree(space)


@functools.cache  # keyed on the space alone (a default argument would be a key of its own)
def _built_tree(space: LabelSpace) -> tuple[TreeNode, ...]:
    return tuple(_section(space, spec) for spec in _LAYOUTS[space])


@functools.cache
def _nodes_by_key(space: LabelSpace) -> dict[str, TreeNode]:
    return {node.key: node for top in label_tree(space) for node in top.walk()}


def find_node(key: str, space: LabelSpace = VISTA3D_LABELS) -> TreeNode:
    """The node with this key (as returned by ``matching_keys``); KeyError if there is none."""
    return _nodes_by_key(space)[key]


@functools.cache
def _all_leaf_ids(space: LabelSpace) -> frozenset[int]:
    return frozenset(label_id for top in label_tree(space) for label_id in top.leaf_ids())


@functools.cache
def _search_texts(space: LabelSpace) -> dict[str, tuple[str, frozenset[str]]]:
    """Node key -> what a search word is compared with: the normalised title (plus the bundle's
    name, which differs for a few Latin names such as "clavicula"), and its separate words."""
    texts: dict[str, tuple[str, frozenset[str]]] = {}
    for key, node in _nodes_by_key(space).items():
        parts = [node.title]
        if node.label_id is not None:
            parts.append(space.label_info(node.label_id).name)
        text = normalise_name(" ".join(parts))  # find_label's normalisation, so search and prompts agree
        texts[key] = (text, frozenset(text.split()))
    return texts


def _matches(space: LabelSpace, node: TreeNode, words: Sequence[str]) -> bool:
    """Every word occurs in the node's name; a number must be the node's ID or a whole word of
    its name, so "26" finds hepatic tumor alone and "rib 1" finds rib 1 but not rib 10."""
    text, tokens = _search_texts(space)[node.key]
    for word in words:
        if word.isascii() and word.isdigit():  # "²" is a digit to str.isdigit, not to int()
            if int(word) != node.label_id and word not in tokens:
                return False
        elif word not in text:
            return False
    return True


def matching_keys(query: str, space: LabelSpace = VISTA3D_LABELS) -> set[str]:
    """The keys of the nodes to show for a search text.

    Case-insensitive; every whitespace-separated word must match (see ``_matches``). A section
    or group whose title matches is shown whole; every shown node's ancestors are shown, so
    the tree stays navigable. An empty query shows everything.
    """
    words = normalise_name(query).split()
    if not words:
        return set(_nodes_by_key(space))
    shown: set[str] = set()

    def visit(node: TreeNode, ancestors: tuple[str, ...]) -> None:
        if _matches(space, node, words):
            shown.update(ancestors)
            shown.update(descendant.key for descendant in node.walk())
            return
        for child in node.children:
            visit(child, (*ancestors, node.key))

    for top in label_tree(space):
        visit(top, ())
    return shown


def _count(number: int) -> str:
    return f"{number} structure{'' if number == 1 else 's'}"


class LabelSelection:
    """The ticked label IDs: always leaves of the tree, i.e. IDs the model segments without clicks.

    ``space`` is the model's label space; ``modality`` chooses its "everything" list (None: the default).
    """

    def __init__(self, ids: Iterable[int] = (), *, space: LabelSpace = VISTA3D_LABELS,
                 modality: Optional[str] = None) -> None:
        """A selection of these IDs; groups are expanded, unsupported IDs refused."""
        self.space = space
        self.modality = modality
        self._everything = frozenset(space.everything_for(modality))
        self._ids: set[int] = set()
        for label_id in ids:
            self.set_checked(label_id, True)

    @classmethod
    def from_prompt(cls, text: str, *, space: LabelSpace = VISTA3D_LABELS,
                    modality: Optional[str] = None) -> LabelSelection:
        """The selection a prompt string stands for ("everything, hepatic tumor", "kidney", "1, 3").

        Groups become their members, as the bundle does. An unknown name raises
        ``labels.UnknownLabelError`` with the closest names; a legacy or zero-shot ID raises
        ``VISTA3DError`` with what to use instead.
        """
        return cls(space.expand_subclasses(space.automatic_prompt(text, modality)), space=space, modality=modality)

    def _leaf_ids_of(self, node_or_id: TreeNode | int) -> tuple[int, ...]:
        if isinstance(node_or_id, TreeNode):
            return node_or_id.leaf_ids()
        # Says why an ID cannot be ticked (legacy class and its replacement, zero-shot, unknown).
        self.space.validate_automatic_prompt([node_or_id])
        return tuple(self.space.expand_subclasses([node_or_id]))

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
        self._ids = set(self._everything)

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
        return self._ids == self._everything

    @property
    def includes_everything(self) -> bool:
        """True when the selection is "everything", possibly with extras (tumours, airway, ...)."""
        return self._ids.issuperset(self._everything)

    def _extras(self) -> list[int]:
        """The ticked IDs outside "everything", for a selection that includes it."""
        return sorted(self._ids.difference(self._everything))

    def _names_line(self, ids: Sequence[int]) -> str:
        """Up to SUMMARY_NAMES names, then "and N more": short enough for one panel line."""
        names = [self.space.label_info(label_id).name for label_id in ids[:SUMMARY_NAMES]]
        rest = len(ids) - len(names)
        return ", ".join(names) + (f" and {rest} more" if rest else "")

    def to_prompt(self) -> str:
        """The selection as a prompt string that ``from_prompt`` reads back; "" when nothing is ticked.

        "everything" stands for the bundle's set, so a selection built on it stays short
        ("everything, hepatic tumor"); otherwise the bundle's names, comma-separated.
        """
        if self.includes_everything:
            return ", ".join(["everything", *(self.space.label_info(label_id).name for label_id in self._extras())])
        return ", ".join(self.space.label_info(label_id).name for label_id in self.ids)

    def summary(self) -> str:
        """One short line for the panel saying what will be segmented."""
        if not self._ids:
            return "Nothing selected: tick structures or Everything"
        if not self.includes_everything:
            return f"{_count(len(self._ids))}: {self._names_line(self.ids)}"
        extras = self._extras()
        text = "Everything" + (f" + {self._names_line(extras)}" if extras else "") + f": {_count(len(self._ids))}"
        if self.space is VISTA3D_LABELS and _all_leaf_ids(self.space).difference(self._ids):
            # VISTA3D's rule, easy to miss: these overlap organs, so "everything" omits them.
            text += " (tumours, bone lesion, hepatic vessel and airway are not in Everything: tick them to add them)"
        elif self.space is not VISTA3D_LABELS:
            text += f" ({self.modality or self.space.modalities[0]}; {len(_all_leaf_ids(self.space) - self._ids)} " \
                    "more in the list)"
        return text
