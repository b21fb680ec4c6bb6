"""Shared fixtures: the example data beside the checkout, and seeded random checkpoints.

The real VISTA3D weights cannot be downloaded in CI, so tests use checkpoints with random
weights, seeded, saved exactly as the bundle's ``model.pt`` is (a bare ``state_dict``).
Most tests use a small network of the same design; the ones marked ``slow`` use the
full-size ``vista3d132``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# Tests run from a checkout without installing the package, as well as after `pip install -e .`;
# the benchmarks and the bundle's reference pipeline (the tests' oracle) live outside the package.
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "VISTA3DSlicer"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

EXAMPLE_DIR = REPO.parent / "shared" / "data" / "totalsegmentator-example"


def pretend_not_installed(monkeypatch, distribution: str) -> None:
    """Make ``dependencies`` see ``distribution`` as not installed (an optional extra left out)."""
    from VISTA3DSlicerLib import dependencies

    metadata = dependencies.importlib.metadata
    real_version = metadata.version

    def version(name: str) -> str:
        if name == distribution:
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)


def example_file(name: str) -> Path:
    """A file of the shared example data; the test is skipped when the data are not beside the checkout."""
    path = EXAMPLE_DIR / name
    if not path.exists():
        pytest.skip(f"example data not available ({path})")
    return path


@pytest.fixture(scope="session")
def example_ct() -> Path:
    """TotalSegmentator's small example CT: 122 x 101 x 30 voxels of 3 mm."""
    return example_file("example_ct_sm.nii.gz")


@pytest.fixture(scope="session")
def example_mr() -> Path:
    """TotalSegmentator's small example MR: 117 x 91 x 20 voxels of 3 mm."""
    return example_file("example_mr_sm.nii.gz")


@pytest.fixture(scope="session")
def example_ct_crop(tmp_path_factory, example_ct) -> Path:
    """A crop of the example CT (abdomen, 70 x 64 x 30 voxels): two windows along one axis at 1.5 mm."""
    import nibabel as nib

    image = nib.load(example_ct)
    crop = image.slicer[26:96, 20:84, :]
    path = tmp_path_factory.mktemp("data") / "example_ct_crop.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(crop.dataobj).astype(np.int16), crop.affine), path)
    return path


@pytest.fixture(scope="session")
def small_network():
    """A seeded VISTA3D of the real design but 8 filters and one block per level (fast on a CPU)."""
    import torch

    from VISTA3DSlicerLib.model import ModelSpec, build_network

    torch.manual_seed(0)
    return build_network(ModelSpec(embed_dim=8, blocks_down=(1, 1, 1, 1, 1))).eval()


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, small_network) -> Path:
    import torch

    path = tmp_path_factory.mktemp("weights") / "small_model.pt"
    torch.save(small_network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def real_checkpoint(tmp_path_factory) -> Path:
    """A seeded random ``vista3d132`` saved as the bundle's model.pt (872 MB, in a temporary folder)."""
    import torch

    from VISTA3DSlicerLib.model import build_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(build_network().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_sam():
    """SAM's architecture, shrunk and seeded: a one-block ViT of 16 channels, a 64-channel neck
    (so 8 feature channels, not 32). SAM's real weights cannot be downloaded here, and ViT-B takes
    10-20 s a slice on this CPU."""
    from functools import partial

    import torch

    from VISTA3DSlicerLib.supervoxels import sam_model_registry

    sam_model_registry()  # makes segment_anything.modeling importable without torchvision
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    neck = 64
    encoder = ImageEncoderViT(
        img_size=1024, patch_size=16, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, out_chans=neck,
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14,
        global_attn_indexes=(),
    )
    decoder = MaskDecoder(
        transformer_dim=neck, transformer=TwoWayTransformer(depth=1, embedding_dim=neck, mlp_dim=32, num_heads=2),
        num_multimask_outputs=3, iou_head_depth=1, iou_head_hidden_dim=16,
    )
    prompt = PromptEncoder(embed_dim=neck, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=4)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


# ------------------------------------------------------------------ real Slicer code (slicer-core)


@pytest.fixture(scope="session")
def terminology_share_dir(tmp_path_factory) -> Optional[Path]:
    """Slicer's default terminology contexts under the names its Terminologies logic loads."""
    from headless_slicer import terminology_share_dir

    return terminology_share_dir(tmp_path_factory.mktemp("terminologies"))


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sample_data")


@pytest.fixture
def slicer_app(terminology_share_dir, sample_data_dir):
    """A fresh headless Slicer (real MRML from slicer-core) installed as ``slicer.app``,
    ``slicer.mrmlScene`` and ``slicer.modules``; skipped where slicer-core cannot be installed."""
    from headless_slicer import HeadlessSlicer, installed, slicer_core_missing

    reason = slicer_core_missing()
    if reason:
        pytest.skip(reason)
    application = HeadlessSlicer(terminology_share_dir)
    with installed(application, sample_data_dir):
        yield application


@pytest.fixture
def vista3d_module(slicer_app, monkeypatch):
    """``VISTA3DSlicer.py`` imported afresh on the headless Slicer (its own worker thread, stopped after)."""
    monkeypatch.delitem(sys.modules, "VISTA3DSlicer", raising=False)
    import VISTA3DSlicer

    yield VISTA3DSlicer
    worker = VISTA3DSlicer.VISTA3DSlicerLogic._worker
    if worker is not None:
        assert worker.shutdown(timeout=60), "the worker thread did not stop"


class RunningServer:
    """A ``vista3d serve`` application under uvicorn on 127.0.0.1 (a free port), in a thread of the tests."""

    def __init__(self, app):
        import threading
        import time

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
