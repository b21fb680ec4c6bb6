"""Loading checkpoints in every format the bundle and users have, and refusing the wrong ones."""

from __future__ import annotations

import pytest
import torch

from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.model import (
    VISTA3D132,
    ModelSpec,
    autocast,
    build_network,
    load_network,
    read_state_dict,
    resolve_device,
    spec_from_state_dict,
)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_spec_is_read_from_the_checkpoint(small_network):
    assert spec_from_state_dict(small_network.state_dict()) == ModelSpec(16, (1, 1, 1, 1, 1))
    assert spec_from_state_dict(build_network().state_dict()) == VISTA3D132


@pytest.mark.parametrize("layout", ["bare", "bundle", "safetensors"])
def test_loads_bare_bundle_and_safetensors(tmp_path, small_network, layout):
    state = small_network.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "model.pt"
        torch.save(state if layout == "bare" else {"model": state}, path)
    assert_same_weights(load_network(path), small_network)


def test_wrong_architecture_is_refused_with_the_reason(tmp_path, small_network):
    state = small_network.state_dict()
    state["point_head.output_add_hypernetworks_mlps.0.weight"] = torch.zeros(3)  # the research layout's extra
    del state["class_head.mlp.0.weight"]
    path = tmp_path / "research.pt"
    torch.save(state, path)
    with pytest.raises(VISTA3DError, match="1 missing.*1 unexpected"):
        load_network(path)


def test_not_a_vista3d_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(VISTA3DError, match="not a VISTA3D checkpoint"):
        load_network(path)


def test_truncated_checkpoint(tmp_path, small_checkpoint):
    data = small_checkpoint.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VISTA3DError, match="truncated"):
        read_state_dict(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(VISTA3DError, match="nowhere.pt"):
        read_state_dict(tmp_path / "nowhere.pt")


def test_devices_and_precisions():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(VISTA3DError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(VISTA3DError, match="--device cpu"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    with pytest.raises(VISTA3DError, match="bf16"):
        autocast(cpu, "fp16")
    with pytest.raises(VISTA3DError, match="Unknown precision"):
        autocast(cpu, "int8")
    with autocast(cpu, "bf16"):
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_describe_device_names_the_cpu_and_refuses_a_missing_gpu_without_raising(monkeypatch):
    import torch

    from VISTA3DSlicerLib.model import describe_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert describe_device("cpu").startswith("CPU: minutes per volume")
    assert describe_device("auto").startswith("No GPU found: CPU")
    assert "no CUDA GPU" in describe_device("cuda")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (21.3 * 2**30, 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA RTX 4090")
    assert describe_device("auto") == "NVIDIA RTX 4090, 21.3 of 24.0 GB free"
