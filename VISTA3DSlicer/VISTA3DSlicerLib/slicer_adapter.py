"""The bridge between the library's ``Image`` and 3D Slicer's MRML nodes.

This is the only library module that touches ``slicer`` and MRML; the scripted module imports
it inside Slicer only. ``slicer`` and ``vtk`` are imported inside the functions, so importing
this module outside Slicer does not fail (the test suite checks its array conventions with
stand-in nodes).

Conventions at this boundary: ``slicer.util.arrayFromVolume`` gives ``[k, j, i]``, ``Image``
holds ``[i, j, k]``, so arrays are transposed once here in each direction. A volume's
``IJKToRAS`` matrix is the ``Image``'s affine; a parent transform of the volume is not applied
to the voxels (the network sees the grid as stored).

Segments are written on the volume's grid expressed in the segmentation's own coordinate frame
(the volume-to-segmentation transform times ``IJKToRAS``), which is the reference geometry Slicer
gives the segmentation for that volume: a segmentation under another (linear) transform than its
volume gets its segments where the volume is, without resampling. A non-linear transform between
the two would bend the grid, so it is refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import numpy as np

from .errors import VISTA3DError
from .geometry import Image, bounding_box

if TYPE_CHECKING:
    from .labels import LabelSpace

__all__ = [
    "LABEL_VALUE_TAG", "image_from_volume_node", "ijk_to_ras", "labelmap_to_segmentation", "consecutive_labels",
    "segment_label", "segment_mask", "segment_voxels", "write_segment_region", "add_segment", "points_from_markups",
    "set_markups_points", "export_segments", "load_terminology_contexts",
]

#: Segment tag holding the VISTA3D label ID a segment was made from. A new result replaces
#: the segments carrying its labels' IDs and nothing else (not segments the user drew).
LABEL_VALUE_TAG = "VISTA3D.LabelValue"

# The classes slicer.util.arrayFromVolume reads as one value per voxel. Vector, multi-volume
# and tensor nodes derive from vtkMRMLScalarVolumeNode too, so an IsA check would let them in.
_SCALAR_VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")


def image_from_volume_node(volume_node) -> Image:
    """The voxels (``[i, j, k]``, copied) and ``IJKToRAS`` matrix of a scalar volume node.

    Raises ``VISTA3DError`` for no node, a node without voxels, and vector (colour, multi-volume,
    4D) or tensor volumes.
    """
    import slicer

    if volume_node is None:
        raise VISTA3DError("No input volume is selected. Load a CT volume and select it as the input.")
    name = volume_node.GetName()
    class_name = volume_node.GetClassName()
    image_data = volume_node.GetImageData()
    if class_name not in _SCALAR_VOLUME_CLASSES or (
        image_data is not None and image_data.GetNumberOfScalarComponents() != 1
    ):
        raise VISTA3DError(
            f"'{name}' is not a single-channel 3D volume ({class_name}): VISTA3D segments one 3D CT "
            "volume. For a colour, vector or 4D volume, extract one component or time point first "
            "(for example with the Vector to Scalar Volume module) and select that."
        )
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise VISTA3DError(f"'{name}' has no voxels. Load the volume's data and try again.")

    # A copy: arrayFromVolume is a view of VTK-owned memory that changes when the node does.
    array_ijk = np.array(slicer.util.arrayFromVolume(volume_node).transpose(2, 1, 0))
    return Image(array_ijk, ijk_to_ras(volume_node))


def labelmap_to_segmentation(labelmap: Image, segmentation_node, reference_volume_node,
                             label_space: Optional["LabelSpace"] = None) -> list[str]:
    """Write each label present in ``labelmap`` (the model's IDs, 0 = background) into
    ``segmentation_node`` as one segment with the label's standard name, colour and terminology
    (from ``label_space``, default VISTA3D's).

    The segmentation's reference geometry is set from ``reference_volume_node``, whose grid the
    labelmap is on. A segment earlier made from the same VISTA3D label (found by its
    ``LABEL_VALUE_TAG``) is overwritten in place, keeping its ID and display settings; every
    other segment is left as it is. Labels absent from ``labelmap`` change nothing.

    Returns the IDs of the written segments, in increasing label order.
    """
    import slicer

    from .labels import VISTA3D_LABELS

    label_info = (label_space or VISTA3D_LABELS).label_info
    if labelmap.array.dtype.kind not in "iu":
        raise VISTA3DError(f"A labelmap must hold integers, not {labelmap.array.dtype}.")
    present = [int(value) for value in np.unique(labelmap.array) if value != 0]
    if present and present[0] < 0:
        raise VISTA3DError(f"A labelmap holds label IDs from 0 up, not {present[0]}.")

    binary_labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    source_representation = segmentation.GetSourceRepresentationName()
    if source_representation != binary_labelmap:
        if segmentation.GetNumberOfSegments():
            raise VISTA3DError(
                f"The segmentation '{segmentation_node.GetName()}' is stored as {source_representation}, "
                "not as a labelmap, so VISTA3D results cannot be added to it. Choose another "
                "segmentation or create a new one."
            )
        segmentation.SetSourceRepresentationName(binary_labelmap)  # empty: nothing to convert
    grid_to_segmentation = _grid_in_segmentation_frame(labelmap.affine, reference_volume_node, segmentation_node)
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    if not present:
        return []

    segment_ids = []
    earlier = _segment_ids_by_label(segmentation)
    was_modifying = segmentation_node.StartModify()
    try:
        for label in present:
            info = label_info(label)
            color = [channel / 255.0 for channel in info.color]
            reused = earlier.get(label, [])
            for duplicate in reused[1:]:
                segmentation.RemoveSegment(duplicate)
            segment_id = reused[0] if reused else segmentation.AddEmptySegment("", info.display_name, color)
            segment = segmentation.GetSegment(segment_id)
            segment.SetName(info.display_name)
            segment.SetColor(*color)
            segment.SetTag(segment.GetTerminologyEntryTagName(), info.terminology_entry())
            segment.SetTag(LABEL_VALUE_TAG, str(label))
            # The name and colour are the label's own: keep Slicer from renaming or recolouring.
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
            segment_ids.append(segment_id)
        _import_consecutive_labels(consecutive_labels(labelmap.array, present), grid_to_segmentation, segment_ids,
                                   segmentation_node)
    finally:
        segmentation_node.EndModify(was_modifying)
    return segment_ids


def consecutive_labels(array: np.ndarray, present: list[int]) -> np.ndarray:
    """``array`` with the i-th of the (sorted) ``present`` labels as ``i + 1``, background 0.

    Slicer's labelmap import maps values 1..N to a list of N segment IDs; one import of this
    array fills every segment at once, sharing one labelmap layer.
    """
    lookup = np.zeros(max(present) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[array]


def _segment_ids_by_label(segmentation) -> dict[int, list[str]]:
    """VISTA3D label ID -> IDs of the segments tagged with it (normally one)."""
    import vtk

    by_label: dict[int, list[str]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        value = vtk.mutable("")
        if segmentation.GetSegment(segment_id).GetTag(LABEL_VALUE_TAG, value):
            try:
                by_label.setdefault(int(value.get()), []).append(segment_id)
            except ValueError:  # a tag edited by hand: not one of ours any more
                continue
    return by_label


def _import_consecutive_labels(array: np.ndarray, grid_to_segmentation: np.ndarray, segment_ids: list[str],
                               segmentation_node) -> None:
    """Fill ``segment_ids`` (value i + 1 of ``array`` -> the i-th) from one labelmap import."""
    import slicer
    import vtk

    scene = segmentation_node.GetScene()
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("VISTA3D import"))
    try:
        slicer.util.updateVolumeFromArray(temporary, array.transpose(2, 1, 0))
        temporary.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(grid_to_segmentation))
        # In the segmentation's frame already: Slicer's import must not transform it (once more).
        temporary.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
        updated = vtk.vtkStringArray()
        for segment_id in segment_ids:
            updated.InsertNextValue(segment_id)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
            temporary, segmentation_node, updated
        ):
            raise VISTA3DError(
                f"Slicer could not import the VISTA3D result into '{segmentation_node.GetName()}'; "
                "the application log has the details."
            )
    finally:
        scene.RemoveNode(temporary)


def _grid_in_segmentation_frame(ijk_to_ras: np.ndarray, volume_node, segmentation_node) -> np.ndarray:
    """The volume's grid (``ijk_to_ras``, in the volume's own frame) in the segmentation's frame.

    Raises ``VISTA3DError`` when the transform between the two nodes is not linear.
    """
    import slicer
    import vtk

    volume_to_segmentation = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode(), volume_to_segmentation
    ):
        raise VISTA3DError(
            f"'{volume_node.GetName()}' and the segmentation '{segmentation_node.GetName()}' are under different "
            "transforms and the transform between them is non-linear (a warp), so segments cannot be written on "
            "the volume's voxels. Put the segmentation under the same transform as the volume (Data module: "
            "drag it onto the volume's transform), or harden the warp on the volume first, then run again."
        )
    return slicer.util.arrayFromVTKMatrix(volume_to_segmentation) @ ijk_to_ras


# ------------------------------------------------------------------------------ one segment


def segment_label(segmentation_node, segment_id: str) -> Optional[int]:
    """The VISTA3D label ID a segment was made from (its ``LABEL_VALUE_TAG``), or None for one
    the user drew or imported."""
    import vtk

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.mutable("")
    if segment is None or not segment.GetTag(LABEL_VALUE_TAG, value):
        return None
    try:
        return int(value.get())
    except ValueError:  # a tag edited by hand: not one of ours any more
        return None


def segment_mask(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """A segment as a bool ``[i, j, k]`` array on the reference volume's grid (empty if it has no voxels)."""
    mask = np.zeros(reference_volume_node.GetImageData().GetDimensions(), dtype=bool)
    box, voxels = segment_voxels(segmentation_node, segment_id, reference_volume_node)
    if box is not None:
        mask[box] = voxels
    return mask


def segment_voxels(segmentation_node, segment_id: str,
                   reference_volume_node) -> tuple[Optional[tuple[slice, slice, slice]], Optional[np.ndarray]]:
    """A segment on the reference volume's grid, as the box of the grid that holds its voxels and a
    bool ``[i, j, k]`` array of that box; ``(None, None)`` for a segment without voxels there.

    A segment written by this module is stored on the volume's grid (in the segmentation's frame),
    so its voxels are read as they are, without resampling and without a volume-sized copy. A
    segment stored on another grid (drawn on another volume, say) is resampled to this one, nearest
    neighbour, as Slicer's own export does.
    """
    import slicer
    from vtk.util import numpy_support

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise VISTA3DError(f"The segmentation '{segmentation_node.GetName()}' has no segment {segment_id!r}.")
    # The labelmap Slicer holds (in the segmentation's frame), read in place: no copy of a layer
    # that may hold every segment of a whole CT.
    binary_labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    stored = (segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
              if segmentation_node.GetSegmentation().ContainsRepresentation(binary_labelmap) else None)
    if stored is None:  # a segmentation of surfaces: converted, as Slicer converts it for display
        stored = slicer.vtkOrientedImageData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
                segmentation_node, segment_id, stored, False):
            raise VISTA3DError(f"Slicer could not read the segment '{segment.GetName()}' as a labelmap; "
                               "the application log has the details.")
    dimensions = reference_volume_node.GetImageData().GetDimensions()
    grid = slicer.vtkOrientedImageData()
    grid.SetExtent(0, dimensions[0] - 1, 0, dimensions[1] - 1, 0, dimensions[2] - 1)
    grid.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(
        _grid_in_segmentation_frame(ijk_to_ras(reference_volume_node), reference_volume_node, segmentation_node)))
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(stored, grid):
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(stored, grid, resampled)
        stored = resampled
    extent = stored.GetExtent()
    low = [max(extent[2 * axis], 0) for axis in range(3)]
    high = [min(extent[2 * axis + 1] + 1, dimensions[axis]) for axis in range(3)]
    if stored.GetPointData().GetScalars() is None or any(a >= b for a, b in zip(low, high)):
        return None, None
    # VTK stores x (i) fastest: the scalars are a [k, j, i] array of the stored extent.
    shape = [extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in (2, 1, 0)]
    values = numpy_support.vtk_to_numpy(stored.GetPointData().GetScalars()).reshape(shape).transpose(2, 1, 0)
    inside = tuple(slice(a - extent[2 * axis], b - extent[2 * axis]) for axis, (a, b) in enumerate(zip(low, high)))
    # A layer shared with other segments holds each segment's own label value; the layer spans
    # them all, so the box is trimmed to this segment's voxels.
    voxels = values[inside] == segment.GetLabelValue()
    trimmed = bounding_box(voxels)
    if trimmed is None:
        return None, None
    box = tuple(slice(start + part.start, start + part.stop) for start, part in zip(low, trimmed))
    return box, np.ascontiguousarray(voxels[trimmed])


def write_segment_region(segmentation_node, segment_id: str, mask: np.ndarray,
                         region: tuple[slice, slice, slice], reference_volume_node) -> None:
    """Make the segment equal ``mask`` inside ``region`` (a box of the reference volume's ``[i, j, k]``
    grid) and leave it as it is everywhere else.

    A click changes a box of a large volume, so only the box is written, the way the Segment
    Editor's add and remove modes do: the box's voxels are added (mask mode: the segment's own
    label value where the box is set), then the box's background is taken away (minimum, on this
    segment's voxels only). Slicer's replace mode would not do: with an extent it still replaces the
    whole segment. A voxel added where another segment of a shared layer is moves this segment to
    a layer of its own, so the neighbour keeps it.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    grid_to_segmentation = _grid_in_segmentation_frame(ijk_to_ras(reference_volume_node), reference_volume_node,
                                                       segmentation_node)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(region[0].start, region[0].stop - 1, region[1].start, region[1].stop - 1,
                    region[2].start, region[2].stop - 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(grid_to_segmentation))
    # VTK stores x (i) fastest: the [k, j, i] array in C order.
    box = np.ascontiguousarray(mask[region].transpose(2, 1, 0), dtype=np.uint8).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(box, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    was_modifying = segmentation_node.StartModify()
    try:
        for mode in (logic.MODE_MERGE_MASK, logic.MODE_MERGE_MIN):
            if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, mode, image.GetExtent()):
                raise VISTA3DError(f"Slicer could not update the segment in '{segmentation_node.GetName()}'; "
                                   "the application log has the details.")
    finally:
        segmentation_node.EndModify(was_modifying)


def ijk_to_ras(volume_node) -> np.ndarray:
    """A volume node's ``IJKToRAS`` matrix (the ``Image`` affine of its voxels), without reading the voxels."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def add_segment(segmentation_node, name: str, label: int, reference_volume_node) -> str:
    """A new empty segment for ``label`` (a zero-shot ID, say) with the table's colour and terminology."""
    from . import labels

    info = labels.label_info(label)
    segmentation = segmentation_node.GetSegmentation()
    # Refused now, before a segment is added, if the segments could not be written on the volume's grid.
    _grid_in_segmentation_frame(ijk_to_ras(reference_volume_node), reference_volume_node, segmentation_node)
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segment_id = segmentation.AddEmptySegment("", name, [channel / 255.0 for channel in info.color])
    segment = segmentation.GetSegment(segment_id)
    segment.SetTag(segment.GetTerminologyEntryTagName(), info.terminology_entry())
    segment.SetTag(LABEL_VALUE_TAG, str(label))
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    return segment_id


# ------------------------------------------------------------------------------ points


def points_from_markups(markups_node, volume_node) -> list[tuple[float, float, float]]:
    """The control points of a point list in the volume's own RAS frame (under its parent
    transform, if it has one), which is the frame of the volume's ``IJKToRAS``."""
    import slicer
    import vtk

    world_to_volume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume_node.GetParentTransformNode(), world_to_volume)
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        world = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, world)
        points.append(tuple(world_to_volume.TransformPoint(world)))
    return points


def set_markups_points(markups_node, points: list[tuple[float, float, float]], volume_node) -> None:
    """Replace a point list's control points by ``points`` (volume RAS), e.g. after an undo."""
    import slicer
    import vtk

    volume_to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volume_node.GetParentTransformNode(), None, volume_to_world)
    was_modifying = markups_node.StartModify()
    try:
        markups_node.RemoveAllControlPoints()
        for point in points:
            markups_node.AddControlPointWorld(list(volume_to_world.TransformPoint(point)))
    finally:
        markups_node.EndModify(was_modifying)


# ------------------------------------------------------------------------------ export


def export_segments(segmentation_node, reference_volume_node) -> list:
    """Every segment of a segmentation as ``export.ExportSegment`` (VISTA3D label from the tag, name,
    colour, terminology; the mask on the reference grid read when the export paints the segment,
    so one mask is in memory at a time), in the segmentation's order."""
    import functools

    import vtk

    from .export import ExportSegment

    segmentation = segmentation_node.GetSegmentation()
    segments = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        terminology = vtk.mutable("")
        has_terminology = segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
        segments.append(ExportSegment(
            name=segment.GetName(),
            mask=functools.partial(segment_mask, segmentation_node, segment_id, reference_volume_node),
            label_id=segment_label(segmentation_node, segment_id),
            color=tuple(segment.GetColor()),
            terminology=terminology.get() if has_terminology and terminology.get() else None,
        ))
    return segments


# ------------------------------------------------------------------------------ terminology


def load_terminology_contexts() -> None:
    """Load the extension's terminology contexts (each label space's ``terminology_context_paths``)
    into Slicer's Terminologies module, unless they are loaded already, so that its terminology
    selector finds the codes of every segment in the contexts their tags name."""
    import slicer
    import vtk

    from .labels import LABEL_SPACES

    logic = slicer.modules.terminologies.logic()
    for space in LABEL_SPACES:
        category_type_path, region_path = space.terminology_context_paths()
        category_type_context, anatomic_context = space.terminology_contexts
        if not logic.IsTerminologyContextLoaded(category_type_context):
            if not logic.LoadTerminologyFromFile(str(category_type_path)):
                logging.warning("Slicer could not load the %s terminology context %s", space.title, category_type_path)
        loaded = vtk.vtkStringArray()
        logic.GetLoadedRegionContextNames(loaded)
        if anatomic_context not in {loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())}:
            if not logic.LoadRegionContextFromFile(str(region_path)):
                logging.warning("Slicer could not load the %s region context %s", space.title, region_path)


# ------------------------------------------------------------------------------ nodes the module makes


def new_segmentation_node(volume_node, name: str):
    """A new segmentation for ``volume_node`` (a unique ``name`` in the scene): its geometry, shown,
    and under the volume's transform so that the segments move with the volume."""
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    return node


def point_list_node(scene, name: str, color: tuple[float, float, float], label: str):
    """The scene's point list ``name``, made on first use: points of ``color`` labelled ``label``."""
    node = scene.GetFirstNodeByName(name)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPointLabelsVisibility(False)
        node.SetMarkupLabelFormat(label)
    return node


def segment_labels(segmentation_node) -> list[tuple[str, Optional[int]]]:
    """Each segment's name and VISTA3D label value (None: a segment the user drew), in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegment(i).GetName(), segment_label(segmentation_node, segmentation.GetNthSegmentID(i)))
            for i in range(segmentation.GetNumberOfSegments())]


def show_label_volume(labels: Image, node, scene, name: str, volume_node):
    """``labels`` (supervoxels, say) in a labelmap volume shown with random colours: into ``node``
    when it is still in the scene, else a new one named ``name``; under ``volume_node``'s transform."""
    import slicer.util

    if node is None or node.GetScene() is None:
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeRandom")
    slicer.util.updateVolumeFromArray(node, labels.array.transpose(2, 1, 0).astype("uint16"))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(labels.affine))
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    return node


def outline_in_slice_views(label_node, show: bool) -> None:
    """Show ``label_node`` as outlines over every slice view, or take it away (leaving a label layer
    the user chose alone)."""
    scene = label_node.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").SetUseLabelOutline(True)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if show:
            composite.SetLabelVolumeID(label_node.GetID())
        elif composite.GetLabelVolumeID() == label_node.GetID():
            composite.SetLabelVolumeID(None)
