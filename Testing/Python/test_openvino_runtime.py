"""``--runtime openvino``: OpenVINO computes the windows' class features on the CPU.

What must hold: the features are PyTorch's up to OpenVINO's rounding (not a different network,
not weights compressed to fp16), the labels agree with PyTorch's on nearly every voxel, the
conversion happens once per weights and is then read from the cache, and every way it cannot
run says what to do instead. Its speed is measured in BENCHMARKS.md, not here.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from bench import main as bench_main
from VISTA3DSlicerLib.cli import main
from VISTA3DSlicerLib.engine import Engine
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.io import read_image
from VISTA3DSlicerLib.model import check_runtime
from VISTA3DSlicerLib.preprocessing import VISTA3D_PREPROCESSING

WINDOW = VISTA3D_PREPROCESSING.window

LABELS = [1, 3, 5, 6]


@pytest.fixture(scope="module")
def openvino_home(tmp_path_factory):
    """One cache folder for the module, so that the small network is converted once (about 30 s)."""
    return tmp_path_factory.mktemp("vista3d_home")


@pytest.fixture
def home(openvino_home, monkeypatch):
    monkeypatch.setenv("VISTA3D_HOME", str(openvino_home))
    monkeypatch.delenv("VISTA3D_WEIGHTS", raising=False)
    return openvino_home


def converted_models(home) -> list:
    return sorted((home / "openvino").glob("*/class_features.xml"))


def test_openvino_features_are_pytorchs_up_to_rounding(home, small_network):
    engine = Engine(small_network, "cpu", runtime="openvino")
    messages = []
    engine.prepare_runtime(lambda done, total, message: messages.append(message))
    window = torch.randn(1, 1, *WINDOW, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = engine.windows.window_features(window)
    features = engine.windows.openvino.features("fp32", 1)(window)
    assert features.shape == expected.shape == (1, 8, *WINDOW)
    assert features.dtype == torch.float32
    error = (features - expected).abs().max().item()
    assert 0 < error <= 1e-3 * expected.abs().max().item()  # rounding, not another computation
    # The weights are stored at fp32 (4 bytes): fp16 compression would halve the file and change what fp32
    # computes. What the class branch uses: the encoder, its automatic decoder and the feature mapping.
    (model,) = converted_models(home)
    encoder, mapping = small_network.image_encoder, small_network.class_head.image_post_mapping
    used = [*encoder.encoder.parameters(), *encoder.up_layers_auto.parameters(), *mapping.parameters()]
    assert model.with_suffix(".bin").stat().st_size >= 3.5 * sum(p.numel() for p in used)
    assert any(message.startswith("Converting the network for OpenVINO") for message in messages)


def test_segmentation_agrees_with_pytorch_and_the_conversion_is_cached(home, example_ct_crop, small_network, monkeypatch):
    import openvino

    image = read_image(example_ct_crop)
    expected = Engine(small_network).segment(image, LABELS).array
    Engine(small_network, runtime="openvino").prepare_runtime()  # converted by the test above, or now

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached model should have been read, not converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    messages = []
    labels = Engine(small_network, runtime="openvino").segment(
        image, LABELS, progress=lambda done, total, message: messages.append(message)
    ).array
    assert labels.shape == expected.shape and set(np.unique(labels)) <= {0, *LABELS}
    assert len(np.unique(expected)) >= 3
    assert np.mean(labels == expected) >= 0.99
    assert not any(message.startswith("Converting") for message in messages)
    assert len(converted_models(home)) == 1


def test_other_weights_are_converted_apart(small_network):
    from VISTA3DSlicerLib.model import ModelSpec, build_network
    from VISTA3DSlicerLib.openvino_runtime import weights_digest

    torch.manual_seed(1)
    other = build_network(ModelSpec(embed_dim=8, blocks_down=(1, 1, 1, 1, 1)))
    assert weights_digest(small_network) == weights_digest(small_network)
    assert weights_digest(other) != weights_digest(small_network)


def test_the_command_line_segments_with_openvino(capsys, home, tmp_path, example_ct_crop, small_checkpoint):
    output = tmp_path / "labels.nii.gz"
    code = main(["segment", str(example_ct_crop), "-o", str(output), "--labels", "liver,spleen",
                 "--weights", str(small_checkpoint), "--device", "cpu", "--runtime", "openvino"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "(fp32, openvino)" in err
    assert set(np.unique(read_image(output).array)) <= {0, 1, 3}


def test_bench_records_the_openvino_runtime(capsys, home, tmp_path, small_checkpoint):
    markdown, records = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    code = bench_main(["--reference", "--phantom", "60x50x40@3", "--labels", "liver,spleen",
                 "--weights", str(small_checkpoint), "--device", "cpu", "--precisions", "fp32",
                 "--runtime", "openvino", "--output", str(markdown), "--json", str(records)])
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads(records.read_text(encoding="utf-8"))
    assert result["runtime"] == "openvino" and result["runtime_preparation_seconds"] > 0
    assert result["agreement"] >= 0.99
    text = markdown.read_text(encoding="utf-8")
    assert "fp32: ours (openvino), end to end" in text and "ours with the openvino runtime" in text


def test_openvino_runs_on_the_cpu_only():
    with pytest.raises(VISTA3DError, match="--runtime torch"):
        check_runtime("openvino", torch.device("cuda"))
    with pytest.raises(VISTA3DError, match="Unknown runtime 'tensorrt'"):
        check_runtime("tensorrt", torch.device("cpu"))


def test_a_missing_openvino_says_how_to_install_it(small_network, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(VISTA3DError, match="pip install openvino"):
        Engine(small_network, runtime="openvino")


def test_openvino_needs_the_class_head():
    class ForwardOnly(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("not called")

    with pytest.raises(VISTA3DError, match="class head"):
        Engine(ForwardOnly(), runtime="openvino")


def test_fp16_is_refused_with_openvino(small_network):
    with pytest.raises(VISTA3DError, match="fp16 is a GPU precision"):
        Engine(small_network, precision="fp16", runtime="openvino")
