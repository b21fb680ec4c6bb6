"""Whatever a user types as a prompt, a ROI or a point, the answer is a valid value or a
``VISTA3DError`` with a message: never another exception (a traceback in the panel or the CLI)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from VISTA3DSlicerLib import label_picker, labels
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.supervoxels import parse_roi

#: Text a user might type: names, digits, signs, separators, and any other character.
NAMES = [info.name for info in labels.label_table().values()]
TYPED = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(NAMES + ["everything", "kidney", "lung", "bone"]),
                       st.integers(-300, 300).map(str), st.text(max_size=8)), max_size=6).map(", ".join),
)
VALID_IDS = set(labels.label_table()) | set(labels.ZERO_SHOT_IDS)


@settings(max_examples=300, deadline=None)
@given(TYPED)
def test_find_label_gives_an_id_or_a_message(text):
    try:
        value = labels.find_label(text)
    except VISTA3DError as error:
        assert str(error)
    else:
        assert value in VALID_IDS


@settings(max_examples=300, deadline=None)
@given(TYPED)
def test_prompts_give_supported_ids_or_a_message(text):
    try:
        ids = labels.parse_label_prompt(text)
        labels.validate_automatic_prompt(ids)
    except VISTA3DError as error:
        assert str(error)
        return
    assert ids and set(ids) <= labels.SUPPORTED


@settings(max_examples=200, deadline=None)
@given(TYPED)
def test_the_label_tree_takes_any_prompt_and_any_search(text):
    leaves = {leaf for node in label_picker.label_tree() for leaf in node.leaf_ids()}
    keys = {n.key for node in label_picker.label_tree() for n in node.walk()}
    assert label_picker.matching_keys(text) <= keys
    try:
        selection = label_picker.LabelSelection.from_prompt(text)
    except VISTA3DError as error:
        assert str(error)
        return
    assert set(selection.ids) <= leaves
    if selection.ids:  # what the tree writes back into the prompt line selects the same structures
        assert label_picker.LabelSelection.from_prompt(selection.to_prompt()).ids == selection.ids


@pytest.mark.parametrize("text", ["-1", "+0", "0", "255", "²", "٣", " 7 "])
def test_numbers_are_read_as_ids_and_other_digits_as_names(text):
    if text.strip() == "7":
        assert labels.find_label(text) == 7
        return
    with pytest.raises(VISTA3DError) as error:
        labels.find_label(text)
    expected = "is not a VISTA3D label ID" if text[0] in "+-0123456789" else "Unknown label"
    assert expected in str(error.value)


SHAPE = (40, 30, 20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30),
                 st.lists(st.integers(-50, 80), min_size=0, max_size=8).map(lambda v: ",".join(map(str, v)))))
def test_roi_text_gives_a_box_inside_the_volume_or_a_message(text):
    try:
        box = parse_roi(text, SHAPE)
    except VISTA3DError as error:
        assert str(error)
        return
    assert all(0 <= s.start < s.stop <= n for s, n in zip(box, SHAPE))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_a_malformed_point_is_a_usage_error_not_a_traceback(text):
    from VISTA3DSlicerLib.cli import _parser

    try:
        args = _parser().parse_args(["segment", "ct.nii.gz", "-o", "out.nii.gz", "--point", text])
    except SystemExit as exit_:
        assert exit_.code == 2  # argparse printed a usage line naming --point
        return
    assert len(args.clicks) == 1 and len(args.clicks[0][0]) == 3
