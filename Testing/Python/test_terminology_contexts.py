"""The terminology contexts the extension ships, checked against the label tables they come from.

Slicer's terminology selector looks a segment's codes up in the context its TerminologyEntry tag
names. Slicer's own contexts lack the codes of about half the VISTA3D classes (single vertebrae
and ribs, the portal and splenic vein, ...), so the extension ships, per label table
(``data/VISTA3DColorTable.csv``, ``data/NV-Segment-CTMRColorTable.csv``), one category/type context
and one region context holding exactly the codes of the table (and the zero-shot structures'),
and every tag names them. This file builds what those JSON files must hold from the label tables;
``VISTA3D_WRITE_TERMINOLOGY=1`` writes them after a change of a table.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import pytest

from VISTA3DSlicerLib import labels
from VISTA3DSlicerLib.labels import LABEL_SPACES, Code, LabelInfo, LabelSpace

SEGMENT_CONTEXT_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"
ANATOMIC_CONTEXT_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/anatomic-context-schema.json#"


def coded(code: Code, info: Optional[LabelInfo] = None) -> dict:
    """A code as the context files hold it; with ``info``, the label's colour and name too."""
    entry = {"CodeMeaning": code.meaning, "CodingSchemeDesignator": code.scheme, "CodeValue": code.value}
    if info is not None:
        entry["recommendedDisplayRGBValue"] = list(info.color)
        entry["3dSlicerLabel"] = info.name
    return entry


def described_labels(space: LabelSpace) -> list[LabelInfo]:
    """Every label the extension writes a tag for: the table, and the zero-shot structures (whose
    codes are the same for every zero-shot ID)."""
    zero_shot = [space.label_info(space.zero_shot_ids[0])] if space.zero_shot_ids else []
    return [*space.table().values(), *zero_shot]


def expected_category_type_context(space: LabelSpace) -> dict:
    categories: dict[Code, dict] = {}
    types: dict[tuple[Code, Code], dict] = {}
    for info in described_labels(space):
        category = categories.setdefault(info.category, {**coded(info.category), "showAnatomy": False, "Type": []})
        category["showAnatomy"] |= info.region is not None
        kind = types.get((info.category, info.type))
        if kind is None:
            kind = types[(info.category, info.type)] = coded(info.type)
            category["Type"].append(kind)
        if info.type_modifier is None:
            kind.setdefault("recommendedDisplayRGBValue", list(info.color))
            kind.setdefault("3dSlicerLabel", info.name)
        elif all(m["CodeValue"] != info.type_modifier.value for m in kind.get("Modifier", [])):
            kind.setdefault("Modifier", []).append(coded(info.type_modifier, info))
    return {
        "SegmentationCategoryTypeContextName": space.terminology_contexts[0],
        "@schema": SEGMENT_CONTEXT_SCHEMA,
        "SegmentationCodes": {"Category": list(categories.values())},
    }


def expected_region_context(space: LabelSpace) -> dict:
    regions: dict[Code, dict] = {}
    for info in described_labels(space):
        if info.region is None:
            continue
        region = regions.setdefault(info.region, coded(info.region))
        if info.region_modifier is not None and all(
                m["CodeValue"] != info.region_modifier.value for m in region.get("Modifier", [])):
            region.setdefault("Modifier", []).append(coded(info.region_modifier))
    return {
        "AnatomicContextName": space.terminology_contexts[1],
        "@schema": ANATOMIC_CONTEXT_SCHEMA,
        "AnatomicCodes": {"AnatomicRegion": list(regions.values())},
    }


@pytest.mark.parametrize("space", LABEL_SPACES, ids=lambda space: space.key)
@pytest.mark.parametrize("part, expected", [(0, expected_category_type_context), (1, expected_region_context)],
                         ids=["category-type", "region"])
def test_the_shipped_contexts_hold_exactly_the_label_table_s_codes(space: LabelSpace, part: int, expected):
    path = space.terminology_context_paths()[part]
    content = expected(space)
    if os.environ.get("VISTA3D_WRITE_TERMINOLOGY"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert path.is_file(), f"{path} is missing: run VISTA3D_WRITE_TERMINOLOGY=1 pytest {__file__}"
    assert json.loads(path.read_text(encoding="utf-8")) == content, (
        f"{path.name} does not match the label table {space.colour_table_path()}: run VISTA3D_WRITE_TERMINOLOGY=1 pytest {__file__}")


@pytest.mark.parametrize("space", LABEL_SPACES, ids=lambda space: space.key)
def test_every_label_names_the_shipped_contexts(space: LabelSpace):
    for info in described_labels(space):
        parts = info.terminology_entry().split("~")
        assert (parts[0], parts[4]) == space.terminology_contexts
    names = {json.loads(path.read_text(encoding="utf-8")).get(key)
             for path, key in zip(space.terminology_context_paths(),
                                  ("SegmentationCategoryTypeContextName", "AnatomicContextName"))}
    assert names == set(space.terminology_contexts)
    assert space.terminology_contexts[0] != labels.CATEGORY_TYPE_CONTEXT or space is labels.VISTA3D_LABELS


def test_types_shared_by_several_labels_keep_one_entry_and_every_laterality():
    context = expected_category_type_context(labels.VISTA3D_LABELS)
    anatomy = next(c for c in context["SegmentationCodes"]["Category"] if c["CodeMeaning"] == "Anatomical Structure")
    kidney = [t for t in anatomy["Type"] if t["CodeMeaning"] == "Kidney"]
    assert len(kidney) == 1
    assert kidney[0]["3dSlicerLabel"] == "kidney"
    assert {m["3dSlicerLabel"] for m in kidney[0]["Modifier"]} == {"left kidney", "right kidney"}
