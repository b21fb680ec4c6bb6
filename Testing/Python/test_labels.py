"""The label table and prompt handling against the bundle's label dictionary and MONAI's transform."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from VISTA3DSlicerLib import labels
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.labels import Code, UnknownLabelError

REPO = Path(__file__).resolve().parents[2]
REFERENCE_LABELS = REPO.parent / "shared" / "reference" / "vista3d_labels.json"

# The bundle's inference.json "subclass", written out independently of labels.SUBCLASSES.
BUNDLE_SUBCLASS = {
    "2": [14, 5],
    "20": [28, 29, 30, 31, 32],
    "21": list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122],
}

SLICER_HEADER = (
    "LabelValue,Name,Color_R,Color_G,Color_B,Color_A,"
    "Category_CodingScheme,Category_CodeValue,Category_CodeMeaning,"
    "Type_CodingScheme,Type_CodeValue,Type_CodeMeaning,"
    "TypeModifier_CodingScheme,TypeModifier_CodeValue,TypeModifier_CodeMeaning,"
    "Region_CodingScheme,Region_CodeValue,Region_CodeMeaning,"
    "RegionModifier_CodingScheme,RegionModifier_CodeValue,RegionModifier_CodeMeaning"
).split(",")

LEFT = Code("SCT", "7771000", "Left")
RIGHT = Code("SCT", "24028007", "Right")


@pytest.fixture(scope="module")
def reference_names() -> dict[int, str]:
    if not REFERENCE_LABELS.exists():
        pytest.skip(f"reference label dictionary not available ({REFERENCE_LABELS})")
    return {value: name for name, value in json.loads(REFERENCE_LABELS.read_text(encoding="utf-8")).items()}


# --- the table ---------------------------------------------------------------------------


def test_csv_is_a_slicer_colour_table():
    with labels.colour_table_path().open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == SLICER_HEADER
    values = [int(row[0]) for row in rows[1:]]
    assert values == list(range(1, 133))  # no background row: Slicer wants 0 left out
    assert all(len(row) == len(SLICER_HEADER) for row in rows)
    assert all(row[5] == "255" for row in rows[1:])
    assert not any('"' in cell for row in rows for cell in row)  # Slicer's reader cannot take quotes in values


def test_table_has_ids_1_to_132():
    table = labels.label_table()
    assert sorted(table) == list(range(1, 133))
    assert all(info.id == label_id for label_id, info in table.items())


def test_names_equal_the_bundle_dictionary(reference_names):
    table = labels.label_table()
    assert {label_id: info.name for label_id, info in table.items()} == reference_names


def test_display_names_are_unique_and_capitalised():
    display = [info.display_name for info in labels.label_table().values()]
    assert len({name.lower() for name in display}) == 132
    assert all(name[0].isupper() for name in display)
    assert labels.label_info(1).display_name == "Liver"
    assert labels.label_info(14).display_name == "Left kidney"
    assert labels.label_info(33).display_name == "Vertebrae L5"
    assert labels.label_info(63).display_name == "Left rib 1"
    assert labels.label_info(7).display_name == "Inferior vena cava"


def test_every_row_has_complete_category_and_type():
    for info in labels.label_table().values():
        for code in (info.category, info.type):
            assert code.scheme and code.value and code.meaning, info
        for code in (info.type_modifier, info.region, info.region_modifier):
            assert code is None or (code.scheme and code.value and code.meaning), info


def test_colours_are_bytes():
    for info in [*labels.label_table().values(), labels.label_info(133), labels.label_info(254)]:
        assert len(info.color) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in info.color), info


@pytest.mark.parametrize(
    ("left", "right"),
    [(14, 5), (9, 8), (28, 30), (29, 32), (58, 59), (60, 61), (63, 75), (74, 86), (87, 88), (91, 92),
     (95, 96), (98, 99), (104, 105), (106, 107), (110, 111), (112, 113), (123, 124)],
)
def test_left_right_type_modifiers(left, right):
    left_info, right_info = labels.label_info(left), labels.label_info(right)
    assert left_info.name.startswith("left ") and right_info.name.startswith("right ")
    assert left_info.type_modifier == LEFT
    assert right_info.type_modifier == RIGHT
    assert left_info.type == right_info.type


def test_kidney_cysts_are_cysts_in_the_left_or_right_kidney():
    kidney = Code("SCT", "64033007", "Kidney")
    for label_id, side in ((116, LEFT), (117, RIGHT)):
        info = labels.label_info(label_id)
        assert info.type == Code("SCT", "367643001", "Cyst")
        assert info.region == kidney
        assert info.region_modifier == side


@pytest.mark.parametrize(
    ("label_id", "region_value"),
    [(23, "39607008"), (24, "15776009"), (26, "10200004"), (27, "71854001"), (128, "272673000"), (130, "10200004")],
)
def test_tumours_are_altered_structures_in_their_organ(label_id, region_value):
    info = labels.label_info(label_id)
    assert info.category == Code("SCT", "49755003", "Morphologically Altered Structure")
    assert info.region is not None and info.region.value == region_value


def test_legacy_ids_have_rows():
    for label_id in labels.UNSUPPORTED:
        info = labels.label_info(label_id)
        assert info.id == label_id and info.category and info.type


def test_terminology_entry_format():
    for info in [*labels.label_table().values(), labels.label_info(200)]:
        parts = info.terminology_entry().split("~")
        assert len(parts) == 7
        assert parts[0] == "Segmentation category and type - VISTA3D"
        assert parts[4] == "Anatomic codes - VISTA3D"
        for index in (1, 2, 3, 5, 6):
            assert parts[index].count("^") == 2
        assert parts[1] == f"{info.category.scheme}^{info.category.value}^{info.category.meaning}"
        assert parts[2].split("^")[1] == info.type.value
    left_kidney = labels.label_info(14).terminology_entry().split("~")
    assert left_kidney[2:4] == ["SCT^64033007^Kidney", "SCT^7771000^Left"]
    assert left_kidney[5:] == ["^^", "^^"]


def test_zero_shot_entries():
    first, other = labels.label_info(133), labels.label_info(134)
    assert first.display_name == "Zero-shot structure 133"
    assert first.color != other.color
    assert labels.label_info(133) == first  # deterministic
    assert first.category.value and first.type.value
    assert len({labels.label_info(i).color for i in labels.ZERO_SHOT_IDS}) == len(labels.ZERO_SHOT_IDS)


@pytest.mark.parametrize("bad", [0, -1, 255, 1000, "3", 2.0, None])
def test_label_info_refuses_other_values(bad):
    with pytest.raises(VISTA3DError):
        labels.label_info(bad)


# --- the groups --------------------------------------------------------------------------


def test_everything_is_the_bundle_set():
    expected = sorted(set(range(1, 133)) - {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})
    assert list(labels.EVERYTHING) == expected
    assert len(labels.EVERYTHING) == 117


def test_supported_and_unsupported():
    assert len(labels.SUPPORTED) == 127
    assert labels.UNSUPPORTED == {16, 18, 129, 130, 131}
    assert labels.SUPPORTED | labels.UNSUPPORTED == set(range(1, 133))
    assert set(labels.EVERYTHING) <= labels.SUPPORTED
    assert labels.ZERO_SHOT_IDS == range(133, 255)


def test_special_lists():
    assert labels.SPECIAL_BUNDLE == (25, 26, 27, 28, 29, 117)
    assert labels.SPECIAL_MODEL == (23, 24, 25, 26, 27, 57, 128)


def test_subclasses_match_the_bundle():
    assert {str(k): list(v) for k, v in labels.SUBCLASSES.items()} == BUNDLE_SUBCLASS
    assert len(labels.SUBCLASSES[21]) == 62


# --- lookup and prompts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("liver", 1), ("LIVER", 1), (" Liver ", 1), ("left kidney", 14), ("Left_Kidney", 14), ("left  kidney", 14),
     ("Vertebrae l5", 33), ("vertebrae_L5", 33), ("Left iliac vein", 60), ("left iliac vena", 60),
     ("hepatic tumor", 26), ("Zero-shot structure 140", 140), ("3", 3), (3, 3), ("133", 133), (254, 254)],
)
def test_find_label(text, expected):
    assert labels.find_label(text) == expected


def test_every_name_and_display_name_finds_its_id():
    for label_id, info in labels.label_table().items():
        assert labels.find_label(info.name) == label_id
        assert labels.find_label(info.display_name.upper()) == label_id


def test_typo_suggests_the_closest_names():
    with pytest.raises(UnknownLabelError, match="liver"):
        labels.find_label("livr")
    with pytest.raises(UnknownLabelError, match="spleen"):
        labels.find_label("spleeen")


@pytest.mark.parametrize("bad", ["", "nothing like it", "0", "255", 0, 255, -3])
def test_find_label_refuses_unknown(bad):
    with pytest.raises(UnknownLabelError):
        labels.find_label(bad)


def test_unknown_label_error_is_a_vista3d_error():
    assert issubclass(UnknownLabelError, VISTA3DError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("liver,spleen", [1, 3]),
        (" liver , Spleen ", [1, 3]),
        ("1,3", [1, 3]),
        ("1, liver, 3, spleen", [1, 3]),
        ("hepatic tumor,liver,", [26, 1]),
        ("left_kidney, 5", [14, 5]),
        ("kidney", [2]),
    ],
)
def test_parse_label_prompt(text, expected):
    assert labels.parse_label_prompt(text) == expected


@pytest.mark.parametrize("text", ["everything", "EVERYTHING", " Everything "])
def test_parse_everything(text):
    assert labels.parse_label_prompt(text) == list(labels.EVERYTHING)


def test_parse_everything_combined():
    assert labels.parse_label_prompt("everything, hepatic tumor, liver") == [*labels.EVERYTHING, 26]


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,"])
def test_parse_empty_prompt(text):
    with pytest.raises(VISTA3DError):
        labels.parse_label_prompt(text)


def test_parse_unknown_name():
    with pytest.raises(UnknownLabelError, match="liver"):
        labels.parse_label_prompt("spleen, livr")


def test_validate_accepts_supported():
    labels.validate_automatic_prompt(labels.EVERYTHING)
    labels.validate_automatic_prompt(sorted(labels.SUPPORTED))
    labels.validate_automatic_prompt([2, 20, 21, 26])


@pytest.mark.parametrize(("legacy", "advice"), [(16, "118"), (130, "26"), (129, "116"), (131, "33"), (18, "rectum")])
def test_validate_legacy_ids_say_what_to_use(legacy, advice):
    with pytest.raises(VISTA3DError, match=advice):
        labels.validate_automatic_prompt([1, legacy])


@pytest.mark.parametrize("zero_shot", [133, 200, 254])
def test_validate_zero_shot_needs_clicks(zero_shot):
    with pytest.raises(VISTA3DError, match="clicks"):
        labels.validate_automatic_prompt([zero_shot])


@pytest.mark.parametrize("bad", [[0], [255], [1, 300], [-1], []])
def test_validate_refuses_out_of_range(bad):
    with pytest.raises(VISTA3DError):
        labels.validate_automatic_prompt(bad)


# --- expansion, against MONAI ------------------------------------------------------------


def monai_expansion(prompt: list[int]) -> list[int]:
    """What the bundle's VistaPreTransformd makes of a label prompt, duplicates then dropped."""
    transforms = pytest.importorskip("monai.apps.vista3d.transforms")
    transform = transforms.VistaPreTransformd(keys="image", allow_missing_keys=True, subclass=BUNDLE_SUBCLASS)
    out = transform({"label_prompt": list(prompt)})["label_prompt"]
    return list(dict.fromkeys(int(i) for i in out))


@pytest.mark.parametrize(
    "prompt",
    [[2], [20], [21], [1, 2, 3], [21, 2, 20], [14, 2], [2, 14, 5], [33, 21, 63], list(labels.EVERYTHING), [26, 25]],
)
def test_expand_subclasses_matches_monai(prompt):
    assert labels.expand_subclasses(prompt) == monai_expansion(prompt)


def test_expand_examples():
    assert labels.expand_subclasses([2]) == [14, 5]
    assert labels.expand_subclasses([20]) == [28, 29, 30, 31, 32]
    assert labels.expand_subclasses([1, 2, 14]) == [1, 14, 5]
    assert labels.expand_subclasses([5, 2]) == [5, 14]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(labels.SUPPORTED)), min_size=1, max_size=12))
def test_expand_subclasses_matches_monai_random(prompt):
    assert labels.expand_subclasses(prompt) == monai_expansion(prompt)


def test_next_zero_shot_id_gives_each_structure_its_own():
    from VISTA3DSlicerLib.labels import next_zero_shot_id

    assert next_zero_shot_id([]) == 133
    assert next_zero_shot_id([1, 133, 134, 136]) == 135
    with pytest.raises(VISTA3DError, match="zero-shot IDs"):
        next_zero_shot_id(range(133, 255))


def test_clicks_refuse_groups_and_take_one_structure():
    from VISTA3DSlicerLib.labels import validate_click_label

    assert validate_click_label("liver") == 1 and validate_click_label(140) == 140
    with pytest.raises(VISTA3DError, match="group"):
        validate_click_label("kidney")


def test_automatic_prompt_reads_every_form_a_caller_has_the_same_way():
    """One reading for the command line (a string), the Slicer Logic (a string or a list) and scripts."""
    assert labels.automatic_prompt(None) == list(labels.EVERYTHING)
    assert labels.automatic_prompt("liver, spleen, 1") == [1, 3]
    assert labels.automatic_prompt(["Liver", 3, "spleen"]) == [1, 3]
    assert labels.automatic_prompt("everything, hepatic tumor")[-1] == labels.find_label("hepatic tumor")
    with pytest.raises(VISTA3DError, match="zero-shot ID"):
        labels.automatic_prompt([1, 133])
    with pytest.raises(labels.UnknownLabelError, match="livr"):
        labels.automatic_prompt(["livr"])
