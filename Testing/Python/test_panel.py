"""The panel's logic without Slicer: points -> engine -> changed region, undo/redo,
refused points, snapping of zero-shot segments, and the weights row."""

from __future__ import annotations

import numpy as np
import pytest

from VISTA3DSlicerLib.engine import Engine
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.geometry import Image
from VISTA3DSlicerLib.interactive import Session
from VISTA3DSlicerLib.io import read_image
from VISTA3DSlicerLib.panel import WEIGHTS_MODELS, ClickEditor, PointPrompt, segments_replaced, weights_status

# ----------------------------------------------------------------------------------- the clicks


@pytest.fixture(scope="module")
def session(example_ct_crop, small_network) -> Session:
    return Session(Engine(small_network), read_image(example_ct_crop))


def ras(session: Session, index) -> tuple[float, float, float]:
    return tuple(float(v) for v in session.image.index_to_ras(np.asarray(index, dtype=float)))


def outside(shape, box) -> np.ndarray:
    mask = np.ones(shape, dtype=bool)
    if box is not None:
        mask[box] = False
    return mask


def test_points_edit_the_segment_only_inside_the_changed_box(session):
    editor = ClickEditor(session)
    drawn = np.zeros(session.image.shape, dtype=bool)
    drawn[5:15, 5:15, 5:10] = True  # a segment the user drew
    first = PointPrompt(ras(session, (35, 30, 15)))

    edit = editor.set_points("Segment_1", None, [first], drawn)

    assert edit.changed is not None and edit.mask[edit.changed].any()
    assert np.array_equal(edit.mask[outside(drawn.shape, edit.changed)], drawn[outside(drawn.shape, edit.changed)])
    np.testing.assert_allclose(editor.points("Segment_1")[0].ras, first.ras, atol=1e-6)
    # The same as the session's own computation of that click on that mask.
    expected = session.structure(None, mask=drawn).click((35, 30, 15)).mask
    assert np.array_equal(edit.mask, expected)


def test_moved_and_removed_points_and_undo_redo(session):
    editor = ClickEditor(session)
    empty = np.zeros(session.image.shape, dtype=bool)
    a, b = PointPrompt(ras(session, (35, 30, 15))), PointPrompt(ras(session, (40, 35, 15)), positive=False)
    moved_b = PointPrompt(ras(session, (50, 30, 18)), positive=False)

    one = editor.set_points("s", None, [a], empty).mask
    two = editor.set_points("s", None, [a, b], None).mask
    moved = editor.set_points("s", None, [a, moved_b], None).mask
    assert np.array_equal(moved, ClickEditor(session).set_points("s", None, [a, moved_b], empty).mask)
    assert [p.positive for p in editor.points("s")] == [True, False]

    undone = editor.undo("s")
    assert np.array_equal(undone.mask, two) and undone.changed is not None
    assert np.array_equal(editor.undo("s").mask, one)
    assert len(editor.points("s")) == 1 and editor.can_redo("s")
    assert np.array_equal(editor.redo("s").mask, two)

    cleared = editor.set_points("s", None, [], None)  # Clear: no points, the segment as before them
    assert not cleared.mask.any() and editor.points("s") == []
    assert np.array_equal(editor.undo("s").mask, two)


def test_point_outside_the_volume_is_refused_and_changes_nothing(session):
    editor = ClickEditor(session)
    empty = np.zeros(session.image.shape, dtype=bool)
    inside = PointPrompt(ras(session, (35, 30, 15)))
    before = editor.set_points("s", None, [inside], empty).mask
    far = PointPrompt(ras(session, (35, 30, 500)))
    with pytest.raises(VISTA3DError, match="outside the volume"):
        editor.set_points("s", None, [inside, far], None)
    assert len(editor.points("s")) == 1
    assert np.array_equal(editor.undo("s").mask, empty)  # the refused point made no undo step
    assert not editor.can_undo("s")
    assert np.array_equal(editor.redo("s").mask, before)


def test_a_segment_painted_elsewhere_restarts_from_what_it_holds(session):
    editor = ClickEditor(session)
    empty = np.zeros(session.image.shape, dtype=bool)
    point = PointPrompt(ras(session, (35, 30, 15)))
    first = editor.set_points("s", None, [point], empty).mask
    painted = first.copy()
    painted[0:4, 0:4, 0:4] = True  # the user painted a corner after the click

    edit = editor.set_points("s", None, [point], painted)

    assert edit.mask[0:4, 0:4, 0:4].all()  # the paint is kept
    assert np.array_equal(editor.undo("s").mask, painted)  # the history starts at the painted segment
    assert not editor.can_undo("s")


def test_class_segment_uses_its_label(session):
    editor = ClickEditor(session)
    auto = session.automatic_mask(6)
    point = PointPrompt(ras(session, (35, 30, 15)))
    edit = editor.set_points("aorta", 6, [point], auto)
    expected = session.structure(6, mask=auto).click((35, 30, 15)).mask
    assert np.array_equal(edit.mask, expected)
    with pytest.raises(VISTA3DError, match="group"):
        editor.set_points("kidneys", 2, [point], auto)


def test_zero_shot_segment_snaps_to_supervoxels(session):
    """After each edit of a zero-shot segment its mask is snapped: the supervoxel under a positive
    point is added whole, the one under a negative point removed whole."""
    from VISTA3DSlicerLib.supervoxels import snap

    editor = ClickEditor(session)
    shape = session.image.shape
    supervoxels = np.ones(shape, dtype=np.int32)
    supervoxels[46:54, 26:34, 15:21] = 2  # around the second positive point
    supervoxels[37:43, 32:38, 13:17] = 3  # around the negative point
    empty = np.zeros(shape, dtype=bool)
    points = [PointPrompt(ras(session, (35, 30, 15))), PointPrompt(ras(session, (50, 30, 18))),
              PointPrompt(ras(session, (40, 35, 15)), positive=False)]
    editor.set_points("zs", 140, points[:1], empty)

    editor.set_supervoxels(session.image.with_array(supervoxels))
    editor.snap_fraction = 0.5
    raw = editor._structures["zs"].mask
    assert np.array_equal(editor.reshow("zs").mask, snap(raw, supervoxels, 0.5, positive=[(35, 30, 15)]))

    with_block = editor.set_points("zs", 140, points[:2], None).mask
    assert with_block[supervoxels == 2].all()
    edit = editor.set_points("zs", 140, points, None)
    assert not edit.mask[supervoxels == 3].any() and edit.mask[supervoxels == 2].all()
    raw = editor._structures["zs"].mask
    assert np.array_equal(edit.mask, snap(raw, supervoxels, 0.5, positive=[(35, 30, 15), (50, 30, 18)],
                                          negative=[(40, 35, 15)]))

    editor.snap_fraction = 0.0  # snapping off: the network's mask again
    assert np.array_equal(editor.reshow("zs").mask, raw)
    with pytest.raises(VISTA3DError, match="grid"):
        editor.set_supervoxels(Image(np.zeros((3, 3, 3), np.int32), np.eye(4)))


def test_snap_box_needs_points(session):
    editor = ClickEditor(session)
    with pytest.raises(VISTA3DError, match="Place a point"):
        editor.snap_box("nothing", 8)
    editor.set_points("zs", 140, [PointPrompt(ras(session, (35, 30, 15)))], np.zeros(session.image.shape, bool))
    box = editor.snap_box("zs", 8)
    assert all(s.start <= c < s.stop for s, c in zip(box, (35, 30, 15)))


# ---------------------------------------------------------------------------------- the weights


def test_weights_status_says_what_to_do_and_where_the_file_is(tmp_path, monkeypatch):
    from VISTA3DSlicerLib import weights

    monkeypatch.setenv("VISTA3D_HOME", str(tmp_path))
    monkeypatch.delenv("VISTA3D_WEIGHTS", raising=False)
    vista = WEIGHTS_MODELS[0]
    missing = weights_status(vista)
    assert not missing.ready and "Not downloaded yet (872 MB)" in missing.text

    mine = tmp_path / "elsewhere.pt"
    mine.write_bytes(b"x")
    chosen = weights_status(vista, mine)
    assert chosen.ready and not chosen.in_cache and str(mine) in chosen.text
    gone = weights_status(vista, tmp_path / "gone.pt")
    assert not gone.ready and "does not exist" in gone.text

    cached = weights.cached_path(vista.source)
    cached.write_bytes(b"y")
    monkeypatch.setattr(weights, "verify", lambda path, source: True)  # a checked copy
    status = weights_status(vista)
    assert status.ready and status.in_cache and status.path == cached
    assert [m.source.filename for m in WEIGHTS_MODELS[1:]] == [
        weights.source_for(k).filename for k in ("nv-segment-ct", "nv-segment-ctmr")] + [
        weights.SAM_SOURCES[k].filename for k in ("vit_b", "vit_l", "vit_h")]
    hub = weights_status(WEIGHTS_MODELS[1])  # no size pinned: the hub reports it at the download
    assert not hub.ready and "Not downloaded yet. Download them from huggingface.co" in hub.text


def test_segments_replaced_are_those_made_from_the_classes_asked_for():
    """What the panel asks about before an automatic run writes into a segmentation that has results."""
    segments = [
        ("liver", 1),
        ("my liver", None),  # drawn by the user, named like a class: never replaced
        ("left kidney", 14),
        ("right kidney", 5),
        ("spleen (edited)", 3),  # renamed by the user: still the spleen result
        ("zero-shot 133", 133),
    ]
    assert segments_replaced(segments, [1]) == ["liver"]
    assert segments_replaced(segments, [2]) == ["left kidney", "right kidney"]  # the kidney group
    assert segments_replaced(segments, [3, 6]) == ["spleen (edited)"]
    assert segments_replaced(segments, [4, 7]) == []
