"""The VISTA3D label space: names, colours, terminology, groups and prompt parsing.

VISTA3D predicts "global" class IDs. IDs 1..132 are the classes it was trained on (the
bundle's ``labels.json``); IDs 133..254 are free "zero-shot" IDs that only make sense together
with clicks; 255 marks "not processed" in the bundle's output and is never a class.

Everything that describes a class lives in one data file, ``data/VISTA3DColorTable.csv``,
in the colour-table CSV format that 3D Slicer (5.10 and later) reads directly: label value,
name, RGBA and DICOM/SNOMED CT terminology columns. Keeping it as data means Slicer can load
the very same file as a colour node, and this module is only its loader. Only the standard
library is imported here, because Slicer imports the module at start-up.

The ID groupings below are copied from the bundle (``configs/inference.json``,
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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .errors import VISTA3DError

COLOUR_TABLE_FILENAME = "VISTA3DColorTable.csv"

# The terminology contexts every segment's TerminologyEntry tag names. Slicer's terminology
# selector looks the codes up in the context the tag names, and Slicer's own contexts (the DICOM
# master lists) lack about half of VISTA3D's codes (single vertebrae and ribs, ...). So the
# extension ships two contexts holding exactly the codes of the CSV (data/Terminologies,
# checked against it by the tests) and the Slicer module loads them at start-up.
CATEGORY_TYPE_CONTEXT = "Segmentation category and type - VISTA3D"
ANATOMIC_CONTEXT = "Anatomic codes - VISTA3D"
TERMINOLOGY_FILENAMES = (
    "SegmentationCategoryTypeModifier-VISTA3D.term.json",
    "AnatomicRegionAndModifier-VISTA3D.term.json",
)

LAST_TRAINED_ID = 132
ZERO_SHOT_IDS = range(133, 255)  # 255 would collide with the bundle's "not processed" value

# Legacy IDs kept in labels.json but not to be prompted without clicks
# (bundle README; evaluator.check_prompts_format). Each maps to advice for the user.
UNSUPPORTED: frozenset[int] = frozenset({16, 18, 129, 130, 131})
_UNSUPPORTED_ADVICE: Mapping[int, str] = MappingProxyType(
    {
        16: "use 118 (prostate) instead; there is no uterus class",
        18: "there is no automatic rectum class",
        129: "use 116 (left kidney cyst) or 117 (right kidney cyst), the nearest supported classes",
        130: "use 26 (hepatic tumor) instead",
        131: "there is no automatic L6 class; 33 (vertebrae L5) is the lowest lumbar class",
    }
)

# The 127 IDs the bundle's evaluator accepts as a label prompt without points.
SUPPORTED: frozenset[int] = frozenset(range(1, LAST_TRAINED_ID + 1)) - UNSUPPORTED

# Groups that the bundle expands into their members before inference (inference.json
# "subclass", applied by monai.apps.vista3d.transforms.VistaPreTransformd). The member order
# is the bundle's and decides the output channel order, so keep it.
SUBCLASSES: Mapping[int, tuple[int, ...]] = MappingProxyType(
    {
        2: (14, 5),  # kidney -> left kidney, right kidney
        20: (28, 29, 30, 31, 32),  # lung -> its five lobes
        21: tuple(range(33, 57)) + tuple(range(63, 98)) + (114, 120, 122),  # bone -> vertebrae, ribs, ..., sternum
    }
)

# The bundle's default prompt (inference.json "everything_labels"): every trained class minus
# the groups (2, 20, 21), the legacy IDs, and the tumour/vessel classes (23..27, 128, 132) that
# overlap organs and would steal their voxels in the argmax; those need an explicit prompt.
_NOT_IN_EVERYTHING = frozenset({2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})
EVERYTHING: tuple[int, ...] = tuple(sorted(set(range(1, LAST_TRAINED_ID + 1)) - _NOT_IN_EVERYTHING))

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

# Zero-shot structures are unknown, so they get Slicer's own default for a new segment: "Tissue".
_ZERO_SHOT_CATEGORY_TYPE = ("SCT", "85756007", "Tissue")


class UnknownLabelError(VISTA3DError):
    """A label name or ID that is not in the VISTA3D label space."""


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
    name: str  # the VISTA3D name exactly as in the bundle's labels.json, e.g. "left kidney"
    display_name: str  # the name shown in Slicer, e.g. "Left kidney" (the CSV's Name column)
    color: tuple[int, int, int]
    category: Code
    type: Code
    type_modifier: Code | None
    region: Code | None
    region_modifier: Code | None

    def terminology_entry(self) -> str:
        """The value of a Slicer segment's "TerminologyEntry" tag.

        Seven ``~``-separated parts: context, category, type, type modifier, region context,
        region, region modifier; each code as ``scheme^value^meaning`` (``^^`` when absent).
        """
        return "~".join(
            (
                CATEGORY_TYPE_CONTEXT,
                _triplet(self.category),
                _triplet(self.type),
                _triplet(self.type_modifier),
                ANATOMIC_CONTEXT,
                _triplet(self.region),
                _triplet(self.region_modifier),
            )
        )


def data_dir() -> Path:
    """The library's data folder (package data: in a checkout, an editable or a wheel install, and
    beside the library in Slicer): the label table and the terminology contexts."""
    folder = Path(str(importlib.resources.files(__package__) / "data"))
    if not (folder / COLOUR_TABLE_FILENAME).is_file():
        raise VISTA3DError(
            f"The VISTA3D label table {COLOUR_TABLE_FILENAME} is not in {folder}. The installation is incomplete: "
            "reinstall the package (pip install vista3dslicer) or the Slicer extension."
        )
    return folder


def colour_table_path() -> Path:
    """The label colour/terminology table (a Slicer CSV colour table)."""
    return data_dir() / COLOUR_TABLE_FILENAME


def terminology_context_paths() -> tuple[Path, Path]:
    """The shipped category/type context and region context files (Slicer ``.term.json``)."""
    folder = data_dir() / "Terminologies"
    return folder / TERMINOLOGY_FILENAMES[0], folder / TERMINOLOGY_FILENAMES[1]


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


@functools.cache
def label_table() -> dict[int, LabelInfo]:
    """IDs 1..132 -> LabelInfo, read once from the colour table.

    The CSV's Name column is the display name; the VISTA3D name is not stored separately
    because it is the display name in lower case except where the display name corrects Latin
    ("iliac vena" -> "iliac vein", "clavicula" -> "clavicle").
    """
    path = colour_table_path()
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
                name=_vista3d_name(display_name),
                display_name=display_name,
                color=color,  # type: ignore[arg-type]
                category=codes["Category"],  # type: ignore[arg-type]
                type=codes["Type"],  # type: ignore[arg-type]
                type_modifier=codes["TypeModifier"],
                region=codes["Region"],
                region_modifier=codes["RegionModifier"],
            )
    if sorted(table) != list(range(1, LAST_TRAINED_ID + 1)):
        raise VISTA3DError(f"The label table {path} must list exactly the IDs 1..{LAST_TRAINED_ID}.")
    return table


# Display names that are not simply the VISTA3D name with a capital first letter.
_DISPLAY_TO_VISTA3D = (("iliac vein", "iliac vena"), ("clavicle", "clavicula"))


def _vista3d_name(display_name: str) -> str:
    """The bundle's name for a display name: first letter lower case, Latin restored."""
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


def label_info(label_id: int) -> LabelInfo:
    """The description of a global label ID: 1..132 from the table, 133..254 a zero-shot entry."""
    try:
        value = _as_id(label_id)
    except TypeError:
        raise VISTA3DError(f"{label_id!r} is not a label ID (an integer 1..254).") from None
    table = label_table()
    if value in table:
        return table[value]
    if value in ZERO_SHOT_IDS:
        return _zero_shot_info(value)
    raise VISTA3DError(
        f"{value} is not a VISTA3D label ID: use 1..{LAST_TRAINED_ID} for trained classes or "
        f"{ZERO_SHOT_IDS.start}..{ZERO_SHOT_IDS.stop - 1} for zero-shot structures."
    )


@functools.cache
def _names() -> dict[str, int]:
    """Normalised VISTA3D names and display names -> ID."""
    names: dict[str, int] = {}
    for info in label_table().values():
        names[normalise_name(info.name)] = info.id
        names.setdefault(normalise_name(info.display_name), info.id)
    return names


_ZERO_SHOT_NAME = re.compile(r"zero-shot structure (\d+)")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def find_label(name_or_id: str | int) -> int:
    """The ID of a label given by name (VISTA3D or display name, any case, '_' as ' ') or ID 1..254."""
    if isinstance(name_or_id, str):
        text = name_or_id.strip()
        if _INTEGER.fullmatch(text):  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
            return find_label(int(text))
        key = normalise_name(text)
        names = _names()
        if key in names:
            return names[key]
        zero_shot = _ZERO_SHOT_NAME.fullmatch(key)
        if zero_shot and int(zero_shot.group(1)) in ZERO_SHOT_IDS:
            return int(zero_shot.group(1))
        vista_names = [info.name for info in label_table().values()]
        close = difflib.get_close_matches(key, vista_names, n=5, cutoff=0.6)
        if not close:  # a part of a name, e.g. "rib", or a word of it
            close = [n for n in vista_names if key and key in n][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownLabelError(
            f'Unknown label "{text}".{hint} Give a VISTA3D class name or an ID '
            f"(1..{LAST_TRAINED_ID}, or {ZERO_SHOT_IDS.start}..{ZERO_SHOT_IDS.stop - 1} with clicks)."
        )
    try:
        value = _as_id(name_or_id)
    except TypeError:
        raise UnknownLabelError(f"{name_or_id!r} is neither a label name nor an ID.") from None
    if value in label_table() or value in ZERO_SHOT_IDS:
        return value
    raise UnknownLabelError(
        f"{value} is not a VISTA3D label ID: use 1..{LAST_TRAINED_ID}, "
        f"or {ZERO_SHOT_IDS.start}..{ZERO_SHOT_IDS.stop - 1} for a zero-shot structure with clicks."
    )


def parse_label_prompt(text: str) -> list[int]:
    """IDs from a prompt string: comma-separated names or IDs, or "everything".

    "everything" (any case) stands for the bundle's default set and may be combined with
    other items ("everything, hepatic tumor"). Duplicates are dropped, first occurrence kept.
    """
    items = [item.strip() for item in str(text).split(",")]
    items = [item for item in items if item]
    if not items:
        raise VISTA3DError('The label prompt is empty: give names or IDs separated by commas, or "everything".')
    ids: list[int] = []
    for item in items:
        ids.extend(EVERYTHING if normalise_name(item) == "everything" else (find_label(item),))
    return list(dict.fromkeys(ids))


def validate_automatic_prompt(ids: Sequence[int]) -> None:
    """Refuse a prompt that cannot be segmented without clicks, saying what to do instead."""
    if len(ids) == 0:
        raise VISTA3DError('The label prompt is empty: give at least one class, or "everything".')
    for label_id in ids:
        try:
            value = _as_id(label_id)
        except TypeError:
            raise VISTA3DError(f"{label_id!r} is not a label ID.") from None
        if value in UNSUPPORTED:
            name = label_table()[value].name
            raise VISTA3DError(
                f"Label {value} ({name}) is a legacy class that VISTA3D does not segment automatically: "
                f"{_UNSUPPORTED_ADVICE[value]}. It can still be segmented with clicks."
            )
        if value in ZERO_SHOT_IDS:
            raise VISTA3DError(
                f"Label {value} is a zero-shot ID: it needs clicks (point prompts) on the structure; "
                f"automatic segmentation takes IDs 1..{LAST_TRAINED_ID}."
            )
        if value not in SUPPORTED:
            raise VISTA3DError(
                f"{value} is not a VISTA3D label ID: automatic segmentation takes IDs 1..{LAST_TRAINED_ID}."
            )


def automatic_prompt(prompt: str | Sequence[str | int] | None) -> list[int]:
    """The class IDs an automatic segmentation is asked for, checked: the one reading of a prompt
    for the command line, the Slicer Logic, the panel and the benchmarks.

    ``prompt``: a string ("liver, spleen, 1, 3", "everything, hepatic tumor"), a list of names and
    IDs, or None for everything. Groups stay groups (the engine expands them as the bundle does).
    Raises ``UnknownLabelError`` (with the closest names) or ``VISTA3DError`` saying what to do.
    """
    if prompt is None:
        ids = list(EVERYTHING)
    elif isinstance(prompt, str):
        ids = parse_label_prompt(prompt)
    else:
        ids = list(dict.fromkeys(find_label(item) for item in prompt))
    validate_automatic_prompt(ids)
    return ids


def next_zero_shot_id(used: Iterable[int]) -> int:
    """The first zero-shot ID (133..254) not in ``used``: each zero-shot structure gets its own."""
    taken = set(int(u) for u in used)
    for label_id in ZERO_SHOT_IDS:
        if label_id not in taken:
            return label_id
    raise VISTA3DError(
        f"All {len(ZERO_SHOT_IDS)} zero-shot IDs ({ZERO_SHOT_IDS.start}..{ZERO_SHOT_IDS.stop - 1}) are in use; "
        "merge or remove some zero-shot structures first."
    )


def validate_click_label(label: str | int) -> int:
    """The ID of the one structure clicks are on, refusing groups (clicks edit one structure at a time)."""
    value = find_label(label)
    if value in SUBCLASSES:
        members = ", ".join(str(m) for m in SUBCLASSES[value])
        raise VISTA3DError(
            f"Label {value} ({label_table()[value].name}) is a group of several structures ({members}); "
            "clicks edit one structure at a time: pick one of its members."
        )
    return value


def expand_subclasses(ids: Sequence[int]) -> list[int]:
    """Groups replaced in place by their members, as the bundle does; duplicates dropped, first kept."""
    expanded: list[int] = []
    for label_id in ids:
        value = _as_id(label_id)
        expanded.extend(SUBCLASSES.get(value, (value,)))
    return list(dict.fromkeys(expanded))
