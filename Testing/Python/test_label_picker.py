"""The label picker's tree, search and selection against labels.py's label space."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from VISTA3DSlicerLib import labels
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.label_picker import LabelSelection, TreeNode, find_node, label_tree, matching_keys
from VISTA3DSlicerLib.labels import UnknownLabelError

GROUP_IDS = {2, 20, 21}
# What "everything" leaves out although the tree offers it: tumours, bone lesion, hepatic vessel
# and airway. summary() names exactly these in words, so a change here must change it too.
OUTSIDE_EVERYTHING = {23, 24, 25, 26, 27, 128, 132}


def all_nodes() -> list[TreeNode]:
    return [node for top in label_tree() for node in top.walk()]


def leaves() -> list[TreeNode]:
    return [node for node in all_nodes() if node.is_leaf]


def leaf_keys(ids) -> set[str]:
    return {f"label:{label_id}" for label_id in ids}


# --- the tree ------------------------------------------------------------------------------


def test_every_supported_id_but_the_groups_is_exactly_one_leaf():
    counts = Counter(node.label_id for node in leaves())
    assert set(counts) == set(labels.SUPPORTED) - GROUP_IDS
    assert all(count == 1 for count in counts.values()), [i for i, c in counts.items() if c > 1]
    assert not set(counts) & labels.UNSUPPORTED


def test_keys_are_unique_and_find_their_node():
    keys = [node.key for node in all_nodes()]
    assert len(keys) == len(set(keys))
    assert all(find_node(node.key) is node for node in all_nodes())
    with pytest.raises(KeyError):
        find_node("label:16")


def test_leaves_are_titled_with_the_display_name():
    for node in leaves():
        assert node.key == f"label:{node.label_id}"
        assert node.title == labels.label_info(node.label_id).display_name


def test_top_level_sections():
    assert [top.title for top in label_tree()] == [
        "Abdominal and pelvic organs", "Thorax", "Head and neck", "Vessels", "Bones", "Muscles", "Tumours and lesions",
    ]
    assert all(top.key.startswith("section:") and top.label_id is None for top in label_tree())


@pytest.mark.parametrize("group_id", [2, 20])
def test_groups_hold_their_subclass_members_in_the_bundle_order(group_id):
    group = find_node(f"group:{group_id}")
    assert group.label_id == group_id and not group.is_leaf
    assert group.leaf_ids() == labels.SUBCLASSES[group_id]
    assert all(child.is_leaf for child in group.children)
    assert group.tooltip.startswith(f"Label {group_id} ({labels.label_info(group_id).name}) is a group")
    assert all(f"({member})" in group.tooltip for member in labels.SUBCLASSES[group_id])


def test_kidney_tooltip_states_the_rule():
    assert find_node("group:2").tooltip == (
        "Label 2 (kidney) is a group: VISTA3D segments it as left kidney (14) and right kidney (5)."
    )


def test_bones_section_is_the_bone_group_plus_s1():
    bones = find_node("section:bones")
    assert set(bones.leaf_ids()) == set(labels.SUBCLASSES[21]) | {127}
    assert "Label 21 (bone) is a group" in bones.tooltip
    assert "33..56, 63..97, 114, 120 and 122" in bones.tooltip
    assert "Vertebrae S1 (127) is not a member" in bones.tooltip
    assert [child.title for child in bones.children] == [
        "Skull", "Spine", "Ribs", "Sternum", "Costal cartilages", "Shoulder and arm", "Pelvis and leg",
    ]


def test_lesion_section():
    assert set(find_node("section:lesions").leaf_ids()) == {23, 24, 26, 27, 128, 116, 117}


def test_the_everything_note_names_what_everything_leaves_out():
    assert {node.label_id for node in leaves()} - set(labels.EVERYTHING) == OUTSIDE_EVERYTHING
    for node in leaves():
        assert ("Not part of Everything" in node.tooltip) == (node.label_id in OUTSIDE_EVERYTHING)


# --- search --------------------------------------------------------------------------------


def test_empty_query_shows_everything():
    assert matching_keys("") == matching_keys("   ") == {node.key for node in all_nodes()}


def test_left_rib_shows_the_left_ribs_only():
    shown = matching_keys("left rib")
    assert shown == leaf_keys(range(63, 75)) | {"section:bones", "section:ribs", "section:left_ribs"}


def test_a_number_matches_the_id_exactly():
    assert matching_keys("26") == {"label:26", "section:lesions"}
    assert matching_keys("rib 1") & leaf_keys(range(63, 87)) == leaf_keys([63, 75])  # not rib 10, 11, 12


def test_kidney_shows_the_group_with_both_kidneys_and_the_cysts():
    shown = matching_keys("kidney")
    assert shown == {"section:abdomen", "group:2", "label:14", "label:5", "section:lesions", "label:116", "label:117"}


def test_search_is_case_insensitive_and_needs_every_word():
    assert matching_keys("VERTEBRAE l5") == {
        "section:bones", "section:spine", "section:lumbar_spine", "label:33",
    }
    assert matching_keys("right lobe") & leaf_keys(range(28, 33)) == leaf_keys([30, 31, 32])


def test_a_section_title_shows_the_whole_section():
    shown = matching_keys("shoulder")
    assert shown == {"section:bones", "section:shoulder_arm"} | leaf_keys(range(87, 93))
    assert leaf_keys(find_node("section:muscles").leaf_ids()) <= matching_keys("MUSCLES")


def test_the_vista3d_latin_name_is_searchable():
    assert leaf_keys([91, 92]) <= matching_keys("clavicula")


def test_nonsense_shows_nothing():
    assert matching_keys("xyzzy") == set()
    assert matching_keys("left xyzzy") == set()


# --- selection -----------------------------------------------------------------------------


def test_section_tri_state():
    selection = LabelSelection()
    thorax, lung = find_node("section:thorax"), find_node("group:20")
    assert selection.check_state(thorax) == "unchecked"
    selection.set_checked(find_node("label:28"), True)
    assert selection.check_state(lung) == selection.check_state(thorax) == "partial"
    selection.set_checked(thorax, True)
    assert selection.check_state(thorax) == "checked"
    assert selection.ids == sorted(thorax.leaf_ids())
    selection.set_checked(lung, False)
    assert selection.check_state(lung) == "unchecked" and selection.check_state(thorax) == "partial"
    selection.set_checked(thorax, False)
    assert selection.ids == []


def test_a_group_id_checks_its_members():
    selection = LabelSelection()
    selection.set_checked(2, True)
    assert selection.ids == [5, 14]
    selection.set_checked(21, True)
    assert selection.ids == sorted({5, 14, *labels.SUBCLASSES[21]})


@pytest.mark.parametrize(("label_id", "advice"), [(16, "118 (prostate)"), (130, "26 (hepatic tumor)")])
def test_a_legacy_id_cannot_be_selected(label_id, advice):
    with pytest.raises(VISTA3DError, match=re.escape(f"use {advice}")):
        LabelSelection().set_checked(label_id, True)
    with pytest.raises(VISTA3DError, match=re.escape(f"use {advice}")):
        LabelSelection.from_prompt(str(label_id))


def test_everything_round_trip():
    selection = LabelSelection()
    selection.select_everything()
    assert selection.is_everything and selection.ids == list(labels.EVERYTHING)
    assert selection.to_prompt() == "everything"
    again = LabelSelection.from_prompt(selection.to_prompt())
    assert again.is_everything and again.ids == selection.ids


def test_everything_with_extras_round_trip():
    selection = LabelSelection.from_prompt("everything, hepatic tumor")
    assert not selection.is_everything and selection.includes_everything
    assert selection.ids == sorted({*labels.EVERYTHING, 26})
    assert selection.to_prompt() == "everything, hepatic tumor"
    assert LabelSelection.from_prompt(selection.to_prompt()).ids == selection.ids


def test_every_leaf_round_trips_through_its_prompt_name():
    for node in leaves():
        assert LabelSelection.from_prompt(LabelSelection([node.label_id]).to_prompt()).ids == [node.label_id]


def test_unticking_from_everything_leaves_a_named_prompt():
    selection = LabelSelection()
    selection.select_everything()
    selection.set_checked(1, False)
    assert not selection.includes_everything
    assert "liver" not in selection.to_prompt().split(", ")
    assert LabelSelection.from_prompt(selection.to_prompt()).ids == selection.ids


@pytest.mark.parametrize(
    ("prompt", "ids"), [("kidney", [5, 14]), ("Lung", [28, 29, 30, 31, 32]), ("liver, 2", [1, 5, 14])]
)
def test_prompt_groups_expand_to_members(prompt, ids):
    assert LabelSelection.from_prompt(prompt).ids == ids


@pytest.mark.parametrize(
    ("prompt", "suggestion"), [("livr", "liver"), ("left kidny", "left kidney"), ("rib", "left rib 1")]
)
def test_unknown_names_suggest_the_closest(prompt, suggestion):
    with pytest.raises(UnknownLabelError, match=f"Did you mean: {suggestion}"):
        LabelSelection.from_prompt(f"spleen, {prompt}")


def test_zero_shot_ids_and_empty_prompts_are_refused():
    with pytest.raises(VISTA3DError, match="zero-shot"):
        LabelSelection.from_prompt("200")
    with pytest.raises(VISTA3DError, match="empty"):
        LabelSelection.from_prompt(" , ")


def test_clear_and_empty_prompt():
    selection = LabelSelection([1, 3])
    selection.clear()
    assert selection.ids == [] and selection.to_prompt() == ""


# --- summary -------------------------------------------------------------------------------


def test_summary_lists_a_few_names():
    assert LabelSelection([1]).summary() == "1 structure: liver"
    assert LabelSelection([1, 3, 14]).summary() == "3 structures: liver, spleen, left kidney"
    six = LabelSelection([1, 3, 4, 6, 7, 10])
    assert six.summary() == "6 structures: liver, spleen, pancreas, aorta, inferior vena cava and 1 more"


def test_summary_of_nothing():
    assert LabelSelection().summary() == "Nothing selected: tick structures or Everything"


def test_summary_of_everything_says_what_it_leaves_out():
    selection = LabelSelection()
    selection.select_everything()
    summary = selection.summary()
    assert summary.startswith("Everything: 117 structures")
    assert all(words in summary for words in ("tumours", "bone lesion", "hepatic vessel", "airway", "tick"))
    extras = LabelSelection.from_prompt("everything, hepatic tumor").summary()
    assert extras.startswith("Everything + hepatic tumor: 118 structures") and "airway" in extras


def test_summary_drops_the_note_when_nothing_is_left_out():
    selection = LabelSelection()
    selection.select_everything()
    selection.set_checked(find_node("section:lesions"), True)
    selection.set_checked(25, True)
    selection.set_checked(132, True)
    assert selection.ids == sorted(node.label_id for node in leaves())
    assert selection.summary() == (
        "Everything + lung tumor, pancreatic tumor, hepatic vessel, hepatic tumor, colon cancer primaries "
        "and 2 more: 124 structures"
    )
