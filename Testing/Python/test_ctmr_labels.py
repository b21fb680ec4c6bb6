"""NV-Segment-CTMR's label space: its 345-class table and the bundle's rules, written out here
from its configs (NVIDIA-Medtech/NV-Segment-CTMR: metadata.json, inference.json,
label_mappings.json, scripts/evaluator.py) independently of ``labels.CTMR_LABELS``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from VISTA3DSlicerLib import labels
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.label_picker import LabelSelection, label_tree, matching_keys
from VISTA3DSlicerLib.labels import CTMR_LABELS, VISTA3D_LABELS, UnknownLabelError
from VISTA3DSlicerLib.models import MODELS

# evaluator.py: supported_list = {1..345} - these.
EVALUATOR_UNSUPPORTED = {16, 129, 130, 131, 133, 137, 138, 139, 140, 141, 142, 143, 144, 145, 162}
# inference.json: ct_body = {1..132} - {2,16,18,20,21,23,24,25,26,27,128,129,130,131,132}; mri_brain = LUMIR's 214..345.
CT_BODY = sorted(set(range(1, 133)) - {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132})
MRI_BODY_SIZE = 50  # TotalSegmentatorMR's 50 classes
# Some bundle names from metadata.json's channel_def, character for character.
BUNDLE_NAMES = {
    1: "liver", 18: "rectum", 133: "fibula (deprecated)", 146: "vertebrae", 176: "brain tumor",
    213: "pharynxConst", 214: "3rd-Ventricle", 230: "Left-Hippocampus",
    248: "Right-ACgG--anterior-cingulate-gyrus", 345: "Left-TTG---transverse-temporal-gyrus",
}


def test_the_table_lists_ids_1_to_345_with_the_bundle_s_names():
    table = CTMR_LABELS.table()
    assert sorted(table) == list(range(1, 346))
    for label_id, name in BUNDLE_NAMES.items():
        assert table[label_id].name == name
    # IDs 1..132 are VISTA3D's structures; the bundle marks some of them deprecated.
    for label_id in range(1, 133):
        assert table[label_id].name.removesuffix(" (deprecated)") == VISTA3D_LABELS.label_info(label_id).name


def test_display_names_are_unique_readable_and_every_name_finds_its_id():
    table = CTMR_LABELS.table()
    display = [info.display_name for info in table.values()]
    assert len(set(display)) == len(display)
    assert table[230].display_name == "Left hippocampus"
    assert "--" not in " ".join(display)  # the Neuromorphometrics abbreviations are spelled out
    for info in table.values():
        assert CTMR_LABELS.find_label(info.name) == info.id
        assert CTMR_LABELS.find_label(info.display_name) == info.id
    assert CTMR_LABELS.find_label("left hippocampus") == CTMR_LABELS.find_label("LEFT_HIPPOCAMPUS") == 230


def test_every_row_has_a_category_type_colour_and_the_shipped_contexts():
    for info in CTMR_LABELS.table().values():
        assert info.category and info.type
        assert info.color != (0, 0, 0)
        entry = info.terminology_entry().split("~")
        assert (entry[0], entry[4]) == CTMR_LABELS.terminology_contexts
    hippocampus = CTMR_LABELS.label_info(230)
    assert (hippocampus.type.meaning, hippocampus.type_modifier.meaning) == ("Hippocampus", "Left")


def test_the_csv_is_vista3d_s_format_plus_the_bundle_name_column():
    with CTMR_LABELS.colour_table_path().open(newline="", encoding="utf-8") as file:
        header = next(csv.reader(file))
    with VISTA3D_LABELS.colour_table_path().open(newline="", encoding="utf-8") as file:
        assert header == next(csv.reader(file)) + [labels.BUNDLE_NAME_COLUMN]


def test_supported_ids_are_the_evaluator_s_and_legacy_ids_say_what_to_use():
    assert CTMR_LABELS.supported == frozenset(range(1, 346)) - EVALUATOR_UNSUPPORTED
    assert 18 in CTMR_LABELS.supported and 18 not in VISTA3D_LABELS.supported  # rectum came back
    with pytest.raises(VISTA3DError, match=r"162 \(uterus \(deprecated\)\).*161 \(uterocervix\)") as error:
        CTMR_LABELS.validate_automatic_prompt([162])
    assert "clicks" not in str(error.value)  # this model takes none


def test_everything_depends_on_the_modality():
    assert CTMR_LABELS.modalities == ("ct", "mri-body", "mri-brain")
    assert list(CTMR_LABELS.everything_for("ct")) == CT_BODY == sorted(VISTA3D_LABELS.everything)
    assert len(CTMR_LABELS.everything_for("mri-body")) == MRI_BODY_SIZE
    assert CTMR_LABELS.everything_for("mri-brain") == tuple(range(214, 346))
    assert CTMR_LABELS.automatic_prompt("everything", "mri-brain") == list(range(214, 346))
    assert CTMR_LABELS.automatic_prompt(None, "mri-body")[:3] == [9, 8, 6]  # label_mappings' order
    assert CTMR_LABELS.automatic_prompt("everything, brain tumor", "mri-brain")[-1] == 176
    with pytest.raises(VISTA3DError, match="VISTA3D has no 'mri-body' list"):
        VISTA3D_LABELS.everything_for("mri-body")


def test_labels_past_255_need_a_wider_labelmap_and_no_zero_shot_ids_exist():
    assert (CTMR_LABELS.labelmap_dtype, VISTA3D_LABELS.labelmap_dtype) == ("uint16", "uint8")
    assert np.iinfo(CTMR_LABELS.labelmap_dtype).max >= 345
    with pytest.raises(UnknownLabelError, match=r"use 1\.\.345\.$"):
        CTMR_LABELS.find_label(400)
    with pytest.raises(VISTA3DError, match="takes no clicks"):
        CTMR_LABELS.next_zero_shot_id([])
    assert VISTA3D_LABELS.find_label(200) == 200  # a zero-shot ID there, not a class


def test_the_model_uses_this_space_and_takes_no_clicks():
    ctmr = MODELS["nv-segment-ctmr"]
    assert ctmr.labels is CTMR_LABELS and ctmr.classes == 345 and not ctmr.takes_clicks
    with pytest.raises(VISTA3DError, match="NV-Segment-CTMR segments automatically only.*vista3d, nv-segment-ct"):
        ctmr.check_clicks()
    MODELS["vista3d"].check_clicks()  # no error


def test_the_picker_tree_holds_every_promptable_class_once():
    leaves = [node.label_id for top in label_tree(CTMR_LABELS) for node in top.walk() if node.is_leaf]
    assert len(leaves) == len(set(leaves))
    assert set(leaves) == CTMR_LABELS.supported - set(CTMR_LABELS.subclasses)
    assert "label:230" in matching_keys("hippocampus", CTMR_LABELS)
    assert "label:230" not in matching_keys("", VISTA3D_LABELS)  # VISTA3D's tree is its own


def test_the_selection_s_everything_follows_the_modality():
    brain = LabelSelection.from_prompt("everything", space=CTMR_LABELS, modality="mri-brain")
    assert brain.ids == list(range(214, 346)) and brain.to_prompt() == "everything"
    assert brain.summary().startswith("Everything: 132 structures (mri-brain;")
    body = LabelSelection(space=CTMR_LABELS, modality="mri-body")
    body.select_everything()
    assert len(body.ids) == MRI_BODY_SIZE
    body.set_checked(176, True)
    assert body.to_prompt() == "everything, brain tumor"


def _volume(kind: str):
    from VISTA3DSlicerLib.geometry import Image

    values = np.full((20, 20, 10), -1000 if kind == "ct" else 0, np.int16)
    values[4:16, 4:16] = 40 if kind == "ct" else 600
    return Image(values, np.eye(4))


@pytest.mark.parametrize("model, kind, requested, modality, says, warning", [
    ("vista3d", "ct", None, "ct", None, False),
    ("vista3d", "mr", None, "ct", "there is no air", True),  # a CT model warns and goes on
    ("nv-segment-ctmr", "ct", None, "ct", "looks like a CT", False),
    ("nv-segment-ctmr", "mr", None, "mri-body", "segmenting it as MR of the body", False),
    ("nv-segment-ctmr", "mr", "mri-brain", "mri-brain", "skull-stripped", False),
    ("nv-segment-ctmr", "mr", "mri-body", "mri-body", None, False),
    ("nv-segment-ctmr", "mr", "ct", "ct", "there is no air", True),
])
def test_the_modality_is_chosen_or_inferred_and_said(model, kind, requested, modality, says, warning):
    from VISTA3DSlicerLib.ct_check import choose_modality

    choice = choose_modality(MODELS[model], _volume(kind), requested)
    assert (choice.modality, choice.warning) == (modality, warning)
    assert choice.message is None if says is None else says in choice.message


def test_a_ct_model_refuses_an_mr_modality():
    from VISTA3DSlicerLib.ct_check import choose_modality

    with pytest.raises(VISTA3DError, match="NV-Segment-CT segments CT only.*use --model nv-segment-ctmr"):
        choose_modality(MODELS["nv-segment-ct"], _volume("mr"), "mri-brain")
    with pytest.raises(VISTA3DError, match="Unknown modality 'pet'"):
        choose_modality(MODELS["nv-segment-ctmr"], _volume("mr"), "pet")
