"""The terminology contexts the extension ships, checked against the label table they come from.

Slicer's terminology selector looks a segment's codes up in the context its TerminologyEntry tag
names. Slicer's own contexts lack the codes of about half the VISTA3D classes (single vertebrae
and ribs, the portal and splenic vein, ...), so the extension ships one category/type context and
one region context holding exactly the codes of the label table (``data/VISTA3DColorTable.csv``; and the
zero-shot structures'), and every tag names them. This file builds what those two JSON files must
hold from the label table; ``VISTA3D_WRITE_TERMINOLOGY=1`` writes them after a change of the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest

from VISTA3DSlicerLib import labels
from VISTA3DSlicerLib.labels import Code, LabelInfo

SEGMENT_CONTEXT_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"
ANATOMIC_CONTEXT_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/anatomic-context-schema.json#"


def coded(code: Code, info: Optional[LabelInfo] = None) -> dict:
    """A code as the context files hold it; with ``info``, the label's colour and name too."""
    entry = {"CodeMeaning": code.meaning, "CodingSchemeDesignator": code.scheme, "CodeValue": code.value}
    if info is not None:
        entry["recommendedDisplayRGBValue"] = list(info.color)
        entry["3dSlicerLabel"] = info.name
    return entry


def described_labels() -> list[LabelInfo]:
    """Every label the extension writes a tag for: the table, and the zero-shot structures (whose
    codes are the same for every zero-shot ID)."""
    return [*labels.label_table().values(), labels.label_info(labels.ZERO_SHOT_IDS[0])]


def expected_category_type_context() -> dict:
    categories: dict[Code, dict] = {}
    types: dict[tuple[Code, Code], dict] = {}
    for info in described_labels():
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
        "SegmentationCategoryTypeContextName": labels.CATEGORY_TYPE_CONTEXT,
        "@schema": SEGMENT_CONTEXT_SCHEMA,
        "SegmentationCodes": {"Category": list(categories.values())},
    }


def expected_region_context() -> dict:
    regions: dict[Code, dict] = {}
    for info in described_labels():
        if info.region is None:
            continue
        region = regions.setdefault(info.region, coded(info.region))
        if info.region_modifier is not None and all(
                m["CodeValue"] != info.region_modifier.value for m in region.get("Modifier", [])):
            region.setdefault("Modifier", []).append(coded(info.region_modifier))
    return {
        "AnatomicContextName": labels.ANATOMIC_CONTEXT,
        "@schema": ANATOMIC_CONTEXT_SCHEMA,
        "AnatomicCodes": {"AnatomicRegion": list(regions.values())},
    }


@pytest.mark.parametrize("path, expected", [
    (labels.terminology_context_paths()[0], expected_category_type_context),
    (labels.terminology_context_paths()[1], expected_region_context),
])
def test_the_shipped_contexts_hold_exactly_the_label_table_s_codes(path: Path, expected):
    content = expected()
    if os.environ.get("VISTA3D_WRITE_TERMINOLOGY"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert path.is_file(), f"{path} is missing: run VISTA3D_WRITE_TERMINOLOGY=1 pytest {__file__}"
    assert json.loads(path.read_text(encoding="utf-8")) == content, (
        f"{path.name} does not match the label table {labels.colour_table_path()}: run VISTA3D_WRITE_TERMINOLOGY=1 pytest {__file__}")


def test_every_label_names_the_shipped_contexts():
    for info in described_labels():
        parts = info.terminology_entry().split("~")
        assert (parts[0], parts[4]) == (labels.CATEGORY_TYPE_CONTEXT, labels.ANATOMIC_CONTEXT)
    names = {json.loads(path.read_text(encoding="utf-8")).get(key)
             for path, key in zip(labels.terminology_context_paths(),
                                  ("SegmentationCategoryTypeContextName", "AnatomicContextName"))}
    assert names == {labels.CATEGORY_TYPE_CONTEXT, labels.ANATOMIC_CONTEXT}


def test_types_shared_by_several_labels_keep_one_entry_and_every_laterality():
    context = expected_category_type_context()
    anatomy = next(c for c in context["SegmentationCodes"]["Category"] if c["CodeMeaning"] == "Anatomical Structure")
    kidney = [t for t in anatomy["Type"] if t["CodeMeaning"] == "Kidney"]
    assert len(kidney) == 1
    assert kidney[0]["3dSlicerLabel"] == "kidney"
    assert {m["3dSlicerLabel"] for m in kidney[0]["Modifier"]} == {"left kidney", "right kidney"}
