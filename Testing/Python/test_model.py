"""Loading checkpoints in every format the bundle and users have, and refusing the wrong ones."""

from __future__ import annotations

import errno
import os
import re
from typing import Callable

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
    assert spec_from_state_dict(small_network.state_dict()) == ModelSpec(8, (1, 1, 1, 1, 1))
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


CONV_INIT = "image_encoder.encoder.conv_init.weight"
BLOCK = "image_encoder.encoder.layers.{level}.blocks.{index}.conv1.weight"
HEAD = "class_head.mlp.0.weight"


def _replace(name: str, tensor: torch.Tensor) -> Callable[[dict], dict]:
    return lambda state: {**state, name: tensor}


def _convert(convert: Callable[[torch.Tensor], torch.Tensor], only: str | None = None) -> Callable[[dict], dict]:
    return lambda state: {k: convert(v) if only in (None, k) else v for k, v in state.items()}


def _with_filters(filters: int) -> Callable[[dict], dict]:
    """A state dict whose encoder sizing tensors (conv_init and the blocks' conv1) have ``filters`` filters."""
    pattern = re.compile(r"image_encoder\.encoder\.layers\.(\d+)\.blocks\.\d+\.conv1\.weight$")

    def resize(state: dict) -> dict:
        resized = {**state, CONV_INIT: torch.zeros(filters, 1, 3, 3, 3)}
        for name in state:
            if match := pattern.match(name):
                width = filters * 2 ** int(match.group(1))
                resized[name] = torch.zeros(width, width, 3, 3, 3)
        return resized

    return resize


#: Damaged or foreign state dicts: (how to make it from a good one, what the message says).
BAD_STATE_DICTS = {
    "scalar conv_init": (_replace(CONV_INIT, torch.tensor(1.0)), r"conv_init.weight has shape \(\)"),
    "2-D conv_init": (_replace(CONV_INIT, torch.zeros(16, 1)), r"conv_init.weight has shape \(16, 1\)"),
    "conv_init without filters": (_replace(CONV_INIT, torch.zeros(0, 1, 3, 3, 3)), r"shape \(0, 1, 3, 3, 3\)"),
    "filters MONAI cannot build": (_with_filters(12), "no VISTA3D network has 12 filters"),
    "conv_init of another width than the blocks": (_replace(CONV_INIT, torch.zeros(12, 1, 3, 3, 3)),
                                                   r"layers\.0\.blocks\.0\.conv1\.weight is torch\.float32 of "
                                                   r"shape \(8, 8, 3, 3, 3\), not a dense tensor of shape \(12, 12"),
    "a block far beyond the others": (_replace(BLOCK.format(level=1, index=99999), torch.zeros(32, 32, 3, 3, 3)),
                                      r"encoder level 1 lacks blocks \[1, 2, 3\] \.\.\."),
    "a level far beyond the others": (_replace(BLOCK.format(level=40, index=0), torch.zeros(1)),
                                      r"its encoder levels are \[0, 1, 2, 3, 4, 40\]"),
    "a huge network declared by shapes without data": (
        _convert(lambda t: torch.empty(t.shape[0] * 4096, *t.shape[1:], device="meta"), CONV_INIT),
        r"conv_init\.weight is meta \(no data\), not a dense tensor with data"),
    "no encoder blocks": (lambda state: {k: v for k, v in state.items() if ".encoder.layers." not in k},
                          r"no image_encoder\.encoder\.layers\.\*\.blocks"),
    "int64 tensors": (_convert(lambda t: t.long()), r"\d+ not dense floating-point tensors \[\S+: torch\.int64"),
    "one complex tensor": (_convert(lambda t: t.to(torch.complex64), CONV_INIT),
                           rf"1 not dense floating-point tensors \[{CONV_INIT}: torch\.complex64\]"),
    "one sparse tensor": (_convert(torch.Tensor.to_sparse, HEAD), r"1 not dense .*torch\.sparse_coo"),
    "one tensor without data": (_convert(lambda t: t.to("meta"), HEAD), r"1 not dense .*meta \(no data\)"),
    "a sparse encoder block": (_convert(torch.Tensor.to_sparse, BLOCK.format(level=0, index=0)),
                               r"blocks\.0\.conv1\.weight is torch\.sparse_coo of shape \(8, 8, 3, 3, 3\)"),
    "a name that is no string": (lambda state: {**state, 7: torch.zeros(1)}, "not all tensors with names"),
}


@pytest.mark.parametrize("damage, reason", BAD_STATE_DICTS.values(), ids=BAD_STATE_DICTS.keys())
def test_bad_tensors_are_refused_with_the_reason(tmp_path, small_network, damage, reason):
    path = tmp_path / "bad.pt"
    torch.save(damage(small_network.state_dict()), path)
    with pytest.raises(VISTA3DError, match=rf"^{re.escape(str(path))} is not a VISTA3D checkpoint \(.*{reason}"):
        load_network(path)


@pytest.mark.parametrize(
    "content, reason",
    [([torch.zeros(3)], "it holds a list"), ("weights", "it holds a str"), (None, "it holds a NoneType"),
     ({"epoch": 3, "lr": 0.1}, "its entries are not all tensors"), ({"model": ["conv"]}, "its entries are not all")],
    ids=["list", "string", "None", "dict of numbers", "bundle of a list"],
)
def test_a_pickle_of_something_else_is_refused(tmp_path, content, reason):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(VISTA3DError, match=f"not a VISTA3D checkpoint \\({reason}"):
        load_network(path)


def test_half_precision_checkpoint_loads_as_float32(tmp_path, small_network):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in small_network.state_dict().items()}, path)
    loaded = load_network(path).state_dict()
    assert all(loaded[k].dtype == torch.float32 for k in loaded)
    assert all(torch.equal(loaded[k], v.half().float()) for k, v in small_network.state_dict().items())


def test_unreadable_checkpoint_names_the_fix(tmp_path, small_checkpoint, monkeypatch):
    def denied(path, **kwargs):  # as for a file of another user (the tests may run as root: no chmod)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(VISTA3DError, match=f"Cannot read the weights file .*{os.strerror(errno.EACCES)}.*permissions"):
        read_state_dict(small_checkpoint)


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
