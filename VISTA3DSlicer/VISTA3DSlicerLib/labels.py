"""Label spaces: each model's class IDs, names, colours, terminology, groups and prompt parsing.

VISTA3D predicts "global" class IDs. In the MONAI bundle, IDs 1..132 are the classes it was
trained on (the bundle's ``labels.json``); IDs 133..254 are free "zero-shot" IDs that only make
sense together with clicks; 255 marks "not processed" in the bundle's output and is never a class.
NV-Segment-CTMR fine-tuned the same network on 345 classes (CT and MR, body and brain): its IDs
1..132 are VISTA3D's, and it takes no clicks, so it has no zero-shot IDs.

A ``LabelSpace`` is one such table with its rules. Everything that describes a class lives in a
data file, ``data/<...>ColorTable.csv``, in the colour-table CSV format that 3D Slicer (5.10 and
later) reads directly: label value, name, RGBA and DICOM/SNOMED CT terminology columns (and, where
the bundle's name is not the display name in lower case, a ``BundleName`` column, which Slicer
ignores). Keeping it as data means Slicer can load the very same file as a colour node, and this
module is only its loader. Only the standard library is imported here, because Slicer imports the
module at start-up.

The module-level names at the end (``label_info``, ``find_label``, ``EVERYTHING``, ...) are the
VISTA3D bundle's label space, the default; code that serves any model takes the model's
``SegmentationModel.labels``. The ID groupings are copied from the bundles (``configs/inference.json``,
``scripts/evaluator.py``) and MONAI, with the reason for each.
"""

from __future__ import annotations

import colorsys
import csv
import difflib
import functools
import importlib.resources
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import VISTA3DError

# Groups that the bundles expand into their members before inference (inference.json
# "subclass", applied by monai.apps.vista3d.transforms.VistaPreTransformd). The member order
# is the bundle's and decides the output channel order, so keep it. NV-Segment-CTMR keeps them.
_SUBCLASSES: Mapping[int, tuple[int, ...]] = MappingProxyType(
    {
        2: (14, 5),  # kidney -> left kidney, right kidney
        20: (28, 29, 30, 31, 32),  # lung -> its five lobes
        21: tuple(range(33, 57)) + tuple(range(63, 98)) + (114, 120, 122),  # bone -> vertebrae, ribs, ..., sternum
    }
)

# Two "special class" lists exist, and they disagree. For a special class, clicks are given to
# the network as 2 (negative) / 3 (positive) instead of 0 / 1.
# - SPECIAL_MODEL is what the model was trained with (VISTA3D.convert_point_label default,
#   monai.apps.vista3d.sampler.SPECIAL_INDEX): tumours, hepatic vessel, trachea, bone lesion.
# - SPECIAL_BUNDLE is what the reference bundle actually applies at inference
#   (VistaPreTransformd's default special_index, not overridden in inference.json).
# The bundle is the reference we reproduce, so the engine follows SPECIAL_BUNDLE.
SPECIAL_BUNDLE: tuple[int, ...] = (25, 26, 27, 28, 29, 117)
SPECIAL_MODEL: tuple[int, ...] = (23, 24, 25, 26, 27, 57, 128)

_TERMINOLOGY_PARTS = ("Category", "Type", "TypeModifier", "Region", "RegionModifier")
_REQUIRED_COLUMNS = ("LabelValue", "Name", "Color_R", "Color_G", "Color_B") + tuple(
    f"{part}_{field}" for part in ("Category", "Type") for field in ("CodingScheme", "CodeValue", "CodeMeaning")
)
#: The optional column with the bundle's own name of a class, where it is not the display name in lower case.
BUNDLE_NAME_COLUMN = "BundleName"

# Zero-shot structures are unknown, so they get Slicer's own default for a new segment: "Tissue".
_ZERO_SHOT_CATEGORY_TYPE = ("SCT", "85756007", "Tissue")


# The terminology contexts the VISTA3D bundle's segments name (TerminologyEntry tag). Slicer's
# terminology selector looks the codes up in the context the tag names, and Slicer's own contexts
# (the DICOM master lists) lack about half of VISTA3D's codes (single vertebrae and ribs, ...). So
# the extension ships a pair of contexts per label table holding exactly the codes of its CSV
# (data/Terminologies, checked against it by the tests) and the Slicer module loads them at start-up.
CATEGORY_TYPE_CONTEXT = "Segmentation category and type - VISTA3D"
ANATOMIC_CONTEXT = "Anatomic codes - VISTA3D"


class UnknownLabelError(VISTA3DError):
    """A label name or ID that is not in a model's label space."""


@dataclass(frozen=True)
class Code:
    """One coded concept, e.g. ``Code("SCT", "10200004", "Liver")``."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        """The ``scheme^value^meaning`` triplet of Slicer's terminology strings."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


def _triplet(code: Code | None) -> str:
    return "^^" if code is None else str(code)


@dataclass(frozen=True)
class LabelInfo:
    """Everything known about one global VISTA3D label ID."""

    id: int
    name: str  # the name exactly as in the bundle's labels.json / metadata.json, e.g. "left kidney"
    display_name: str  # the name shown in Slicer, e.g. "Left kidney" (the CSV's Name column)
    color: tuple[int, int, int]
    category: Code
    type: Code
    type_modifier: Code | None
    region: Code | None
    region_modifier: Code | None
    #: The terminology contexts holding these codes (the extension ships one pair per label table).
    contexts: tuple[str, str] = (CATEGORY_TYPE_CONTEXT, ANATOMIC_CONTEXT)

    def terminology_entry(self) -> str:
        """The value of a Slicer segment's "TerminologyEntry" tag.

        Seven ``~``-separated parts: context, category, type, type modifier, region context,
        region, region modifier; each code as ``scheme^value^meaning`` (``^^`` when absent).
        """
        return "~".join(
            (
                self.contexts[0],
                _triplet(self.category),
                _triplet(self.type),
                _triplet(self.type_modifier),
                self.contexts[1],
                _triplet(self.region),
                _triplet(self.region_modifier),
            )
        )


def _code(row: Mapping[str, str | None], part: str) -> Code | None:
    scheme, value, meaning = (
        (row.get(f"{part}_{field}") or "").strip() for field in ("CodingScheme", "CodeValue", "CodeMeaning")
    )
    if not (scheme or value or meaning):
        return None
    if not (scheme and value and meaning):
        raise ValueError(f"incomplete {part} code {scheme!r}^{value!r}^{meaning!r}")
    return Code(scheme, value, meaning)


def normalise_name(name: str) -> str:
    """Lower case, '_' as ' ', runs of whitespace as one space: how names are compared."""
    return " ".join(name.replace("_", " ").lower().split())


# Display names of the VISTA3D table that are not simply the bundle's name with a capital first letter.
_DISPLAY_TO_VISTA3D = (("iliac vein", "iliac vena"), ("clavicle", "clavicula"))


def _bundle_name(display_name: str) -> str:
    """The bundle's name for a display name without a ``BundleName``: first letter lower case, Latin restored."""
    name = display_name[:1].lower() + display_name[1:]
    for display, vista in _DISPLAY_TO_VISTA3D:
        name = name.replace(display, vista)
    return name


def _zero_shot_colour(label_id: int) -> tuple[int, int, int]:
    """A bright colour from the golden-ratio walk round the hue circle: neighbours differ."""
    hue = (label_id * 0.6180339887498949) % 1.0
    saturation = 0.55 + 0.3 * ((label_id * 0.381966) % 1.0)
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))


@functools.lru_cache(maxsize=None)
def _zero_shot_info(label_id: int) -> LabelInfo:
    code = Code(*_ZERO_SHOT_CATEGORY_TYPE)
    return LabelInfo(
        id=label_id,
        name=f"zero-shot structure {label_id}",
        display_name=f"Zero-shot structure {label_id}",
        color=_zero_shot_colour(label_id),
        category=code,
        type=code,
        type_modifier=None,
        region=None,
        region_modifier=None,
    )


def _as_id(label_id: object) -> int:
    if isinstance(label_id, bool):
        raise TypeError("a bool is not a label ID")
    return operator.index(label_id)  # type: ignore[arg-type]


_ZERO_SHOT_NAME = re.compile(r"zero-shot structure (\d+)")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _data_dir() -> Path:
    """The library's data folder (package data: in a checkout, an editable or a wheel install, and
    beside the library in Slicer): the label tables and the terminology contexts."""
    return Path(str(importlib.resources.files(__package__) / "data"))


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """One model's classes: its label table (data) and the bundle's rules for prompting them.

    Compared and hashed by identity: there is one object per label table (``VISTA3D_LABELS``,
    ``CTMR_LABELS``), read once.
    """

    key: str  #: short name, in file names and messages
    title: str  #: the model family, in messages ("VISTA3D")
    table_filename: str  #: the colour/terminology table in ``data/``
    classes: int  #: the trained IDs are 1..classes
    #: IDs the bundle's evaluator refuses as an automatic prompt, each with advice for the user.
    unsupported: Mapping[int, str]
    #: The bundle's "everything" per modality (``ct``, ``mri-body``, ``mri-brain``); the first is the default.
    everything_lists: Mapping[str, tuple[int, ...]]
    terminology_contexts: tuple[str, str]  #: category/type and anatomic context names
    terminology_filenames: tuple[str, str]  #: their files in ``data/Terminologies``
    subclasses: Mapping[int, tuple[int, ...]] = field(default_factory=lambda: _SUBCLASSES)
    #: IDs for structures defined by clicks alone; empty for a model without clicks.
    zero_shot_ids: range = range(0)

    # --------------------------------------------------------------------------- the table

    def colour_table_path(self) -> Path:
        """The label colour/terminology table (a Slicer CSV colour table)."""
        path = _data_dir() / self.table_filename
        if not path.is_file():
            raise VISTA3DError(
                f"The {self.title} label table {self.table_filename} is not in {path.parent}. The installation is "
                "incomplete: reinstall the package (pip install vista3dslicer) or the Slicer extension."
            )
        return path

    def terminology_context_paths(self) -> tuple[Path, Path]:
        """The shipped category/type context and region context files (Slicer ``.term.json``)."""
        folder = _data_dir() / "Terminologies"
        return folder / self.terminology_filenames[0], folder / self.terminology_filenames[1]

    def table(self) -> dict[int, LabelInfo]:
        """IDs 1..classes -> LabelInfo, read once from the colour table."""
        return self._table

    @functools.cached_property  # a frozen dataclass still takes it: it writes the instance's __dict__
    def _table(self) -> dict[int, LabelInfo]:
        path = self.colour_table_path()
        table: dict[int, LabelInfo] = {}
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise VISTA3DError(f"The label table {path} lacks the column(s) {', '.join(missing)}.")
            for line, row in enumerate(reader, start=2):
                try:
                    label_id = int(row["LabelValue"])
                    display_name = row["Name"].strip()
                    color = tuple(int(row[f"Color_{c}"]) for c in "RGB")
                    if not all(0 <= c <= 255 for c in color):
                        raise ValueError(f"colour {color} outside 0..255")
                    codes = {part: _code(row, part) for part in _TERMINOLOGY_PARTS}
                    if codes["Category"] is None or codes["Type"] is None:
                        raise ValueError("category and type codes are required")
                except (KeyError, TypeError, ValueError) as error:
                    raise VISTA3DError(f"The label table {path} is damaged at line {line}: {error}.") from error
                if label_id in table:
                    raise VISTA3DError(f"The label table {path} lists label {label_id} twice (line {line}).")
                table[label_id] = LabelInfo(
                    id=label_id,
                    name=(row.get(BUNDLE_NAME_COLUMN) or "").strip() or _bundle_name(display_name),
                    display_name=display_name,
                    color=color,  # type: ignore[arg-type]
                    category=codes["Category"],  # type: ignore[arg-type]
                    type=codes["Type"],  # type: ignore[arg-type]
                    type_modifier=codes["TypeModifier"],
                    region=codes["Region"],
                    region_modifier=codes["RegionModifier"],
                    contexts=self.terminology_contexts,
                )
        if sorted(table) != list(range(1, self.classes + 1)):
            raise VISTA3DError(f"The label table {path} must list exactly the IDs 1..{self.classes}.")
        return table

    @functools.cached_property  # asked per ID of every prompt and click
    def supported(self) -> frozenset[int]:
        """The IDs the bundle's evaluator accepts as a label prompt without points."""
        return frozenset(range(1, self.classes + 1)) - frozenset(self.unsupported)

    @property
    def everything(self) -> tuple[int, ...]:
        """The bundle's default prompt for the default modality."""
        return next(iter(self.everything_lists.values()))

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the model has an "everything" list for (``ct``, ``mri-body``, ``mri-brain``)."""
        return tuple(self.everything_lists)

    def everything_for(self, modality: str | None) -> tuple[int, ...]:
        """The "everything" list of ``modality`` (None: the default one)."""
        if modality is None:
            return self.everything
        try:
            return self.everything_lists[modality]
        except KeyError:
            raise VISTA3DError(f"{self.title} has no {modality!r} list: its modalities are "
                               f"{', '.join(self.everything_lists)}.") from None

    @property
    def largest_id(self) -> int:
        """The largest label value a labelmap of this space may hold."""
        return max(self.classes, self.zero_shot_ids.stop - 1 if self.zero_shot_ids else 0)

    @property
    def labelmap_dtype(self) -> str:
        """The smallest unsigned integer type holding every label value (numpy's name)."""
        return "uint8" if self.largest_id <= 255 else "uint16"

    # --------------------------------------------------------------------- looking labels up

    def label_info(self, label_id: int) -> LabelInfo:
        """The description of a label ID: from the table, or a zero-shot entry."""
        try:
            value = _as_id(label_id)
        except TypeError:
            raise VISTA3DError(f"{label_id!r} is not a label ID (an integer {self._id_ranges()}).") from None
        table = self.table()
        if value in table:
            return table[value]
        if value in self.zero_shot_ids:
            return _zero_shot_info(value)
        raise VISTA3DError(f"{value} is not a {self.title} label ID: use {self._id_ranges()}.")

    def _id_ranges(self) -> str:
        trained = f"1..{self.classes}"
        if not self.zero_shot_ids:
            return trained
        return (f"{trained} for trained classes or {self.zero_shot_ids.start}..{self.zero_shot_ids.stop - 1} for "
                "zero-shot structures")

    @functools.cached_property
    def _names(self) -> dict[str, int]:
        """Normalised bundle names and display names -> ID."""
        names: dict[str, int] = {}
        for info in self.table().values():
            names[normalise_name(info.name)] = info.id
            names.setdefault(normalise_name(info.display_name), info.id)
        return names

    def find_label(self, name_or_id: str | int) -> int:
        """The ID of a label given by name (bundle or display name, any case, '_' as ' ') or ID."""
        if isinstance(name_or_id, str):
            text = name_or_id.strip()
            if _INTEGER.fullmatch(text):  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
                return self.find_label(int(text))
            key = normalise_name(text)
            names = self._names
            if key in names:
                return names[key]
            zero_shot = _ZERO_SHOT_NAME.fullmatch(key)
            if zero_shot and int(zero_shot.group(1)) in self.zero_shot_ids:
                return int(zero_shot.group(1))
            bundle_names = [info.name for info in self.table().values()]
            close = difflib.get_close_matches(key, bundle_names, n=5, cutoff=0.6)
            if not close:  # a part of a name, e.g. "rib", or a word of it
                close = [n for n in bundle_names if key and key in n][:5]
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            with_clicks = f", or {self.zero_shot_ids.start}..{self.zero_shot_ids.stop - 1} with clicks" \
                if self.zero_shot_ids else ""
            raise UnknownLabelError(
                f'Unknown label "{text}".{hint} Give a {self.title} class name or an ID (1..{self.classes}{with_clicks}).'
            )
        try:
            value = _as_id(name_or_id)
        except TypeError:
            raise UnknownLabelError(f"{name_or_id!r} is neither a label name nor an ID.") from None
        if value in self.table() or value in self.zero_shot_ids:
            return value
        raise UnknownLabelError(f"{value} is not a {self.title} label ID: use {self._id_ranges()}.")

    # ----------------------------------------------------------------------------- prompts

    def parse_label_prompt(self, text: str, modality: str | None = None) -> list[int]:
        """IDs from a prompt string: comma-separated names or IDs, or "everything".

        "everything" (any case) stands for the bundle's default set of ``modality`` and may be
        combined with other items ("everything, hepatic tumor"). Duplicates are dropped, first
        occurrence kept.
        """
        items = [item.strip() for item in str(text).split(",")]
        items = [item for item in items if item]
        if not items:
            raise VISTA3DError('The label prompt is empty: give names or IDs separated by commas, or "everything".')
        ids: list[int] = []
        for item in items:
            ids.extend(self.everything_for(modality) if normalise_name(item) == "everything" else (self.find_label(item),))
        return list(dict.fromkeys(ids))

    def validate_automatic_prompt(self, ids: Sequence[int]) -> None:
        """Refuse a prompt that cannot be segmented without clicks, saying what to do instead."""
        if len(ids) == 0:
            raise VISTA3DError('The label prompt is empty: give at least one class, or "everything".')
        for label_id in ids:
            try:
                value = _as_id(label_id)
            except TypeError:
                raise VISTA3DError(f"{label_id!r} is not a label ID.") from None
            if value in self.unsupported:
                name = self.table()[value].name
                clicks = " It can still be segmented with clicks." if self.zero_shot_ids else ""
                raise VISTA3DError(
                    f"Label {value} ({name}) is a legacy class that {self.title} does not segment automatically: "
                    f"{self.unsupported[value]}.{clicks}"
                )
            if value in self.zero_shot_ids:
                raise VISTA3DError(
                    f"Label {value} is a zero-shot ID: it needs clicks (point prompts) on the structure; "
                    f"automatic segmentation takes IDs 1..{self.classes}."
                )
            if value not in self.supported:
                raise VISTA3DError(
                    f"{value} is not a {self.title} label ID: automatic segmentation takes IDs 1..{self.classes}."
                )

    def automatic_prompt(self, prompt: str | Sequence[str | int] | None, modality: str | None = None) -> list[int]:
        """The class IDs an automatic segmentation is asked for, checked: the one reading of a prompt
        for the command line, the Slicer Logic, the panel and the benchmarks.

        ``prompt``: a string ("liver, spleen, 1, 3", "everything, hepatic tumor"), a list of names and
        IDs, or None for everything (of ``modality``; None: the model's default modality). Groups
        stay groups (the engine expands them as the bundle does). Raises ``UnknownLabelError`` (with
        the closest names) or ``VISTA3DError`` saying what to do.
        """
        if prompt is None:
            ids = list(self.everything_for(modality))
        elif isinstance(prompt, str):
            ids = self.parse_label_prompt(prompt, modality)
        else:
            ids = list(dict.fromkeys(self.find_label(item) for item in prompt))
        self.validate_automatic_prompt(ids)
        return ids

    def expand_subclasses(self, ids: Sequence[int]) -> list[int]:
        """Groups replaced in place by their members, as the bundle does; duplicates dropped, first kept."""
        expanded: list[int] = []
        for label_id in ids:
            value = _as_id(label_id)
            expanded.extend(self.subclasses.get(value, (value,)))
        return list(dict.fromkeys(expanded))

    # ------------------------------------------------------------------------------ clicks

    def next_zero_shot_id(self, used: Iterable[int]) -> int:
        """The first zero-shot ID not in ``used``: each zero-shot structure gets its own."""
        if not self.zero_shot_ids:
            raise VISTA3DError(f"{self.title} takes no clicks, so it has no zero-shot structures.")
        taken = set(int(u) for u in used)
        for label_id in self.zero_shot_ids:
            if label_id not in taken:
                return label_id
        raise VISTA3DError(
            f"All {len(self.zero_shot_ids)} zero-shot IDs ({self.zero_shot_ids.start}..{self.zero_shot_ids.stop - 1}) "
            "are in use; merge or remove some zero-shot structures first."
        )

    def validate_click_label(self, label: str | int) -> int:
        """The ID of the one structure clicks are on, refusing groups (clicks edit one structure at a time)."""
        value = self.find_label(label)
        if value in self.subclasses:
            members = ", ".join(str(m) for m in self.subclasses[value])
            raise VISTA3DError(
                f"Label {value} ({self.table()[value].name}) is a group of several structures ({members}); "
                "clicks edit one structure at a time: pick one of its members."
            )
        return value


# The bundle's default prompt (inference.json "everything_labels"): every trained class minus
# the groups (2, 20, 21), the legacy IDs, and the tumour/vessel classes (23..27, 128, 132) that
# overlap organs and would steal their voxels in the argmax; those need an explicit prompt.
# NV-Segment-CTMR's CT_BODY list is the same.
_NOT_IN_CT_EVERYTHING = frozenset({2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})
_CT_EVERYTHING: tuple[int, ...] = tuple(sorted(set(range(1, 133)) - _NOT_IN_CT_EVERYTHING))

VISTA3D_LABELS = LabelSpace(
    key="VISTA3D",
    title="VISTA3D",
    table_filename="VISTA3DColorTable.csv",
    classes=132,
    # Legacy IDs kept in labels.json but not to be prompted without clicks
    # (bundle README; evaluator.check_prompts_format). Each maps to advice for the user.
    unsupported=MappingProxyType({
        16: "use 118 (prostate) instead; there is no uterus class",
        18: "there is no automatic rectum class",
        129: "use 116 (left kidney cyst) or 117 (right kidney cyst), the nearest supported classes",
        130: "use 26 (hepatic tumor) instead",
        131: "there is no automatic L6 class; 33 (vertebrae L5) is the lowest lumbar class",
    }),
    everything_lists=MappingProxyType({"ct": _CT_EVERYTHING}),
    terminology_contexts=(CATEGORY_TYPE_CONTEXT, ANATOMIC_CONTEXT),
    terminology_filenames=("SegmentationCategoryTypeModifier-VISTA3D.term.json",
                           "AnatomicRegionAndModifier-VISTA3D.term.json"),
    zero_shot_ids=range(133, 255),  # 255 would collide with the bundle's "not processed" value
)

# NV-Segment-CTMR (NVIDIA-Medtech/NV-Segment-CTMR, configs/metadata.json, inference.json,
# label_mappings.json and scripts/evaluator.py): 345 classes, automatic only.
CTMR_LABELS = LabelSpace(
    key="NV-Segment-CTMR",
    title="NV-Segment-CTMR",
    table_filename="NV-Segment-CTMRColorTable.csv",
    classes=345,
    # The evaluator's supported_list leaves these out (its names mark them "deprecated"; 155,
    # "ascending aorta (deprecated)", is still accepted there, so it is here). Rectum (18) is back.
    unsupported=MappingProxyType({
        16: "use 118 (prostate) or 161 (uterocervix) instead",
        129: "use 116 (left kidney cyst) or 117 (right kidney cyst), the nearest supported classes",
        130: "use 26 (hepatic tumor) instead",
        131: "there is no L6 class; 33 (vertebrae L5) is the lowest lumbar class",
        133: "there is no fibula class any more",
        **{label_id: "use 156 (muscles) for the thigh muscles as a whole" for label_id in range(137, 145)},
        145: "there is no tibia class any more",
        162: "use 161 (uterocervix) instead",
    }),
    everything_lists=MappingProxyType({
        "ct": _CT_EVERYTHING,  # CT_BODY
        # MRI_BODY: the CTMR IDs of label_mappings.json's "TotalSegmentatorMR", in its order.
        "mri-body": (9, 8, 6, 104, 105, 22, 91, 92, 62, 13, 11, 93, 94, 10, 98, 99, 100, 101, 102, 103, 115, 95, 96,
                     87, 88, 58, 59, 60, 61, 106, 107, 7, 134, 14, 5, 1, 135, 136, 4, 17, 118, 97, 89, 90, 19, 121,
                     3, 12, 15, 146),
        # MRI_BRAIN: those of "LUMIR" (brain structures of skull-stripped T1), 214..345.
        "mri-brain": tuple(range(214, 346)),
    }),
    terminology_contexts=("Segmentation category and type - NV-Segment-CTMR", "Anatomic codes - NV-Segment-CTMR"),
    terminology_filenames=("SegmentationCategoryTypeModifier-NV-Segment-CTMR.term.json",
                           "AnatomicRegionAndModifier-NV-Segment-CTMR.term.json"),
)

#: Every label table the extension ships (the Slicer module loads their terminology contexts).
LABEL_SPACES: tuple[LabelSpace, ...] = (VISTA3D_LABELS, CTMR_LABELS)

# ------------------------------------------------------------------------------------------------
# The VISTA3D bundle's label space under the names most of the library and the tests use.

LAST_TRAINED_ID = VISTA3D_LABELS.classes
ZERO_SHOT_IDS = VISTA3D_LABELS.zero_shot_ids
UNSUPPORTED: frozenset[int] = frozenset(VISTA3D_LABELS.unsupported)
SUPPORTED: frozenset[int] = VISTA3D_LABELS.supported
SUBCLASSES = _SUBCLASSES
EVERYTHING: tuple[int, ...] = _CT_EVERYTHING
colour_table_path = VISTA3D_LABELS.colour_table_path
terminology_context_paths = VISTA3D_LABELS.terminology_context_paths
label_table = VISTA3D_LABELS.table
label_info = VISTA3D_LABELS.label_info
find_label = VISTA3D_LABELS.find_label
parse_label_prompt = VISTA3D_LABELS.parse_label_prompt
validate_automatic_prompt = VISTA3D_LABELS.validate_automatic_prompt
automatic_prompt = VISTA3D_LABELS.automatic_prompt
expand_subclasses = VISTA3D_LABELS.expand_subclasses
next_zero_shot_id = VISTA3D_LABELS.next_zero_shot_id
validate_click_label = VISTA3D_LABELS.validate_click_label
