#!/usr/bin/env python3
"""Write the label table of NVIDIA's NV-Segment-CTMR model: names, colours and SNOMED CT terminology.

The output, ``VISTA3DSlicer/VISTA3DSlicerLib/data/NV-Segment-CTMRColorTable.csv``, is a 3D Slicer
colour-table CSV with the same 21 columns as ``VISTA3DColorTable.csv`` plus a last ``BundleName``
column holding the model's own class name (``channel_def``) character for character.

Inputs:

- the NV-Segment-CTMR bundle's ``NV-Segment-CTMR/configs/metadata.json``
  (``network_data_format.outputs.pred.channel_def``), read with ``git show HEAD:...`` from a clone of
  https://github.com/NVIDIA-Medtech/NV-Segment-CTMR (``--mirror PATH``);
- ``VISTA3DSlicer/VISTA3DSlicerLib/data/VISTA3DColorTable.csv``: IDs 1..132 are VISTA3D's classes and
  are copied from it (a class the CTMR bundle marks "(deprecated)" gets that suffix on its name);
- the terminology files in ``../shared/reference/terminology`` (``totalsegmentator_snomed_mapping.csv``
  and the contexts 3D Slicer ships): every code written must appear there (or in the VISTA3D table),
  and their recommended colours are used where a class takes its code from them.

IDs 133..345 are mapped by hand below (``_CTMR_CLASSES``): bundle name -> display name, category,
type (+ laterality, region), colour source. Where the sources have no code for a structure (most
cortical gyri, vermal lobules, ventral DC, ...) the closest general anatomic code is used and the
entry is flagged ``general=True``; ``--list-general`` prints those.

Run from the repository root (standard library only)::

    python tools/make_ctmr_label_table.py --mirror /path/to/NV-Segment-CTMR
    python tools/make_ctmr_label_table.py --mirror /path/to/NV-Segment-CTMR --list-general
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "VISTA3DSlicer" / "VISTA3DSlicerLib" / "data"
DEFAULT_TERMINOLOGY_DIR = REPO.parent / "shared" / "reference" / "terminology"
DEFAULT_VISTA3D_TABLE = DATA_DIR / "VISTA3DColorTable.csv"
DEFAULT_OUTPUT = DATA_DIR / "NV-Segment-CTMRColorTable.csv"
METADATA_IN_BUNDLE = "NV-Segment-CTMR/configs/metadata.json"

TS_MAPPING = "totalsegmentator_snomed_mapping.csv"
# Slicer's own general-anatomy context first: its colours are the ones Slicer users see.
SLICER_CONTEXTS = (
    "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json",
    "SegmentationCategoryTypeModifier-DICOM-Master.json",
    "AnatomicRegionAndModifier-DICOM-Master.json",
)

CLASSES = 345
VISTA3D_CLASSES = 132
DEPRECATED = "(deprecated)"
BUNDLE_NAME_COLUMN = "BundleName"
# VISTA3D's display names restore English where the bundle keeps its dataset's Latin.
_DISPLAY_TO_BUNDLE = (("iliac vein", "iliac vena"), ("clavicle", "clavicula"))

Code = tuple[str, str, str]  # (coding scheme, code value, code meaning)
RGB = tuple[int, int, int]

# ---------------------------------------------------------------------------------------- codes
# Every (value, meaning) pair below is checked against the source files at run time; the meaning
# is the TotalSegmentator mapping's where it has the code (as in VISTA3DColorTable.csv), otherwise
# Slicer's DICOM master list's.

ANATOMY: Code = ("SCT", "123037004", "Anatomical Structure")
TISSUE_CATEGORY: Code = ("SCT", "85756007", "Tissue")
ALTERED: Code = ("SCT", "49755003", "Morphologically Altered Structure")
RIGHT: Code = ("SCT", "24028007", "Right")
LEFT: Code = ("SCT", "7771000", "Left")
SIDES = {"Left": LEFT, "Right": RIGHT}

# Body (CT and MR)
FIBULA: Code = ("SCT", "87342007", "Fibula")
INTERVERTEBRAL_DISC: Code = ("SCT", "360499006", "Intervertebral disc")
LUNG: Code = ("SCT", "39607008", "Lung")
QUADRICEPS: Code = ("SCT", "21989003", "Quadriceps femoris muscle")
SARTORIUS: Code = ("SCT", "12595009", "Sartorius muscle")
THIGH_MEDIAL_MUSCLE: Code = ("SCT", "1179657002", "Structure of medial muscle of thigh")
THIGH_POSTERIOR_MUSCLE: Code = ("SCT", "128511007", "Posterior muscle of thigh structure")
TIBIA: Code = ("SCT", "12611008", "Tibia")
VERTEBRA: Code = ("SCT", "51282000", "Vertebra")
PROSTATE: Code = ("SCT", "41216001", "Prostate")
LEFT_ATRIUM: Code = ("SCT", "82471001", "Left atrium")
RIGHT_ATRIUM: Code = ("SCT", "73829009", "Right atrium")
LEFT_VENTRICLE: Code = ("SCT", "87878005", "Left ventricle of heart")
RIGHT_VENTRICLE: Code = ("SCT", "53085002", "Right ventricle of heart")
MYOCARDIUM: Code = ("SCT", "74281007", "Myocardium")
HEART: Code = ("SCT", "80891009", "Heart")
ASCENDING_AORTA: Code = ("SCT", "54247002", "Ascending aorta")
PULMONARY_ARTERY: Code = ("SCT", "81040000", "Pulmonary artery")
CELIAC_TRUNK: Code = ("SCT", "57850000", "Truncus coeliacus")
SKELETAL_MUSCLE: Code = ("SCT", "127954009", "Skeletal muscle")
BODY_FAT: Code = ("SCT", "248300009", "Body fat")
TISSUE: Code = ("SCT", "85756007", "Tissue")
ORGAN: Code = ("SCT", "113343008", "Organ")
SKIN: Code = ("SCT", "39937001", "Skin")
UTERUS: Code = ("SCT", "35039007", "Uterus")
BREAST: Code = ("SCT", "76752008", "Breast")
THYROID: Code = ("SCT", "69748006", "Thyroid gland")
THYMUS: Code = ("SCT", "9875009", "Thymus")
LESION: Code = ("SCT", "52988006", "Lesion")
NEOPLASM: Code = ("SCT", "108369006", "Neoplasm")
# Regions
ABDOMINAL_CAVITY: Code = ("SCT", "52731004", "Abdominal cavity")
MEDIASTINUM: Code = ("SCT", "72410000", "Mediastinum")
BRAIN: Code = ("SCT", "12738006", "Brain")

# Head and neck (SegRap, AutoPET atlas)
BUCCAL_REGION: Code = ("SCT", "60819002", "Buccal region of face")
EYEBALL: Code = ("SCT", "79652003", "Eyeball")
EYE: Code = ("SCT", "81745001", "Eye")
LENS_OF_LEFT_EYE: Code = ("SCT", "88258005", "Lens of left eye")
LENS_OF_RIGHT_EYE: Code = ("SCT", "72345007", "Lens of right eye")
OPTIC_CHIASM: Code = ("SCT", "244453006", "Optic chiasm")
OPTIC_NERVE: Code = ("SCT", "18234004", "Optic nerve")
MIDDLE_EAR: Code = ("SCT", "25342003", "Middle ear")
INNER_EAR: Code = ("SCT", "22945000", "Inner ear")
INTERNAL_AUDITORY_CANAL: Code = ("SCT", "361078006", "Internal Auditory Canal")
ETHMOID_BONE: Code = ("SCT", "52374004", "Ethmoid bone")
PITUITARY: Code = ("SCT", "56329008", "Pituitary")
MOUTH: Code = ("SCT", "123851003", "Mouth")
MANDIBLE: Code = ("SCT", "91609006", "Mandible")
SUBMANDIBULAR_GLAND: Code = ("SCT", "54019009", "Submandibular gland")
PAROTID_GLAND: Code = ("SCT", "45289007", "Parotid gland")
MASTOID_BONE: Code = ("SCT", "59066005", "Mastoid bone")
TEMPOROMANDIBULAR_JOINT: Code = ("SCT", "53620006", "Temporomandibular joint")
LARYNX: Code = ("SCT", "4596009", "Larynx")
MUSCLE_OF_NECK: Code = ("SCT", "81727001", "Muscle of neck")

# Brain (LUMIR: FreeSurfer-style subcortical labels and Neuromorphometrics cortical parcels)
THIRD_VENTRICLE: Code = ("SCT", "49841001", "Third ventricle")
FOURTH_VENTRICLE: Code = ("SCT", "35918002", "Fourth ventricle")
LATERAL_VENTRICLE: Code = ("SCT", "66720007", "Lateral ventricle")
INFERIOR_HORN: Code = ("SCT", "53118009", "Inferior horn of lateral ventricle")
NUCLEUS_ACCUMBENS: Code = ("SCT", "427667007", "Nucleus accumbens")
AMYGDALA: Code = ("SCT", "4958002", "Amygdala")
HIPPOCAMPUS: Code = ("SCT", "5366008", "Hippocampus")
CAUDATE: Code = ("SCT", "11000004", "Caudate nucleus")
PUTAMEN: Code = ("SCT", "89278009", "Putamen")
GLOBUS_PALLIDUS: Code = ("SCT", "14738005", "Globus pallidus")
# 119406000, not the DICOM master's 42695009: TotalSegmentator, Slicer's general anatomy and the
# anatomic-region list all use it, so segments match whichever context the user picks.
THALAMUS: Code = ("SCT", "119406000", "Thalamus")
# Slicer's "Brain stem"; TotalSegmentator uses 15926001 "Brainstem" for the same structure.
BRAIN_STEM: Code = ("SCT", "119238007", "Brain stem")
CEREBELLUM: Code = ("SCT", "113305005", "Cerebellum")
CEREBELLAR_WHITE_MATTER: Code = ("SCT", "33060004", "Cerebellar white matter")
CEREBRAL_WHITE_MATTER: Code = ("SCT", "68523003", "Cerebral White Matter")
DIENCEPHALON: Code = ("SCT", "87563008", "Diencephalon")
TELENCEPHALON: Code = ("SCT", "11628009", "Telencephalon")
FRONTAL_LOBE: Code = ("SCT", "83251001", "Frontal lobe")
PARIETAL_LOBE: Code = ("SCT", "16630005", "Parietal lobe")
OCCIPITAL_LOBE: Code = ("SCT", "31065004", "Occipital lobe")
TEMPORAL_LOBE: Code = ("SCT", "78277001", "Temporal lobe")
LIMBIC_LOBE: Code = ("SCT", "279215006", "Limbic lobe")
INSULA: Code = ("SCT", "36169008", "Insula")
ENTORHINAL_CORTEX: Code = ("SCT", "3937002", "Entorhinal Cortex")


# ------------------------------------------------------------------------------------- colours


@dataclass(frozen=True)
class FromTS:
    """The colour of a row of the TotalSegmentator mapping, by its class name."""

    name: str


@dataclass(frozen=True)
class FromSlicer:
    """The recommended colour of the entry's type (and laterality) in Slicer's contexts."""


SLICER = FromSlicer()
ColourSource = Union[RGB, FromTS, FromSlicer]


@dataclass(frozen=True)
class Entry:
    """One CTMR class beyond VISTA3D's: how it is named, coded and coloured."""

    label: int
    bundle_name: str
    name: str
    type: Code
    colour: ColourSource
    category: Code = ANATOMY
    side: Optional[Code] = None
    region: Optional[Code] = None
    # True where no code for the structure itself exists in the sources and a containing
    # structure's code stands in (e.g. a gyrus coded as its lobe).
    general: bool = False


def one(label: int, bundle_name: str, name: str, type_: Code, colour: ColourSource, **options) -> list[Entry]:
    return [Entry(label, bundle_name, name, type_, colour, **options)]


def bilateral(first_label: int, first_bundle: str, second_bundle: str, name: str, type_: Code,
              colour: ColourSource, *, first: str, **options) -> list[Entry]:
    """A left/right pair on consecutive IDs; ``first`` is the side of ``first_label`` (the bundle
    puts left first for the body and head-and-neck classes, right first for the brain)."""
    second = "Right" if first == "Left" else "Left"
    return [
        Entry(first_label, first_bundle, f"{first} {name}", type_, colour, side=SIDES[first], **options),
        Entry(first_label + 1, second_bundle, f"{second} {name}", type_, colour, side=SIDES[second], **options),
    ]


def gyrus(right_label: int, right_bundle: str, left_bundle: str, name: str, type_: Code, colour: RGB,
          general: bool = True) -> list[Entry]:
    """A Neuromorphometrics cortical parcel (LUMIR): right on ``right_label``, left on the next ID."""
    return bilateral(right_label, right_bundle, left_bundle, name, type_, colour, first="Right", general=general)


# --------------------------------------------------------------------------------- the mapping
# IDs 133..345 in bundle order. Deprecated classes keep a code and a name (the bundle still has the
# channel) with " (deprecated)" in the name, as the bundle's names do.

_CTMR_CLASSES: list[Entry] = [
    # TotalSegmentator MR (and the legacy TotalSegmentator v1 classes the bundle retired)
    *one(133, "fibula (deprecated)", "Fibula (deprecated)", FIBULA, (178, 36, 102)),
    *one(134, "intervertebral discs", "Intervertebral discs", INTERVERTEBRAL_DISC, (190, 166, 255)),
    *bilateral(135, "left lung", "right lung", "lung", LUNG, SLICER, first="Left"),
    *bilateral(137, "left quadriceps femoris (deprecated)", "right quadriceps femoris (deprecated)",
               "quadriceps femoris (deprecated)", QUADRICEPS, (91, 94, 140), first="Left"),
    *bilateral(139, "left sartorius (deprecated)", "right sartorius (deprecated)",
               "sartorius (deprecated)", SARTORIUS, (43, 194, 217), first="Left"),
    *bilateral(141, "left thigh medial compartment (deprecated)", "right thigh medial compartment (deprecated)",
               "thigh medial compartment (deprecated)", THIGH_MEDIAL_MUSCLE, (178, 36, 169), first="Left"),
    *bilateral(143, "left thigh posterior compartment (deprecated)", "right thigh posterior compartment (deprecated)",
               "thigh posterior compartment (deprecated)", THIGH_POSTERIOR_MUSCLE, (36, 178, 93), first="Left"),
    *one(145, "tibia (deprecated)", "Tibia (deprecated)", TIBIA, (255, 105, 51)),
    *one(146, "vertebrae", "Vertebrae", VERTEBRA, (161, 89, 178)),
    # Prostate158 / MSD Task05: SNOMED has no code for the zones in the sources.
    *one(147, "prostate transitional zone", "Prostate transition zone", PROSTATE, (91, 121, 140), general=True),
    *one(148, "prostate peripheral zone", "Prostate peripheral zone", PROSTATE, (51, 146, 255), general=True),
    # Heart chambers (MSD Task02, CMRxMotion, AutoPET atlas)
    *one(149, "left atrium", "Left atrium", LEFT_ATRIUM, FromTS("heart_atrium_left")),
    # WMH challenge: a finding, coded like VISTA3D's "Bone lesion" (Lesion in a region).
    *one(150, "white matter hyperintensity", "White matter hyperintensity", LESION, (62, 101, 178),
         category=ALTERED, region=CEREBRAL_WHITE_MATTER),
    *one(151, "left ventricle", "Left ventricle", LEFT_VENTRICLE, FromTS("heart_ventricle_left")),
    *one(152, "right ventricle", "Right ventricle", RIGHT_VENTRICLE, FromTS("heart_ventricle_right")),
    *one(153, "right atrium", "Right atrium", RIGHT_ATRIUM, FromTS("heart_atrium_right")),
    # TotalSegmentator's "heart_myocardium" is this same left-ventricular myocardium.
    *one(154, "left ventricle myocardium", "Left ventricular myocardium", MYOCARDIUM, FromTS("heart_myocardium")),
    *one(155, "ascending aorta (deprecated)", "Ascending aorta (deprecated)", ASCENDING_AORTA, (51, 92, 255)),
    # AutoPET atlas: whole-body tissue classes
    *one(156, "muscles", "Muscles", SKELETAL_MUSCLE, (255, 128, 179)),
    *one(157, "fat", "Fat", BODY_FAT, SLICER, category=TISSUE_CATEGORY),
    # The soft tissue left in the abdomen / mediastinum once the organs are labelled: tissue in a
    # region, as VISTA3D codes "Prostate or uterus" (Organ in the pelvis).
    *one(158, "abdominal tissue", "Abdominal tissue", TISSUE, (159, 178, 36), category=TISSUE_CATEGORY,
         region=ABDOMINAL_CAVITY, general=True),
    *one(159, "mediastinal tissue", "Mediastinal tissue", TISSUE, (28, 140, 28), category=TISSUE_CATEGORY,
         region=MEDIASTINUM, general=True),
    # Testes or ovaries: the sources have no sex-neutral gonad code.
    *one(160, "gonads", "Gonads", ORGAN, (173, 51, 255), category=TISSUE_CATEGORY, general=True),
    *one(161, "uterocervix", "Uterus and cervix", UTERUS, SLICER),
    *one(162, "uterus (deprecated)", "Uterus (deprecated)", UTERUS, SLICER),
    *bilateral(163, "breast left", "breast right", "breast", BREAST, (178, 62, 86), first="Left"),
    # A thyroid lobe has no code of its own in the sources: the gland with its side.
    *bilateral(165, "thyroid left", "thyroid right", "thyroid lobe", THYROID, (255, 166, 213), first="Left", general=True),
    *one(167, "thymus", "Thymus", THYMUS, SLICER),
    *one(168, "skin", "Skin", SKIN, SLICER, category=TISSUE_CATEGORY),
    # The heart's walls and septa outside the chambers and the left-ventricular myocardium.
    *one(169, "heart tissue", "Heart tissue", HEART, (255, 144, 89), general=True),
    *one(170, "celiac trunk", "Celiac trunk", CELIAC_TRUNK, (133, 140, 28)),
    *one(171, "pulmonary artery", "Pulmonary artery", PULMONARY_ARTERY, FromTS("pulmonary_artery")),
    *bilateral(172, "cheek left", "cheek right", "cheek", BUCCAL_REGION, (140, 80, 28), first="Left"),
    *bilateral(174, "eyeball left", "eyeball right", "eyeball", EYEBALL, SLICER, first="Left"),
    # BraTS 2023: a finding, coded like VISTA3D's "Lung tumor" (Neoplasm in a region).
    *one(176, "brain tumor", "Brain tumor", NEOPLASM, (178, 89, 137), category=ALTERED, region=BRAIN),
    # SegRap 2023 organs at risk
    *one(177, "chiasm", "Optic chiasm", OPTIC_CHIASM, SLICER),
    *bilateral(178, "left temporal lobe", "right temporal lobe", "temporal lobe", TEMPORAL_LOBE, SLICER, first="Left"),
    *bilateral(180, "left eye", "right eye", "eye", EYE, (166, 217, 141), first="Left"),
    # Only the sided concepts exist in the sources; they carry the side, so no modifier is added
    # (as VISTA3D's "Middle lobe of right lung").
    *one(182, "left lens", "Left lens", LENS_OF_LEFT_EYE, (255, 89, 167)),
    *one(183, "right lens", "Right lens", LENS_OF_RIGHT_EYE, (166, 195, 255)),
    *bilateral(184, "left optic nerve", "right optic nerve", "optic nerve", OPTIC_NERVE, (255, 51, 92), first="Left"),
    *bilateral(186, "left middle ear", "right middle ear", "middle ear", MIDDLE_EAR, SLICER, first="Left"),
    *bilateral(188, "left internal auditory canal", "right internal auditory canal", "internal auditory canal",
               INTERNAL_AUDITORY_CANAL, (255, 89, 233), first="Left"),
    *bilateral(190, "left tympanic cavity", "right tympanic cavity", "tympanic cavity", MIDDLE_EAR, (140, 124, 91),
               first="Left", general=True),
    *bilateral(192, "left vestibular semicircular canals", "right vestibular semicircular canals",
               "vestibule and semicircular canals", INNER_EAR, (116, 178, 178), first="Left", general=True),
    *bilateral(194, "left cochlea", "right cochlea", "cochlea", INNER_EAR, (62, 155, 178), first="Left", general=True),
    *bilateral(196, "left ethmoid bone", "right ethmoid bone", "ethmoid bone", ETHMOID_BONE, SLICER, first="Left"),
    *one(198, "pituitary", "Pituitary gland", PITUITARY, SLICER),
    *one(199, "oral cavity", "Oral cavity", MOUTH, (43, 217, 55)),
    *bilateral(200, "left mandible", "right mandible", "mandible", MANDIBLE, FromTS("mandible"), first="Left"),
    *bilateral(202, "left submandibular", "right submandibular", "submandibular gland", SUBMANDIBULAR_GLAND,
               (178, 124, 62), first="Left"),
    *bilateral(204, "left parotid", "right parotid", "parotid gland", PAROTID_GLAND, (178, 36, 131), first="Left"),
    *bilateral(206, "left mastoid", "right mastoid", "mastoid", MASTOID_BONE, (148, 62, 178), first="Left"),
    *bilateral(208, "left temporomandibular joint", "right temporomandibular joint", "temporomandibular joint",
               TEMPOROMANDIBULAR_JOINT, (255, 166, 178), first="Left"),
    *one(210, "larynx", "Larynx", LARYNX, SLICER),
    *one(211, "larynx glottic", "Glottic larynx", LARYNX, (155, 178, 89), general=True),
    *one(212, "larynx supraglot", "Supraglottic larynx", LARYNX, (113, 89, 178), general=True),
    # Superior, middle and inferior constrictors together; the sources code only each one.
    *one(213, "pharynxConst", "Pharyngeal constrictor muscles", MUSCLE_OF_NECK, (140, 91, 104), general=True),
    # LUMIR: subcortical structures (FreeSurfer names)
    *one(214, "3rd-Ventricle", "Third ventricle", THIRD_VENTRICLE, (28, 140, 65)),
    *one(215, "4th-Ventricle", "Fourth ventricle", FOURTH_VENTRICLE, SLICER),
    *bilateral(216, "Right-Accumbens-Area", "Left-Accumbens-Area", "nucleus accumbens", NUCLEUS_ACCUMBENS,
               (104, 76, 217), first="Right"),
    *bilateral(218, "Right-Amygdala", "Left-Amygdala", "amygdala", AMYGDALA, SLICER, first="Right"),
    *one(220, "Brain-Stem", "Brain stem", BRAIN_STEM, (116, 137, 178)),
    *bilateral(221, "Right-Caudate", "Left-Caudate", "caudate nucleus", CAUDATE, SLICER, first="Right"),
    # "Cerebellum-Exterior" is the cerebellar cortex; the sources code only the cerebellum.
    *bilateral(223, "Right-Cerebellum-Exterior", "Left-Cerebellum-Exterior", "cerebellar cortex", CEREBELLUM,
               (255, 89, 89), first="Right", general=True),
    *bilateral(225, "Right-Cerebellum-White-Matter", "Left-Cerebellum-White-Matter", "cerebellar white matter",
               CEREBELLAR_WHITE_MATTER, SLICER, first="Right"),
    *bilateral(227, "Right-Cerebral-White-Matter", "Left-Cerebral-White-Matter", "cerebral white matter",
               CEREBRAL_WHITE_MATTER, SLICER, first="Right"),
    *bilateral(229, "Right-Hippocampus", "Left-Hippocampus", "hippocampus", HIPPOCAMPUS, (140, 70, 131), first="Right"),
    *bilateral(231, "Right-Inf-Lat-Vent", "Left-Inf-Lat-Vent", "inferior horn of lateral ventricle", INFERIOR_HORN,
               (255, 128, 247), first="Right"),
    *bilateral(233, "Right-Lateral-Ventricle", "Left-Lateral-Ventricle", "lateral ventricle", LATERAL_VENTRICLE,
               SLICER, first="Right"),
    *bilateral(235, "Right-Pallidum", "Left-Pallidum", "globus pallidus", GLOBUS_PALLIDUS, SLICER, first="Right"),
    *bilateral(237, "Right-Putamen", "Left-Putamen", "putamen", PUTAMEN, SLICER, first="Right"),
    *bilateral(239, "Right-Thalamus-Proper", "Left-Thalamus-Proper", "thalamus", THALAMUS, SLICER, first="Right"),
    # Ventral DC (hypothalamus, subthalamus, ...) is part of the diencephalon.
    *bilateral(241, "Right-Ventral-DC", "Left-Ventral-DC", "ventral diencephalon", DIENCEPHALON, (141, 217, 166),
               first="Right", general=True),
    *one(243, "Cerebellar-Vermal-Lobules-I-V", "Cerebellar vermal lobules I-V", CEREBELLUM, (197, 141, 217), general=True),
    *one(244, "Cerebellar-Vermal-Lobules-VI-VII", "Cerebellar vermal lobules VI-VII", CEREBELLUM, (128, 144, 255),
         general=True),
    *one(245, "Cerebellar-Vermal-Lobules-VIII-X", "Cerebellar vermal lobules VIII-X", CEREBELLUM, (194, 217, 43),
         general=True),
    # The basal forebrain (substantia innominata, septal nuclei, ...) lies in the telencephalon;
    # here the bundle puts left first.
    *bilateral(246, "Left-Basal-Forebrain", "Right-Basal-Forebrain", "basal forebrain", TELENCEPHALON, (178, 155, 62),
               first="Left", general=True),
    # LUMIR: Neuromorphometrics cortical parcels, each coded as its lobe (the grouping of the
    # Neuromorphometrics/MICCAI 2012 atlas: cingulate, entorhinal and parahippocampal cortex are
    # limbic; the central operculum and the subcallosal area frontal).
    *gyrus(248, "Right-ACgG--anterior-cingulate-gyrus", "Left-ACgG--anterior-cingulate-gyrus",
           "anterior cingulate gyrus", LIMBIC_LOBE, (170, 76, 217)),
    *gyrus(250, "Right-AIns--anterior-insula", "Left-AIns--anterior-insula", "anterior insula", INSULA, (217, 108, 116)),
    *gyrus(252, "Right-AOrG--anterior-orbital-gyrus", "Left-AOrG--anterior-orbital-gyrus", "anterior orbital gyrus",
           FRONTAL_LOBE, (255, 173, 51)),
    *gyrus(254, "Right-AnG---angular-gyrus", "Left-AnG---angular-gyrus", "angular gyrus", PARIETAL_LOBE, (217, 76, 85)),
    *gyrus(256, "Right-Calc--calcarine-cortex", "Left-Calc--calcarine-cortex", "calcarine cortex", OCCIPITAL_LOBE,
           (146, 141, 217)),
    *gyrus(258, "Right-CO----central-operculum", "Left-CO----central-operculum", "central operculum", FRONTAL_LOBE,
           (255, 128, 153)),
    *gyrus(260, "Right-Cun---cuneus", "Left-Cun---cuneus", "cuneus", OCCIPITAL_LOBE, (128, 229, 255)),
    *gyrus(262, "Right-Ent---entorhinal-area", "Left-Ent---entorhinal-area", "entorhinal area", ENTORHINAL_CORTEX,
           (104, 140, 49), general=False),
    *gyrus(264, "Right-FO----frontal-operculum", "Left-FO----frontal-operculum", "frontal operculum", FRONTAL_LOBE,
           (255, 200, 89)),
    *gyrus(266, "Right-FRP---frontal-pole", "Left-FRP---frontal-pole", "frontal pole", FRONTAL_LOBE, (178, 89, 113)),
    *gyrus(268, "Right-FuG---fusiform-gyrus", "Left-FuG---fusiform-gyrus", "fusiform gyrus", TEMPORAL_LOBE, (217, 78, 43)),
    *gyrus(270, "Right-GRe---gyrus-rectus", "Left-GRe---gyrus-rectus", "gyrus rectus", FRONTAL_LOBE, (128, 162, 255)),
    *gyrus(272, "Right-IOG---inferior-occipital-gyrus", "Left-IOG---inferior-occipital-gyrus",
           "inferior occipital gyrus", OCCIPITAL_LOBE, (116, 178, 154)),
    *gyrus(274, "Right-ITG---inferior-temporal-gyrus", "Left-ITG---inferior-temporal-gyrus",
           "inferior temporal gyrus", TEMPORAL_LOBE, (101, 178, 89)),
    *gyrus(276, "Right-LiG---lingual-gyrus", "Left-LiG---lingual-gyrus", "lingual gyrus", OCCIPITAL_LOBE, (28, 118, 140)),
    *gyrus(278, "Right-LOrG--lateral-orbital-gyrus", "Left-LOrG--lateral-orbital-gyrus", "lateral orbital gyrus",
           FRONTAL_LOBE, (217, 76, 123)),
    *gyrus(280, "Right-MCgG--middle-cingulate-gyrus", "Left-MCgG--middle-cingulate-gyrus",
           "middle cingulate gyrus", LIMBIC_LOBE, (76, 217, 151)),
    *gyrus(282, "Right-MFC---medial-frontal-cortex", "Left-MFC---medial-frontal-cortex", "medial frontal cortex",
           FRONTAL_LOBE, (217, 43, 124)),
    *gyrus(284, "Right-MFG---middle-frontal-gyrus", "Left-MFG---middle-frontal-gyrus", "middle frontal gyrus",
           FRONTAL_LOBE, (255, 128, 213)),
    *gyrus(286, "Right-MOG---middle-occipital-gyrus", "Left-MOG---middle-occipital-gyrus", "middle occipital gyrus",
           OCCIPITAL_LOBE, (178, 162, 116)),
    *gyrus(288, "Right-MOrG--medial-orbital-gyrus", "Left-MOrG--medial-orbital-gyrus", "medial orbital gyrus",
           FRONTAL_LOBE, (217, 108, 210)),
    # MPoG, MPrG, MSFG are the medial segments of PoG, PrG, SFG (which are separate classes below),
    # although the bundle's names drop the word "medial".
    *gyrus(290, "Right-MPoG--postcentral-gyrus", "Left-MPoG--postcentral-gyrus", "postcentral gyrus medial segment",
           PARIETAL_LOBE, (36, 178, 36)),
    *gyrus(292, "Right-MPrG--precentral-gyrus", "Left-MPrG--precentral-gyrus", "precentral gyrus medial segment",
           FRONTAL_LOBE, (217, 159, 108)),
    *gyrus(294, "Right-MSFG--superior-frontal-gyrus", "Left-MSFG--superior-frontal-gyrus",
           "superior frontal gyrus medial segment", FRONTAL_LOBE, (217, 43, 205)),
    *gyrus(296, "Right-MTG---middle-temporal-gyrus", "Left-MTG---middle-temporal-gyrus", "middle temporal gyrus",
           TEMPORAL_LOBE, (36, 178, 178)),
    *gyrus(298, "Right-OCP---occipital-pole", "Left-OCP---occipital-pole", "occipital pole", OCCIPITAL_LOBE,
           (178, 128, 255)),
    *gyrus(300, "Right-OFuG--occipital-fusiform-gyrus", "Left-OFuG--occipital-fusiform-gyrus",
           "occipital fusiform gyrus", OCCIPITAL_LOBE, (108, 166, 217)),
    *gyrus(302, "Right-OpIFG-opercular-part-of-the-IFG", "Left-OpIFG-opercular-part-of-the-IFG",
           "opercular part of inferior frontal gyrus", FRONTAL_LOBE, (217, 76, 198)),
    *gyrus(304, "Right-OrIFG-orbital-part-of-the-IFG", "Left-OrIFG-orbital-part-of-the-IFG",
           "orbital part of inferior frontal gyrus", FRONTAL_LOBE, (217, 142, 76)),
    *gyrus(306, "Right-PCgG--posterior-cingulate-gyrus", "Left-PCgG--posterior-cingulate-gyrus",
           "posterior cingulate gyrus", LIMBIC_LOBE, (178, 62, 163)),
    *gyrus(308, "Right-PCu---precuneus", "Left-PCu---precuneus", "precuneus", PARIETAL_LOBE, (178, 89, 161)),
    *gyrus(310, "Right-PHG---parahippocampal-gyrus", "Left-PHG---parahippocampal-gyrus", "parahippocampal gyrus",
           LIMBIC_LOBE, (108, 217, 108)),
    *gyrus(312, "Right-PIns--posterior-insula", "Left-PIns--posterior-insula", "posterior insula", INSULA, (116, 116, 178)),
    *gyrus(314, "Right-PO----parietal-operculum", "Left-PO----parietal-operculum", "parietal operculum",
           PARIETAL_LOBE, (255, 170, 128)),
    *gyrus(316, "Right-PoG---postcentral-gyrus", "Left-PoG---postcentral-gyrus", "postcentral gyrus", PARIETAL_LOBE,
           (119, 51, 255)),
    *gyrus(318, "Right-POrG--posterior-orbital-gyrus", "Left-POrG--posterior-orbital-gyrus",
           "posterior orbital gyrus", FRONTAL_LOBE, (217, 43, 66)),
    *gyrus(320, "Right-PP----planum-polare", "Left-PP----planum-polare", "planum polare", TEMPORAL_LOBE, (141, 212, 217)),
    *gyrus(322, "Right-PrG---precentral-gyrus", "Left-PrG---precentral-gyrus", "precentral gyrus", FRONTAL_LOBE,
           (217, 141, 197)),
    *gyrus(324, "Right-PT----planum-temporale", "Left-PT----planum-temporale", "planum temporale", TEMPORAL_LOBE,
           (217, 108, 166)),
    *gyrus(326, "Right-SCA---subcallosal-area", "Left-SCA---subcallosal-area", "subcallosal area", FRONTAL_LOBE,
           (49, 98, 140)),
    *gyrus(328, "Right-SFG---superior-frontal-gyrus", "Left-SFG---superior-frontal-gyrus", "superior frontal gyrus",
           FRONTAL_LOBE, (91, 140, 121)),
    *gyrus(330, "Right-SMC---supplementary-motor-cortex", "Left-SMC---supplementary-motor-cortex",
           "supplementary motor cortex", FRONTAL_LOBE, (173, 108, 217)),
    *gyrus(332, "Right-SMG---supramarginal-gyrus", "Left-SMG---supramarginal-gyrus", "supramarginal gyrus",
           PARIETAL_LOBE, (179, 217, 76)),
    *gyrus(334, "Right-SOG---superior-occipital-gyrus", "Left-SOG---superior-occipital-gyrus",
           "superior occipital gyrus", OCCIPITAL_LOBE, (255, 51, 160)),
    *gyrus(336, "Right-SPL---superior-parietal-lobule", "Left-SPL---superior-parietal-lobule",
           "superior parietal lobule", PARIETAL_LOBE, (76, 132, 217)),
    *gyrus(338, "Right-STG---superior-temporal-gyrus", "Left-STG---superior-temporal-gyrus",
           "superior temporal gyrus", TEMPORAL_LOBE, (166, 178, 255)),
    *gyrus(340, "Right-TMP---temporal-pole", "Left-TMP---temporal-pole", "temporal pole", TEMPORAL_LOBE, (178, 116, 129)),
    *gyrus(342, "Right-TrIFG-triangular-part-of-the-IFG", "Left-TrIFG-triangular-part-of-the-IFG",
           "triangular part of inferior frontal gyrus", FRONTAL_LOBE, (121, 178, 36)),
    *gyrus(344, "Right-TTG---transverse-temporal-gyrus", "Left-TTG---transverse-temporal-gyrus",
           "transverse temporal gyrus", TEMPORAL_LOBE, (43, 217, 217)),
]


# ------------------------------------------------------------------------------------- sources


class Sources:
    """The codes and recommended colours of the terminology files."""

    def __init__(self, terminology_dir: Path, vista3d_rows: list[dict[str, str]]) -> None:
        self.known_codes: set[Code] = set()
        self.ts_colours: dict[str, Optional[RGB]] = {}
        # (type value, laterality value or "") -> colour, first context wins
        self.slicer_colours: dict[tuple[str, str], RGB] = {}

        with (terminology_dir / TS_MAPPING).open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                self.known_codes.update(_codes_of_row(row))
                rgb = (row["Color_R"], row["Color_G"], row["Color_B"])
                # Many rows have no colour; those classes get one of their own below.
                self.ts_colours[row["Name"]] = _rgb(rgb) if all(rgb) else None
        for filename in SLICER_CONTEXTS:
            with (terminology_dir / filename).open(encoding="utf-8") as handle:
                self._walk_context(json.load(handle), None)
        for row in vista3d_rows:
            self.known_codes.update(_codes_of_row(row))

    def _walk_context(self, node: object, type_value: Optional[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._walk_context(item, type_value)
            return
        if not isinstance(node, dict):
            return
        if "CodeValue" in node and "CodeMeaning" in node:
            code = (node.get("CodingSchemeDesignator", ""), node["CodeValue"], node["CodeMeaning"])
            self.known_codes.add(code)
            colour = node.get("recommendedDisplayRGBValue")
            if colour and any(colour):  # the only black one is "Background"
                # A modifier's colour is keyed by its type; a type's (or region's) by itself.
                key = (type_value, code[1]) if type_value is not None else (code[1], "")
                self.slicer_colours.setdefault(key, _rgb(colour))
        for key, value in node.items():
            if key == "Modifier" or key == "AnatomicRegionModifier":
                self._walk_context(value, node.get("CodeValue"))
            elif isinstance(value, (list, dict)):
                self._walk_context(value, type_value if key not in ("Type", "AnatomicRegion") else None)

    def colour(self, entry: Entry) -> RGB:
        source = entry.colour
        if isinstance(source, FromTS):
            rgb = self.ts_colours.get(source.name)
            if rgb is None:
                raise ValueError(f"{entry.label}: TotalSegmentator's {source.name!r} has no colour")
            return rgb
        if isinstance(source, FromSlicer):
            side = entry.side[1] if entry.side else ""
            rgb = self.slicer_colours.get((entry.type[1], side)) or self.slicer_colours.get((entry.type[1], ""))
            if rgb is None:
                raise ValueError(f"{entry.label}: Slicer's contexts recommend no colour for {entry.type}")
            return rgb
        return source


def _rgb(values: Iterable[object]) -> RGB:
    r, g, b = (int(str(value)) for value in values)
    return (r, g, b)


def _codes_of_row(row: dict[str, str]) -> Iterator[Code]:
    for part in ("Category", "Type", "TypeModifier", "Region", "RegionModifier"):
        code = (row.get(f"{part}_CodingScheme", ""), row.get(f"{part}_CodeValue", ""), row.get(f"{part}_CodeMeaning", ""))
        if code[1]:
            yield code


def read_channel_def(mirror: Path) -> dict[int, str]:
    """The bundle's class names by ID (background left out)."""
    text = subprocess.run(
        ["git", "-C", str(mirror), "show", f"HEAD:{METADATA_IN_BUNDLE}"],
        check=True, capture_output=True, text=True, encoding="utf-8",
    ).stdout
    channel_def = json.loads(text)["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = {int(key): value for key, value in channel_def.items() if int(key) != 0}
    if sorted(names) != list(range(1, CLASSES + 1)):
        raise ValueError(f"expected classes 1..{CLASSES} in {METADATA_IN_BUNDLE}, got {len(names)}")
    return names


def read_vista3d_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _bundle_name_of_vista3d(display_name: str) -> str:
    name = display_name.lower()
    for english, latin in _DISPLAY_TO_BUNDLE:
        name = name.replace(english, latin)
    return name


def _without_deprecated(name: str) -> str:
    return name.replace(f" {DEPRECATED}", "")


def _prompt_form(name: str) -> str:
    """How prompts compare names: case, '-' / '_' and repeated spaces do not matter."""
    return re.sub(r"\s+", " ", re.sub(r"[-_]", " ", name.lower())).strip()


def _code_cells(code: Optional[Code]) -> list[str]:
    return list(code) if code else ["", "", ""]


# --------------------------------------------------------------------------------------- build


def build_rows(channel_def: dict[int, str], columns: list[str], vista3d_rows: list[dict[str, str]],
               sources: Sources) -> list[list[str]]:
    rows: dict[int, list[str]] = {}
    for row in vista3d_rows:
        label = int(row["LabelValue"])
        bundle_name = channel_def[label]
        # Catches a renumbering upstream: VISTA3D's IDs must still be the same structures (the
        # bundle keeps capitals in "vertebrae L5", so case is not compared).
        if _bundle_name_of_vista3d(row["Name"]) != _without_deprecated(bundle_name).lower():
            raise ValueError(f"{label}: VISTA3D's {row['Name']!r} is not the bundle's {bundle_name!r}")
        cells = [row[column] for column in columns]
        if DEPRECATED in bundle_name and DEPRECATED not in row["Name"]:
            cells[columns.index("Name")] = f"{row['Name']} {DEPRECATED}"
        rows[label] = cells + [bundle_name]

    for entry in _CTMR_CLASSES:
        if entry.label in rows:
            raise ValueError(f"{entry.label} is mapped twice")
        if channel_def[entry.label] != entry.bundle_name:
            raise ValueError(f"{entry.label}: the bundle calls it {channel_def[entry.label]!r}, "
                             f"the mapping {entry.bundle_name!r}")
        for code in (entry.category, entry.type, entry.side, entry.region):
            if code and code not in sources.known_codes:
                raise ValueError(f"{entry.label}: {code} is in none of the terminology sources")
        r, g, b = sources.colour(entry)
        rows[entry.label] = [
            str(entry.label), entry.name, str(r), str(g), str(b), "255",
            *_code_cells(entry.category), *_code_cells(entry.type), *_code_cells(entry.side),
            *_code_cells(entry.region), *_code_cells(None), entry.bundle_name,
        ]

    missing = sorted(set(range(1, CLASSES + 1)) - set(rows))
    if missing:
        raise ValueError(f"no row for {missing}")
    ordered = [rows[label] for label in range(1, CLASSES + 1)]
    _check(ordered, columns)
    return ordered


def _check(rows: list[list[str]], columns: list[str]) -> None:
    """What a prompt or Slicer relies on: unique names that no other class's bundle name shadows,
    visible colours."""
    name_at, bundle_at = columns.index("Name"), len(columns)
    names = [row[name_at] for row in rows]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"display names used twice: {sorted(duplicates)}")
    bundle_forms = {_prompt_form(row[bundle_at]): row[0] for row in rows}
    for row in rows:
        other = bundle_forms.get(_prompt_form(row[name_at]))
        if other is not None and other != row[0]:
            raise ValueError(f"{row[0]}: display name {row[name_at]!r} is class {other}'s bundle name")
        if row[2:5] == ["0", "0", "0"]:
            raise ValueError(f"{row[0]}: black")


def write_table(path: Path, columns: list[str], rows: Iterable[list[str]]) -> None:
    buffer = io.StringIO()
    # LF and minimal quoting, as VISTA3DColorTable.csv.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns + [BUNDLE_NAME_COLUMN])
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True,
                        help="a git clone of NVIDIA-Medtech/NV-Segment-CTMR (its HEAD's metadata.json is read)")
    parser.add_argument("--terminology-dir", type=Path, default=DEFAULT_TERMINOLOGY_DIR,
                        help="TotalSegmentator mapping and Slicer contexts (default: %(default)s)")
    parser.add_argument("--vista3d-table", type=Path, default=DEFAULT_VISTA3D_TABLE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--list-general", action="store_true",
                        help="print the classes coded with a containing structure's code")
    args = parser.parse_args(argv)

    channel_def = read_channel_def(args.mirror)
    columns, vista3d_rows = read_vista3d_table(args.vista3d_table)
    sources = Sources(args.terminology_dir, vista3d_rows)
    rows = build_rows(channel_def, columns, vista3d_rows, sources)
    write_table(args.output, columns, rows)
    print(f"wrote {len(rows)} classes to {args.output}")
    if args.list_general:
        for entry in _CTMR_CLASSES:
            if entry.general:
                print(f"{entry.label}\t{entry.name}\t{entry.type[1]} {entry.type[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
