"""The module's Logic (and its self-test) on real Slicer code: slicer-core's scene and module logics,
with a tiny random VISTA3D network of the real design (see ``headless_slicer.py`` for what stands
in for Slicer's application). Every dialog function raises here, so each test also checks that the
Logic runs headless: it asks the user nothing and installs nothing.

A 128³ window of even the tiny network takes seconds on two cores, so the tests run the network
only where the Logic's own run is what is tested; the segments a test starts from are written
from one labelmap computed once (``earlier_result``).
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
import weakref

import numpy as np
import pytest

from headless_slicer import linear_transform, rotation, volume_from_array

#: A small CT at 1.5 mm (the network's grid): one 128³ window.
CT_SHAPE = (48, 44, 30)
CT_AFFINE = np.diag([-1.5, -1.5, 1.5, 1.0])


def synthetic_ct() -> np.ndarray:
    """Air around an elliptic body of soft tissue (40 HU) holding a brighter organ (120 HU)."""
    i, j, k = np.ogrid[:CT_SHAPE[0], :CT_SHAPE[1], :CT_SHAPE[2]]
    body = ((i - 24) / 20) ** 2 + ((j - 22) / 17) ** 2 < 1
    organ = ((i - 18) / 8) ** 2 + ((j - 20) / 7) ** 2 + ((k - 15) / 9) ** 2 < 1
    return np.where(organ, 120, np.where(body, 40, -1000)).astype(np.int16) + np.zeros(CT_SHAPE, np.int16)


@pytest.fixture
def ct(slicer_app):
    import slicer

    return volume_from_array(slicer, synthetic_ct(), CT_AFFINE)


@pytest.fixture(scope="module")
def network():
    """The smallest network of VISTA3D's design (8 filters, one block per level), seeded."""
    import torch

    from VISTA3DSlicerLib.model import ModelSpec, build_network

    torch.manual_seed(0)
    return build_network(ModelSpec(embed_dim=8, blocks_down=(1, 1, 1, 1, 1))).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, network):
    import torch

    path = tmp_path_factory.mktemp("weights") / "tiny_model.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def earlier_result(network) -> np.ndarray:
    """What the library computes for liver and spleen on the synthetic CT (labels [i, j, k])."""
    from VISTA3DSlicerLib.engine import Engine
    from VISTA3DSlicerLib.geometry import Image

    return Engine(network).segment(Image(synthetic_ct(), CT_AFFINE), [1, 3]).array


def written_segmentation(ct_node, labelmap: np.ndarray):
    """A segmentation holding ``labelmap``'s segments, as an earlier run of the Logic leaves it."""
    import slicer

    from VISTA3DSlicerLib import slicer_adapter
    from VISTA3DSlicerLib.geometry import Image

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "earlier")
    node.CreateDefaultDisplayNodes()
    slicer_adapter.labelmap_to_segmentation(Image(labelmap, CT_AFFINE), node, ct_node)
    return node


@pytest.fixture
def logic(vista3d_module, tmp_path, monkeypatch):
    monkeypatch.setenv("VISTA3D_HOME", str(tmp_path / "cache"))  # no weights: nothing downloaded here
    monkeypatch.delenv("VISTA3D_WEIGHTS", raising=False)
    return vista3d_module.VISTA3DSlicerLogic()


@pytest.fixture
def live_engines():
    """A function giving every engine (a loaded network) still held by anything, that the test made
    (other tests' fixtures may hold engines of their own)."""
    from VISTA3DSlicerLib.engine import Engine

    def engines() -> list:
        gc.collect()
        return [thing for thing in gc.get_objects() if isinstance(thing, Engine)]

    earlier = weakref.WeakSet(engines())
    return lambda: [engine for engine in engines() if engine not in earlier]


def segments_of(segmentation) -> dict[str, str]:
    """Segment name -> ID."""
    seg = segmentation.GetSegmentation()
    return {seg.GetNthSegment(i).GetName(): seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())}


# ------------------------------------------------------------------------------ automatic segmentation


def test_segment_writes_what_the_engine_computes_into_a_new_segmentation_on_the_volume(
        logic, ct, checkpoint, earlier_result):
    import slicer

    from VISTA3DSlicerLib import labels, slicer_adapter

    ct.SetAndObserveTransformNodeID(linear_transform(slicer, rotation(15.0, 2, (4.0, 0.0, -2.0))).GetID())
    segmentation = logic.segment(ct, "liver, spleen", weights=checkpoint, device="cpu")

    assert segmentation.GetTransformNodeID() == ct.GetTransformNodeID()
    expected = earlier_result
    names = segments_of(segmentation)
    assert set(names) == {"Liver", "Spleen"}
    for name, segment_id in names.items():
        label = slicer_adapter.segment_label(segmentation, segment_id)
        assert labels.label_info(label).display_name == name
        np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, segment_id, ct), expected == label)


def test_a_rerun_into_the_same_segmentation_is_refused_unless_replacing_is_asked_for(
        logic, ct, checkpoint, vista3d_module, earlier_result):
    """The Logic never asks (no dialog): the panel asks the user and passes the answer in."""
    import slicer

    from VISTA3DSlicerLib import slicer_adapter

    segmentation = written_segmentation(ct, np.where(earlier_result == 1, 0, earlier_result))  # the spleen
    spleen = segments_of(segmentation)["Spleen"]
    drawn = segmentation.GetSegmentation().AddEmptySegment("", "my spleen")
    before = slicer_adapter.segment_mask(segmentation, spleen, ct)

    with pytest.raises(vista3d_module.VISTA3DError, match="Nothing was changed: Spleen would have been replaced"):
        logic.segment(ct, "liver, spleen", segmentation, weights=checkpoint, device="cpu")
    np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, spleen, ct), before)
    assert set(segments_of(segmentation)) == {"Spleen", "my spleen"}
    assert logic.segmentsToReplace(segmentation, "liver, spleen") == ["Spleen"]  # what the panel asks about

    logic.segment(ct, "liver, spleen", segmentation, weights=checkpoint, device="cpu", replaceExisting=True)
    assert set(segments_of(segmentation)) == {"Liver", "Spleen", "my spleen"}
    assert segments_of(segmentation)["Spleen"] == spleen and segments_of(segmentation)["my spleen"] == drawn
    np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, spleen, ct), earlier_result == 3)
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_missing_weights_are_a_message_not_a_dialog(logic, ct, vista3d_module):
    with pytest.raises(vista3d_module.VISTA3DError, match="not on this computer.*allowDownload=True"):
        logic.segment(ct, ["liver"], device="cpu")


def test_a_call_that_does_not_wait_returns_at_once_and_downloads_on_the_worker(
        logic, ct, checkpoint, monkeypatch, tmp_path):
    """allowDownload=True: the download is part of the job, so waitForCompletion=False never blocks on it."""
    import shutil

    from VISTA3DSlicerLib import weights

    release = threading.Event()
    threads = []

    def download(source=None, *, progress=None, cancel=None, **_):
        threads.append(threading.current_thread().name)
        assert release.wait(60), "the test never let the download finish"
        target = weights.cached_path(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkpoint, target)
        return target

    monkeypatch.setattr(weights, "download", download)
    done = []
    job = logic.segment(ct, ["liver"], device="cpu", allowDownload=True, waitForCompletion=False,
                        onDone=done.append, onError=lambda error: done.append(error))
    assert not job.done and not done  # returned while the download is still waiting
    release.set()
    job.wait(pump=logic.worker().dispatch)
    assert threads == ["VISTA3D worker"]
    assert len(done) == 1 and done[0].IsA("vtkMRMLSegmentationNode"), done


def fake_versions(monkeypatch, **versions) -> None:
    """Make importlib.metadata report these versions (None: not installed) for these distributions."""
    import importlib.metadata

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name in versions:
            if versions[name] is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_packages_missing_or_at_another_version_are_a_message_naming_them(logic, ct, checkpoint, monkeypatch,
                                                                          vista3d_module):
    fake_versions(monkeypatch, monai="1.3.0", nibabel=None)  # another extension's monai; no nibabel
    assert [str(unmet) for unmet in logic.missingDependencies()] == [
        "monai>=1.5,<1.7 (1.3.0 is installed)", "nibabel>=5.0 (not installed)"]
    with pytest.raises(vista3d_module.VISTA3DError, match=r"monai>=1.5,<1.7 \(1.3.0 is installed\)"):
        logic.segment(ct, ["liver"], weights=checkpoint, device="cpu")


def test_install_dependencies_installs_what_is_missing_without_asking(logic, monkeypatch):
    import slicer

    fake_versions(monkeypatch, monai="1.7.2", psutil=None)
    installed = []
    monkeypatch.setattr(slicer.util, "pip_install", installed.append)  # the one install the Logic may make
    logic.installDependencies()
    assert installed == [["monai>=1.5,<1.7", "psutil>=5.9"]]


def test_missing_weights_name_their_source_and_download_on_the_worker(logic, checkpoint, monkeypatch, tmp_path):
    from VISTA3DSlicerLib import models, weights

    assert logic.missingWeights() is models.VISTA3D.default_source
    assert logic.missingWeights(None, "nv-segment-ct") is models.NV_SEGMENT_CT.default_source
    assert logic.missingWeights(None, "sam_vit_b") is weights.SAM_SOURCES["vit_b"]
    assert logic.missingWeights(checkpoint) is None
    threads = []

    def download(source, *, progress=None, cancel=None):
        threads.append(threading.current_thread().name)
        progress(1, 1, "downloaded")
        return tmp_path / source.filename

    monkeypatch.setattr(weights, "download", download)
    reports = []
    path = logic.downloadWeights(weights.SAM_SOURCES["vit_b"], progress=lambda *report: reports.append(report))
    assert path == tmp_path / weights.SAM_SOURCES["vit_b"].filename
    assert threads == ["VISTA3D worker"] and reports == [(1, 1, "downloaded")]


def test_segment_volumes_reports_each_volume_and_goes_on_after_a_failure(logic, ct, checkpoint, slicer_app):
    import slicer

    colour = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    slicer.util.updateVolumeFromArray(colour, np.zeros((4, 5, 6, 3), np.uint8))
    report = logic.segmentVolumes([colour, ct], "liver", weights=checkpoint, device="cpu")

    assert [result.name for result in report.results] == ["photo", "CT"]
    assert "1 done" in report.summary() and "1 failed" in report.summary()
    assert "not a single-channel 3D volume" in report.results[0].message
    segmentations = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    assert [node.GetName() for node in segmentations] == ["CT VISTA3D"]


def test_the_slicer_batch_saves_to_a_folder_like_the_command_line_and_finishes_an_interrupted_one(
        logic, ct, checkpoint, tmp_path):
    """The batch workflow of ``vista3d batch``: files named after the volumes (two named "CT" get one each),
    the summary CSV, and a second run that only does what the first did not finish."""
    import slicer

    from VISTA3DSlicerLib import slicer_adapter
    from VISTA3DSlicerLib.batch import SUMMARY_NAME

    twin = volume_from_array(slicer, synthetic_ct(), CT_AFFINE)
    twin.SetName("CT")
    report = logic.segmentVolumes([ct, twin], "liver", tmp_path / "out", weights=checkpoint, device="cpu")
    assert [(r.name, r.status) for r in report.results] == [("CT_1", "done"), ("CT_2", "done")]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "CT_1.seg.nrrd", "CT_2.seg.nrrd", SUMMARY_NAME]
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")  # read back by Slicer
    storage.SetFileName(str(out / "CT_1.seg.nrrd"))
    saved = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "saved")
    assert storage.ReadData(saved)
    (segment_id,) = segments_of(saved).values()
    assert saved.GetSegmentation().GetSegment(segment_id).GetName() == "Liver"
    # The file holds what the batch showed in the scene for the same volume.
    (shown,) = [node for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if node.GetName() == "CT VISTA3D"]
    shown_mask = slicer_adapter.segment_mask(shown, segments_of(shown)["Liver"], ct)
    assert shown_mask.any() and shown.GetNodeReference("referenceImageGeometryRef") is ct
    np.testing.assert_array_equal(slicer_adapter.segment_mask(saved, segment_id, ct), shown_mask)

    (out / "CT_2.seg.nrrd").unlink()  # as if Slicer had closed during the second volume
    before = len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode"))
    again = logic.segmentVolumes([ct, twin], "liver", tmp_path / "out", weights=checkpoint, device="cpu")
    assert [(r.name, r.status) for r in again.results] == [("CT_1", "skipped"), ("CT_2", "done")]
    assert len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")) == before + 1
    with open(out / SUMMARY_NAME, newline="", encoding="utf-8") as handle:
        import csv

        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert rows["CT_1"]["input"] == "CT" and "done in an earlier run" in rows["CT_1"]["message"]
    assert rows["CT_2"]["status"] == "done"


def test_new_segmentation_node_follows_the_volume(logic, ct):
    import slicer

    transform = linear_transform(slicer, rotation(10.0, 1))
    ct.SetAndObserveTransformNodeID(transform.GetID())
    segmentation = logic.newSegmentationNode(ct)
    assert segmentation.GetName() == "CT VISTA3D" and segmentation.GetDisplayNode() is not None
    assert segmentation.GetTransformNodeID() == transform.GetID()
    assert segmentation.GetNodeReference("referenceImageGeometryRef") is ct


def test_the_parameter_node_holds_the_panel_s_defaults_and_real_nodes(logic, ct):
    parameters = logic.getParameterNode()
    assert (parameters.labels, parameters.device, parameters.precision, parameters.runtime) == (
        "everything", "auto", "fp32", "torch")
    parameters.inputVolume = ct
    assert logic.getParameterNode().inputVolume is ct
    with pytest.raises(ValueError):
        parameters.precision = "int8"


# ------------------------------------------------------------------------------ clicks


def click_points(logic, ct, positive_ijk, negative_ijk=()):
    from VISTA3DSlicerLib import slicer_adapter

    image = slicer_adapter.image_from_volume_node(ct)
    positive, negative = logic.pointListNode(True), logic.pointListNode(False)
    for node, points in ((positive, positive_ijk), (negative, negative_ijk)):
        node.RemoveAllControlPoints()
        for point in points:
            node.AddControlPoint(image.index_to_ras(np.asarray(point, dtype=float)).tolist())
    return positive, negative


def test_points_correct_a_segment_as_the_library_does_and_undo_redo_restore_it(
        logic, ct, checkpoint, network, earlier_result):
    from VISTA3DSlicerLib import slicer_adapter
    from VISTA3DSlicerLib.engine import Engine
    from VISTA3DSlicerLib.interactive import Session

    segmentation = written_segmentation(ct, earlier_result)
    liver = segments_of(segmentation)["Liver"]
    before = slicer_adapter.segment_mask(segmentation, liver, ct)
    positive, negative = click_points(logic, ct, [(18, 20, 15)], [(30, 22, 15)])
    assert logic.pointListNode(True) is positive  # one list per sign, made once

    changed = logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, weights=checkpoint,
                                            device="cpu")
    after = slicer_adapter.segment_mask(segmentation, liver, ct)
    image = slicer_adapter.image_from_volume_node(ct)
    reference = Session(Engine(network), image).structure(1, mask=before).add_clicks(
        [(np.array([18, 20, 15]), True), (np.array([30, 22, 15]), False)]).mask
    np.testing.assert_array_equal(after, reference)
    assert changed == (not np.array_equal(before, after))
    assert [p.positive for p in logic.pointsOf(liver)] == [True, False]
    assert logic.canUndo(liver) and not logic.canRedo(liver)

    logic.stepHistory("undo", ct, segmentation, liver)
    np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, liver, ct), before)
    assert logic.canRedo(liver)
    logic.stepHistory("redo", ct, segmentation, liver)
    np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, liver, ct), after)


def test_a_point_outside_the_volume_is_refused_and_changes_nothing(logic, ct, checkpoint, vista3d_module,
                                                                  earlier_result):
    from VISTA3DSlicerLib import slicer_adapter

    segmentation = written_segmentation(ct, earlier_result)
    liver = segments_of(segmentation)["Liver"]
    before = slicer_adapter.segment_mask(segmentation, liver, ct)
    positive, negative = click_points(logic, ct, [(200, 20, 15)])
    with pytest.raises(vista3d_module.VISTA3DError, match="outside"):
        logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, weights=checkpoint,
                                      device="cpu")
    np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, liver, ct), before)


def test_the_click_session_follows_the_engine_settings_and_frees_the_old_network(logic, ct, checkpoint,
                                                                               earlier_result, live_engines):
    """A click after the precision changed runs on a network of that precision, and the network
    of the old precision is gone (two full networks need about 2 GB more)."""
    segmentation = written_segmentation(ct, earlier_result)
    liver = segments_of(segmentation)["Liver"]
    positive, negative = click_points(logic, ct, [(18, 20, 15)])
    logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, weights=checkpoint, device="cpu")
    assert [engine.precision for engine in live_engines()] == ["fp32"]

    click_points(logic, ct, [(18, 20, 15), (20, 21, 15)])
    logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, weights=checkpoint, device="cpu",
                                  precision="bf16")
    assert [engine.precision for engine in live_engines()] == ["bf16"]
    assert len(logic.pointsOf(liver)) == 2  # the click ran in the new session


def test_the_model_chosen_decides_whose_weights_load(logic, ct, checkpoint, earlier_result, live_engines, caplog,
                                                     monkeypatch):
    """The panel sets ``logic.model`` from its Model combo box: that model's weights are looked for
    (its own environment variable, its own download), and a change of model starts a new network."""
    import logging

    from VISTA3DSlicerLib.errors import VISTA3DError

    monkeypatch.delenv("NV_SEGMENT_CT_WEIGHTS", raising=False)
    monkeypatch.setenv("VISTA3D_WEIGHTS", str(checkpoint))  # the bundle's weights are here, NV-Segment-CT's not
    segmentation = written_segmentation(ct, earlier_result)
    liver = segments_of(segmentation)["Liver"]
    positive, negative = click_points(logic, ct, [(18, 20, 15)])
    logic.model = "nv-segment-ct"
    with pytest.raises(VISTA3DError, match="The NV-Segment-CT weights are not on this computer"):
        logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, device="cpu")
    assert logic.missingWeights(None, logic.model).title == "NV-Segment-CT weights"

    monkeypatch.setenv("NV_SEGMENT_CT_WEIGHTS", str(checkpoint))
    with caplog.at_level(logging.INFO, logger="VISTA3DSlicerLib.engine"):
        logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, device="cpu")
        logic.model = "vista3d"
        click_points(logic, ct, [(18, 20, 15), (20, 21, 15)])
        logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, device="cpu")
    loaded = [record.args[0] for record in caplog.records if record.getMessage().startswith("Loading the")]
    assert loaded == ["nv-segment-ct", "vista3d"]
    assert len(live_engines()) == 1  # the NV-Segment-CT network was let go


def test_ctmr_segments_with_its_table_its_modality_and_refuses_clicks(logic, ct, checkpoint, network, earlier_result,
                                                                      monkeypatch):
    """NV-Segment-CTMR chosen in the panel: its windows and labels (IDs past 255) go into segments
    named, coloured and coded from its table; its "everything" follows the modality; clicks and
    zero-shot segments are refused with the reason before anything runs."""
    from VISTA3DSlicerLib import slicer_adapter
    from VISTA3DSlicerLib.engine import Engine
    from VISTA3DSlicerLib.errors import VISTA3DError
    from VISTA3DSlicerLib.geometry import Image
    from VISTA3DSlicerLib import labels
    from VISTA3DSlicerLib.labels import CTMR_LABELS
    from VISTA3DSlicerLib.models import NV_SEGMENT_CTMR
    import vtk

    monkeypatch.setenv("NV_SEGMENT_CTMR_WEIGHTS", str(checkpoint))
    logic.model = "nv-segment-ctmr"
    segmentation = logic.segment(ct, "liver, left hippocampus, 300", device="cpu")
    expected = Engine(network, model=NV_SEGMENT_CTMR).segment(Image(synthetic_ct(), CT_AFFINE), [1, 230, 300]).array
    assert expected.dtype == np.uint16
    names = segments_of(segmentation)
    assert names
    for name, segment_id in names.items():
        label = slicer_adapter.segment_label(segmentation, segment_id)
        info = CTMR_LABELS.label_info(label)
        segment, tag = segmentation.GetSegmentation().GetSegment(segment_id), vtk.mutable("")
        assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
        assert name == info.display_name and tag.get() == info.terminology_entry()
        np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, segment_id, ct), expected == label)
    assert set(np.unique(expected)) - {0} == {slicer_adapter.segment_label(segmentation, i) for i in names.values()}

    assert logic.automaticPrompt("everything", slicer_adapter.image_from_volume_node(ct)) == list(
        CTMR_LABELS.everything_for("ct"))  # the synthetic volume is in Hounsfield units
    logic.modality = "mri-brain"
    assert logic.automaticPrompt("everything") == list(range(214, 346))
    logic.model = "vista3d"  # back to a CT model: the brain choice stays in the parameter node, unused
    assert logic.automaticPrompt("everything", slicer_adapter.image_from_volume_node(ct)) == list(labels.EVERYTHING)
    logic.model = "nv-segment-ctmr"

    earlier = written_segmentation(ct, earlier_result)
    liver = segments_of(earlier)["Liver"]
    positive, negative = click_points(logic, ct, [(18, 20, 15)])
    with pytest.raises(VISTA3DError, match="NV-Segment-CTMR segments automatically only"):
        logic.updateSegmentFromPoints(ct, earlier, liver, positive, negative, device="cpu")
    with pytest.raises(VISTA3DError, match="NV-Segment-CTMR segments automatically only"):
        logic.newZeroShotSegment(earlier, ct)
    assert set(segments_of(earlier)) == {"Liver", "Spleen"}  # nothing was added or changed


def test_the_logic_runs_on_a_server_with_the_same_results(logic, ct, checkpoint, network, earlier_result, tmp_path,
                                                          small_sam, monkeypatch):
    """Run on: a `vista3d serve` server (tiny network): automatic segmentation, clicks and supervoxels
    give what they give here; the connection test says what the server runs, or why it cannot be reached."""
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    import slicer
    import torch
    from conftest import RunningServer

    from VISTA3DSlicerLib import slicer_adapter, supervoxels
    from VISTA3DSlicerLib.engine import Engine
    from VISTA3DSlicerLib.errors import VISTA3DError
    from VISTA3DSlicerLib.server import Users, create_app

    token = "a-token-for-the-slicer-tests-0123"
    users = tmp_path / "users.txt"
    users.write_text(f"slicer {token}\n", encoding="utf-8")
    server = RunningServer(create_app(Engine(network), Users(users), sam=lambda: (small_sam, torch.device("cpu"))))
    try:
        assert logic.testConnection(server.url, token).startswith("VISTA3D (MONAI bundle) on cpu on http://127.0.0.1")
        with pytest.raises(VISTA3DError, match="token is not one of this server's users"):
            logic.testConnection(server.url, "a-wrong-token-0123456789")
        logic.server, logic.serverToken = server.url, token
        segmentation = logic.segment(ct, "liver, spleen")  # no weights here: the server has them
        for name, segment_id in segments_of(segmentation).items():
            label = slicer_adapter.segment_label(segmentation, segment_id)
            np.testing.assert_array_equal(slicer_adapter.segment_mask(segmentation, segment_id, ct),
                                          earlier_result == label)
        remote_result = written_segmentation(ct, earlier_result)
        liver = segments_of(remote_result)["Liver"]
        positive, negative = click_points(logic, ct, [(18, 20, 15)])
        logic.updateSegmentFromPoints(ct, remote_result, liver, positive, negative)
        remote_mask = slicer_adapter.segment_mask(remote_result, liver, ct)
        # The server's SAM: no SAM checkpoint is looked for here (there is none).
        logic.computeSupervoxels(ct, liver, device="cpu", samWeights=None)
        remote_supervoxels = slicer.util.arrayFromVolume(slicer.mrmlScene.GetFirstNodeByName("VISTA3D supervoxels")).copy()
        logic.stepHistory("undo", ct, remote_result, liver)
        np.testing.assert_array_equal(slicer_adapter.segment_mask(remote_result, liver, ct), earlier_result == 1)

        logic.server = None  # the same click on this computer
        local_result = written_segmentation(ct, earlier_result)
        local_liver = segments_of(local_result)["Liver"]
        logic.updateSegmentFromPoints(ct, local_result, local_liver, positive, negative, weights=checkpoint)
        np.testing.assert_array_equal(remote_mask, slicer_adapter.segment_mask(local_result, local_liver, ct))
        assert not np.array_equal(remote_mask, earlier_result == 1)  # the click changed something
        sam_path = tmp_path / "sam.pt"
        torch.save(small_sam.state_dict(), sam_path)
        monkeypatch.setattr(supervoxels, "build_sam", lambda kind, checkpoint, device: small_sam)
        logic.computeSupervoxels(ct, local_liver, device="cpu", samWeights=str(sam_path))
        local_supervoxels = slicer.util.arrayFromVolume(slicer.mrmlScene.GetFirstNodeByName("VISTA3D supervoxels"))
        np.testing.assert_array_equal(remote_supervoxels, local_supervoxels)
        assert remote_supervoxels.max() > 1
    finally:
        server.stop()
    with pytest.raises(VISTA3DError, match="did not answer or stopped mid-request"):
        logic.testConnection(server.url, token)


def test_the_click_session_is_installed_on_the_main_thread(logic, ct, checkpoint, vista3d_module, earlier_result):
    """Built on the worker, it becomes the Logic's only when the job's result is dispatched."""
    segmentation = written_segmentation(ct, earlier_result)
    liver = segments_of(segmentation)["Liver"]
    positive, negative = click_points(logic, ct, [(18, 20, 15)])
    job = logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, weights=checkpoint,
                                        device="cpu", waitForCompletion=False)
    while not job.done:  # the work is done on the worker; nothing dispatched its result yet
        time.sleep(0.05)
    assert logic.pointsOf(liver) == [] and not logic.canUndo(liver)
    vista3d_module.VISTA3DSlicerLogic._dispatchTimer.timeout()  # what Slicer's event loop does every 50 ms
    assert len(logic.pointsOf(liver)) == 1 and logic.canUndo(liver)


def test_forgetting_edits_the_volume_and_the_network(logic, ct, checkpoint, earlier_result, live_engines):
    """What the panel calls when a run rewrote the segments, the scene closed, the weights were deleted."""
    segmentation = written_segmentation(ct, earlier_result)
    liver = segments_of(segmentation)["Liver"]
    positive, negative = click_points(logic, ct, [(18, 20, 15)])
    logic.updateSegmentFromPoints(ct, segmentation, liver, positive, negative, weights=checkpoint, device="cpu")
    assert logic.canUndo(liver)
    logic.forgetEdits()
    assert not logic.canUndo(liver) and logic.pointsOf(liver) == []
    logic.forgetVolume()
    assert len(live_engines()) == 1  # the network stays loaded for the next volume
    logic.dropEngine()
    assert live_engines() == []


# ------------------------------------------------------------------------------ zero-shot


def test_zero_shot_segments_supervoxels_and_snapping(logic, ct, checkpoint, small_sam, monkeypatch, tmp_path,
                                                     slicer_app):
    import slicer
    import torch

    from VISTA3DSlicerLib import labels, slicer_adapter, supervoxels

    segmentation = logic.newSegmentationNode(ct)
    first = logic.newZeroShotSegment(segmentation, ct, "  cyst ")
    second = logic.newZeroShotSegment(segmentation, ct, "")
    assert [slicer_adapter.segment_label(segmentation, s) for s in (first, second)] == [133, 134]
    assert segments_of(segmentation) == {"cyst": first, labels.label_info(134).display_name: second}

    positive, negative = click_points(logic, ct, [(18, 20, 15)])
    logic.updateSegmentFromPoints(ct, segmentation, first, positive, negative, weights=checkpoint, device="cpu")
    unsnapped = slicer_adapter.segment_mask(segmentation, first, ct)

    sam_path = tmp_path / "sam.pt"
    torch.save(small_sam.state_dict(), sam_path)
    monkeypatch.setattr(supervoxels, "build_sam", lambda kind, checkpoint, device: small_sam)
    slicer_app.add_slice_views()
    count = logic.computeSupervoxels(ct, first, device="cpu", samWeights=str(sam_path))
    assert count > 0
    supervoxel_node = slicer.mrmlScene.GetFirstNodeByName("VISTA3D supervoxels")
    assert supervoxel_node.IsA("vtkMRMLLabelMapVolumeNode")
    assert int(slicer.util.arrayFromVolume(supervoxel_node).max()) == count

    logic.showSupervoxelBoundaries(True)
    composites = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")
    assert {c.GetLabelVolumeID() for c in composites} == {supervoxel_node.GetID()}
    logic.showSupervoxelBoundaries(False)
    assert {c.GetLabelVolumeID() for c in composites} == {None}

    logic.snapFraction = 0.5
    logic.reshow(segmentation, first, ct)
    snapped = slicer_adapter.segment_mask(segmentation, first, ct)
    supervoxel_ids = slicer.util.arrayFromVolume(supervoxel_node).transpose(2, 1, 0)
    inside = supervoxel_ids > 0
    # Snapped: every supervoxel is wholly in or wholly out.
    for label in np.unique(supervoxel_ids[inside & snapped]):
        assert snapped[supervoxel_ids == label].all()
    np.testing.assert_array_equal(snapped[~inside], unsnapped[~inside])


def test_supervoxels_need_a_point_first(logic, ct, vista3d_module):
    with pytest.raises(vista3d_module.VISTA3DError, match="Place a point"):
        logic.computeSupervoxels(ct, None, device="cpu", samWeights="unused.pt")


# ------------------------------------------------------------------------------ export


def test_export_paints_one_segment_at_a_time(logic, ct, tmp_path):
    """Memory: never one full-volume mask per segment at once (117 segments of a 512³ CT: 15 GB)."""
    import slicer

    from VISTA3DSlicerLib import slicer_adapter
    from VISTA3DSlicerLib.geometry import Image

    shape = (128, 96, 64)
    volume = volume_from_array(slicer, np.zeros(shape, np.int16), CT_AFFINE, "big")
    labelmap = np.zeros(shape, np.uint8)
    for index in range(24):  # 24 labels, each a slab
        labelmap[:, 4 * index:4 * index + 3, 10:50] = index + 1
    segmentation = logic.newSegmentationNode(volume)
    slicer_adapter.labelmap_to_segmentation(Image(labelmap, CT_AFFINE), segmentation, volume)

    logic.export(segmentation, volume, tmp_path / "first.nii.gz")  # imports the writers, which tracemalloc would count
    tracemalloc.start()
    try:
        result = logic.export(segmentation, volume, tmp_path / "labels.nii.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.ids) == 24
    voxels = int(np.prod(shape))
    assert peak < 8 * voxels, f"export peaked at {peak / voxels:.1f} bytes per voxel"


def test_export_refuses_a_segmentation_without_a_volume(logic, ct, vista3d_module, tmp_path):
    segmentation = logic.newSegmentationNode(ct)
    with pytest.raises(vista3d_module.VISTA3DError, match="Select the volume"):
        logic.export(segmentation, None, tmp_path / "x.nii.gz")


# ------------------------------------------------------------------------------ the module's own self-test


def test_the_module_self_test_passes_on_real_slicer_code(vista3d_module, slicer_app):
    import unittest

    test = vista3d_module.VISTA3DSlicerTest("runTest")
    result = unittest.TestResult()
    test.run(result)
    assert result.wasSuccessful(), result.errors + result.failures
