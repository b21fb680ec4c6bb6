"""``slicer_adapter`` on real Slicer code: slicer-core's MRML scene, nodes, storage nodes and module
logics (see ``headless_slicer.py`` for what is real and what stands in for Slicer's application).

Volumes are read by Slicer's own volumes logic and compared with the library's reader; segments are
checked voxel by voxel through Slicer's own export to a labelmap, and their terminology through
Slicer's own Terminologies logic; exported files are read back by Slicer's own storage nodes.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import example_file
from headless_slicer import linear_transform, rotation, volume_from_array

#: An oblique grid: anisotropic spacing, rotated and not at the origin.
OBLIQUE = rotation(25.0, 2, translation=(-40.0, 12.5, 30.0)) @ np.diag([0.8, 1.1, 2.0, 1.0])
SHAPE = (40, 36, 24)


@pytest.fixture
def adapter(slicer_app):
    from VISTA3DSlicerLib import slicer_adapter

    return slicer_adapter


@pytest.fixture
def ct(slicer_app):
    """A synthetic CT volume node on the oblique grid."""
    import slicer

    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    return volume_from_array(slicer, array, OBLIQUE)


def new_segmentation(slicer, name: str = "Segmentation"):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    return node


def labelmap_image(array: np.ndarray, affine: np.ndarray = OBLIQUE):
    from VISTA3DSlicerLib.geometry import Image

    return Image(array.astype(np.uint8), affine)


def organ_labelmap() -> np.ndarray:
    """Liver (1) and spleen (3) side by side, touching along one plane."""
    labelmap = np.zeros(SHAPE, np.uint8)
    labelmap[4:26, 5:30, 3:20] = 1
    labelmap[26:36, 5:30, 3:20] = 3
    return labelmap


# ------------------------------------------------------------------------------ volumes


def assert_same_image(actual, expected) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.array, expected.array)
    np.testing.assert_allclose(actual.affine, expected.affine, atol=1e-4)


def test_a_nifti_volume_loaded_by_slicer_is_the_image_the_library_reads(slicer_app, adapter, example_ct):
    from VISTA3DSlicerLib.io import read_image

    node = slicer_app.load_volume(example_ct)
    assert_same_image(adapter.image_from_volume_node(node), read_image(example_ct))


def test_an_oblique_permuted_nrrd_loaded_by_slicer_is_the_image_the_library_reads(slicer_app, adapter, tmp_path):
    import SimpleITK as sitk

    from VISTA3DSlicerLib.io import read_image

    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1500, (14, 21, 17)).astype(np.int16))  # [k, j, i]
    # Axes permuted (i along S, j along R, k along A, in LPS) and rotated by 20 degrees.
    permuted = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    direction = rotation(20.0, 0)[:3, :3] @ permuted
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((15.0, -22.0, 40.0))
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))

    node = slicer_app.load_volume(path)
    expected = read_image(path)
    assert not np.allclose(np.abs(expected.direction), np.eye(3))  # really oblique and permuted
    assert_same_image(adapter.image_from_volume_node(node), expected)


def test_a_dicom_series_loaded_by_slicer_is_the_image_the_library_reads(slicer_app, adapter):
    from VISTA3DSlicerLib.io import read_image

    folder = example_file("example_ct_dicom")
    node = slicer_app.load_volume(sorted(folder.iterdir()))
    assert_same_image(adapter.image_from_volume_node(node), read_image(folder))


def test_a_labelmap_volume_is_read_and_a_vector_volume_refused(slicer_app, adapter):
    import slicer

    from VISTA3DSlicerLib.errors import VISTA3DError

    labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert adapter.image_from_volume_node(labels).array[3, 2, 1] == labels.GetImageData().GetScalarComponentAsDouble(3, 2, 1, 0)

    vectors = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
    slicer.util.updateVolumeFromArray(vectors, np.zeros((2, 3, 4, 3), np.uint8))
    with pytest.raises(VISTA3DError, match="not a single-channel 3D volume"):
        adapter.image_from_volume_node(vectors)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(VISTA3DError, match="has no voxels"):
        adapter.image_from_volume_node(empty)


# ------------------------------------------------------------------------------ labelmaps to segments


def test_labels_become_segments_with_their_names_colours_and_voxels(slicer_app, adapter, ct):
    import slicer

    from VISTA3DSlicerLib import labels

    labelmap = organ_labelmap()
    segmentation = new_segmentation(slicer)
    ids = adapter.labelmap_to_segmentation(labelmap_image(labelmap), segmentation, ct)

    assert [adapter.segment_label(segmentation, i) for i in ids] == [1, 3]
    for segment_id, label in zip(ids, (1, 3)):
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        info = labels.label_info(label)
        assert segment.GetName() == info.display_name
        np.testing.assert_allclose(segment.GetColor(), np.array(info.color) / 255.0)
        np.testing.assert_array_equal(adapter.segment_mask(segmentation, segment_id, ct), labelmap == label)
    # Both came from one import: they share one labelmap layer, as Slicer's own import makes them.
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 1


def test_a_rerun_replaces_only_the_segments_of_its_labels(slicer_app, adapter, ct):
    import slicer

    labelmap = organ_labelmap()
    segmentation = new_segmentation(slicer)
    liver, spleen = adapter.labelmap_to_segmentation(labelmap_image(labelmap), segmentation, ct)
    drawn = segmentation.GetSegmentation().AddEmptySegment("", "my lesion")
    drawn_mask = np.zeros(SHAPE, bool)
    drawn_mask[10:14, 10:14, 10:14] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn_mask.transpose(2, 1, 0).astype(np.uint8), segmentation,
                                                     drawn, ct)
    segmentation.GetSegmentation().GetSegment(liver).SetColor(0.1, 0.2, 0.3)  # the user's own choice of colour

    rerun = np.zeros(SHAPE, np.uint8)
    rerun[2:12, 2:12, 2:12] = 1  # only the liver again
    assert adapter.labelmap_to_segmentation(labelmap_image(rerun), segmentation, ct) == [liver]

    np.testing.assert_array_equal(adapter.segment_mask(segmentation, liver, ct), rerun == 1)
    np.testing.assert_array_equal(adapter.segment_mask(segmentation, spleen, ct), labelmap == 3)
    np.testing.assert_array_equal(adapter.segment_mask(segmentation, drawn, ct), drawn_mask)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3


def test_an_empty_result_changes_nothing_and_a_closed_surface_segmentation_is_refused(slicer_app, adapter, ct):
    import slicer

    from VISTA3DSlicerLib.errors import VISTA3DError

    segmentation = new_segmentation(slicer)
    assert adapter.labelmap_to_segmentation(labelmap_image(np.zeros(SHAPE)), segmentation, ct) == []
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0

    surfaces = new_segmentation(slicer, "surfaces")
    surfaces.GetSegmentation().SetSourceRepresentationName("Closed surface")
    surfaces.GetSegmentation().AddEmptySegment("", "model")
    with pytest.raises(VISTA3DError, match="stored as Closed surface"):
        adapter.labelmap_to_segmentation(labelmap_image(organ_labelmap()), surfaces, ct)


# ------------------------------------------------------------------------------ terminology


def codes_in_context(terminologies, context: str) -> set[tuple]:
    """Every (category, type, type modifier) code value triple of a loaded terminology context,
    as Slicer's own Terminologies logic lists them."""
    import slicer

    found = set()
    for c in range(terminologies.GetNumberOfCategoriesInTerminology(context)):
        category = slicer.vtkSlicerTerminologyCategory()
        terminologies.GetNthCategoryInTerminology(context, c, category)
        for t in range(terminologies.GetNumberOfTypesInTerminologyCategory(context, category)):
            kind = slicer.vtkSlicerTerminologyType()
            terminologies.GetNthTypeInTerminologyCategory(context, category, t, kind)
            found.add((category.GetCodeValue(), kind.GetCodeValue(), None))
            if kind.GetHasModifiers():
                for m in range(terminologies.GetNumberOfTypeModifiersInTerminologyType(context, category, kind)):
                    modifier = slicer.vtkSlicerTerminologyType()
                    terminologies.GetNthTypeModifierInTerminologyType(context, category, kind, m, modifier)
                    found.add((category.GetCodeValue(), kind.GetCodeValue(), modifier.GetCodeValue()))
    return found


def regions_in_context(terminologies, context: str) -> set[tuple]:
    """Every (region, region modifier) code value pair of a loaded region context."""
    import slicer

    found = set()
    for r in range(terminologies.GetNumberOfRegionsInRegionContext(context)):
        region = slicer.vtkSlicerTerminologyType()
        terminologies.GetNthRegionInRegionContext(context, r, region)
        found.add((region.GetCodeValue(), None))
        if region.GetHasModifiers():
            for m in range(terminologies.GetNumberOfRegionModifierInRegion(context, region)):
                modifier = slicer.vtkSlicerTerminologyType()
                terminologies.GetNthRegionModifierInRegion(context, region, m, modifier)
                found.add((region.GetCodeValue(), modifier.GetCodeValue()))
    return found


def value(code) -> str | None:
    return code.value if code is not None else None


def test_every_label_s_terminology_is_found_by_slicer_in_the_context_its_tag_names(slicer_app, vista3d_module):
    """Slicer's terminology selector finds a segment's codes only in the context its tag names."""
    import slicer

    from VISTA3DSlicerLib import labels

    if not slicer_app.has_terminology:
        pytest.skip("Slicer's terminology contexts are not in ../shared/reference/terminology")
    vista3d_module.VISTA3DSlicer(types_namespace())  # the module's start-up, as Slicer runs it
    slicer_app.app.emit("startupCompleted()")
    terminologies = slicer.modules.terminologies.logic()
    ids = list(labels.label_table()) + [133, 200]
    labelmap = np.zeros((len(ids), 2, 2), np.uint8)
    for index, label in enumerate(ids):
        labelmap[index] = label
    volume = volume_from_array(slicer, np.zeros(labelmap.shape, np.int16), np.eye(4))
    segmentation = new_segmentation(slicer)
    from VISTA3DSlicerLib import slicer_adapter

    segment_ids = slicer_adapter.labelmap_to_segmentation(labelmap_image(labelmap, np.eye(4)), segmentation, volume)
    assert len(segment_ids) == len(ids)

    contexts: dict[str, set] = {}
    not_found = []
    for segment_id, label in zip(segment_ids, ids):
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(segment.GetTerminology(), entry), label
        info = labels.label_info(label)
        parsed = (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue(),
                  entry.GetTypeModifierObject().GetCodeValue() or None)
        assert parsed == (info.category.value, info.type.value, value(info.type_modifier)), label
        context = entry.GetTerminologyContextName()
        if context not in contexts:
            contexts[context] = codes_in_context(terminologies, context)
        if parsed not in contexts[context]:
            not_found.append((label, info.name, context))
        if info.region is not None:
            region = (entry.GetRegionObject().GetCodeValue(), entry.GetRegionModifierObject().GetCodeValue() or None)
            assert region == (info.region.value, value(info.region_modifier)), label
            if region not in regions_in_context(terminologies, entry.GetRegionContextName()):
                not_found.append((label, info.name, entry.GetRegionContextName()))
    assert not_found == [], f"{len(not_found)} labels name a context that does not hold their codes"


def types_namespace():
    """The ``parent`` Slicer gives a scripted module's constructor (a qSlicerScriptedLoadableModule)."""
    import types

    return types.SimpleNamespace(path=str(Path(sys.modules["VISTA3DSlicer"].__file__)))


# ------------------------------------------------------------------------------ region writes


def write_and_check(adapter, segmentation, segment_id, before: np.ndarray, mask: np.ndarray, region, volume) -> None:
    """Write ``region`` of ``mask``: inside the box the segment becomes ``mask``, outside it stays ``before``."""
    adapter.write_segment_region(segmentation, segment_id, mask, region, volume)
    expected = before.copy()
    expected[region] = mask[region]
    actual = adapter.segment_mask(segmentation, segment_id, volume)
    assert np.count_nonzero(actual != expected) == 0, (
        f"{np.count_nonzero(actual & ~expected)} voxels gained, {np.count_nonzero(~actual & expected)} lost; "
        f"{np.count_nonzero((actual != expected)[region])} of the differences inside the box")


def edited(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """A click's edit of ``mask``: a hole punched and a bump added, both inside a box smaller than the organ."""
    after = mask.copy()
    after[10:15, 10:15, 5:10] = False
    after[24:30, 6:9, 6:9] = True
    return after, (slice(8, 30), slice(4, 16), slice(4, 12))


def test_a_region_write_changes_only_the_box_of_a_segment_alone_in_its_layer(slicer_app, adapter, ct):
    import slicer

    liver_only = np.where(organ_labelmap() == 1, 1, 0)
    segmentation = new_segmentation(slicer)
    (liver,) = adapter.labelmap_to_segmentation(labelmap_image(liver_only), segmentation, ct)
    before = liver_only == 1
    after, box = edited(before)
    write_and_check(adapter, segmentation, liver, before, after, box, ct)


def test_a_region_write_overlapping_a_neighbour_in_the_shared_layer_keeps_the_neighbour(slicer_app, adapter, ct):
    import slicer

    labelmap = organ_labelmap()
    segmentation = new_segmentation(slicer)
    liver, spleen = adapter.labelmap_to_segmentation(labelmap_image(labelmap), segmentation, ct)
    before = labelmap == 1
    after, box = edited(before)  # the bump reaches into the spleen
    assert (after & (labelmap == 3)).any()
    write_and_check(adapter, segmentation, liver, before, after, box, ct)
    np.testing.assert_array_equal(adapter.segment_mask(segmentation, spleen, ct), labelmap == 3)


def test_region_writes_one_after_another_keep_every_earlier_edit(slicer_app, adapter, ct):
    import slicer

    labelmap = organ_labelmap()
    segmentation = new_segmentation(slicer)
    liver, _ = adapter.labelmap_to_segmentation(labelmap_image(labelmap), segmentation, ct)
    before = labelmap == 1
    after, box = edited(before)
    write_and_check(adapter, segmentation, liver, before, after, box, ct)
    again = after.copy()
    again[4:8, 20:30, 3:6] = False
    write_and_check(adapter, segmentation, liver, after, again, (slice(3, 9), slice(19, 31), slice(2, 7)), ct)


@pytest.mark.parametrize("volume_moved, segmentation_moved", [(True, False), (False, True), (True, True)])
def test_segments_land_on_the_volume_when_volume_and_segmentation_are_under_different_transforms(
        slicer_app, adapter, ct, volume_moved, segmentation_moved):
    import slicer

    if volume_moved:
        ct.SetAndObserveTransformNodeID(linear_transform(slicer, rotation(30.0, 0, (5.0, -7.0, 11.0)), "registration").GetID())
    segmentation = new_segmentation(slicer)
    if segmentation_moved:
        segmentation.SetAndObserveTransformNodeID(linear_transform(slicer, rotation(-12.0, 1, (0.0, 3.0, -4.0))).GetID())

    labelmap = organ_labelmap()
    liver, spleen = adapter.labelmap_to_segmentation(labelmap_image(labelmap), segmentation, ct)
    np.testing.assert_array_equal(adapter.segment_mask(segmentation, liver, ct), labelmap == 1)
    np.testing.assert_array_equal(adapter.segment_mask(segmentation, spleen, ct), labelmap == 3)
    after, box = edited(labelmap == 1)
    write_and_check(adapter, segmentation, liver, labelmap == 1, after, box, ct)


def test_a_non_linear_transform_between_volume_and_segmentation_is_refused(slicer_app, adapter, ct):
    import slicer
    import vtk

    from VISTA3DSlicerLib.errors import VISTA3DError

    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, shift in (((0, 0, 0), (0, 0, 0)), ((50, 0, 0), (3, 1, 0)), ((0, 50, 0), (0, 2, 1)), ((0, 0, 50), (1, 0, 2))):
        source.InsertNextPoint(point)
        target.InsertNextPoint(np.add(point, shift))
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    warped = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warped.SetAndObserveTransformToParent(warp)
    ct.SetAndObserveTransformNodeID(warped.GetID())
    segmentation = new_segmentation(slicer)
    with pytest.raises(VISTA3DError, match="non-linear|not linear"):
        adapter.labelmap_to_segmentation(labelmap_image(organ_labelmap()), segmentation, ct)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_add_segment_gives_a_zero_shot_segment_its_colour_and_tag(slicer_app, adapter, ct):
    import slicer

    from VISTA3DSlicerLib import labels

    segmentation = new_segmentation(slicer)
    segment_id = adapter.add_segment(segmentation, "psoas abscess", 140, ct)
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert (segment.GetName(), adapter.segment_label(segmentation, segment_id)) == ("psoas abscess", 140)
    np.testing.assert_allclose(segment.GetColor(), np.array(labels.label_info(140).color) / 255.0)
    assert not adapter.segment_mask(segmentation, segment_id, ct).any()
    mask = np.zeros(SHAPE, bool)
    mask[3:9, 4:6, 2:5] = True
    write_and_check(adapter, segmentation, segment_id, np.zeros(SHAPE, bool), mask, (slice(0, 12), slice(0, 12), slice(0, 12)), ct)


# ------------------------------------------------------------------------------ markups


def test_points_are_read_and_written_in_the_volume_s_frame_under_transforms(slicer_app, adapter, ct):
    import slicer

    to_world = rotation(20.0, 2, (10.0, -5.0, 3.0))
    ct.SetAndObserveTransformNodeID(linear_transform(slicer, to_world, "volume moved").GetID())
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    points.SetAndObserveTransformNodeID(linear_transform(slicer, rotation(-8.0, 0, (1.0, 2.0, 3.0)), "points moved").GetID())
    volume_points = [(12.0, -4.5, 33.0), (-7.25, 18.0, 2.0)]
    adapter.set_markups_points(points, volume_points, ct)

    assert points.GetNumberOfControlPoints() == 2
    world = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(0, world)
    np.testing.assert_allclose(world, (to_world @ [*volume_points[0], 1.0])[:3], atol=1e-6)
    np.testing.assert_allclose(adapter.points_from_markups(points, ct), volume_points, atol=1e-6)


# ------------------------------------------------------------------------------ export read back by Slicer


def test_an_export_is_read_back_by_slicer_s_own_storage_nodes(slicer_app, adapter, vista3d_module, ct, tmp_path):
    import slicer

    from VISTA3DSlicerLib import labels

    labelmap = organ_labelmap()
    segmentation = new_segmentation(slicer)
    liver, spleen = adapter.labelmap_to_segmentation(labelmap_image(labelmap), segmentation, ct)
    lesion = adapter.add_segment(segmentation, "my lesion", 133, ct)
    lesion_mask = np.zeros(SHAPE, bool)
    lesion_mask[30:34, 30:34, 20:23] = True
    adapter.write_segment_region(segmentation, lesion, lesion_mask, (slice(28, 36), slice(28, 36), slice(18, 24)), ct)

    result = vista3d_module.VISTA3DSlicerLogic().export(segmentation, ct, tmp_path / "result.seg.nrrd")

    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(result.labelmap_path))
    loaded = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    assert storage.ReadData(loaded)
    loaded_segmentation = loaded.GetSegmentation()
    names = [loaded_segmentation.GetNthSegment(i).GetName() for i in range(loaded_segmentation.GetNumberOfSegments())]
    assert names == ["Liver", "Spleen", "my lesion"]
    for index, expected in enumerate((labelmap == 1, labelmap == 3, lesion_mask)):
        segment_id = loaded_segmentation.GetNthSegmentID(index)
        original = segmentation.GetSegmentation().GetNthSegment(index)
        np.testing.assert_allclose(loaded_segmentation.GetNthSegment(index).GetColor(), original.GetColor(), atol=1 / 255)
        np.testing.assert_array_equal(adapter.segment_mask(loaded, segment_id, ct), expected)
    entry = slicer.vtkSlicerTerminologyEntry()
    slicer.modules.terminologies.logic().DeserializeTerminologyEntry(loaded_segmentation.GetNthSegment(0).GetTerminology(), entry)
    assert entry.GetTypeObject().GetCodeValue() == labels.label_info(1).type.value

    colours = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "VISTA3D colours")
    colour_storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableStorageNode")
    colour_storage.SetFileName(str(result.colour_table_path))
    assert colour_storage.ReadData(colours)
    for label_id, name in ((1, "Liver"), (3, "Spleen"), (133, "my lesion")):
        assert colours.GetColorName(label_id) == name
        assert colours.GetTerminologyType(label_id).GetCodeValue() == labels.label_info(label_id if label_id < 133 else 133).type.value
    with result.colour_table_path.open(newline="", encoding="utf-8") as handle:
        assert [row["LabelValue"] for row in csv.DictReader(handle)] == ["1", "3", "133"]


def test_a_segment_stored_as_a_surface_is_read_on_the_volume_s_grid(slicer_app, adapter, ct):
    """A segmentation made of surfaces (a model imported as a segment) is converted, as Slicer displays it."""
    import slicer
    import vtk

    from VISTA3DSlicerLib.geometry import Image

    image = Image(np.zeros(SHAPE), OBLIQUE)
    centre = image.index_to_ras(np.array([20.0, 18.0, 12.0]))
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre)
    sphere.SetRadius(8.0)
    sphere.SetThetaResolution(32)
    sphere.SetPhiResolution(32)
    sphere.Update()
    segmentation = new_segmentation(slicer, "model")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segmentation.GetSegmentation().SetSourceRepresentationName("Closed surface")
    segment_id = segmentation.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "ball")
    assert segmentation.GetSegmentation().GetSourceRepresentationName() == "Closed surface"

    mask = adapter.segment_mask(segmentation, segment_id, ct)
    i, j, k = np.indices(SHAPE)
    points = np.stack([i, j, k, np.ones(SHAPE)], axis=-1) @ OBLIQUE.T
    distance = np.linalg.norm(points[..., :3] - centre, axis=-1)
    assert mask[distance < 6.5].all() and not mask[distance > 9.5].any()
