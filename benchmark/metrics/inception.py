"""Inception-v3 pool3 features (2048-d) of the TF 2015-12-05 graph, as used by FID and KID.

The network is torchvision's Inception-v3 with the three patches that make it match the TensorFlow graph (as in
pytorch-fid and torch-fidelity): average pools in the A/C/E blocks ignore the zero padding, the last E block
pools with a max instead of an average, and the classifier has 1008 classes. The state-dict layout is that of
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the same tensors torch-fidelity ships), loaded with
`torch.load(weights_only=True)`. Pixels are normalised as in the graph, (x − 128) / 128.

Images are resized to 299×299 the "clean" way (clean-fid): each channel as a float32 PIL image, bicubic,
clipped to [0, 255], never quantised back to uint8.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from benchmark.provenance import weights_sha256

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXTRACTOR_NAME",
    "FEATURE_DIM",
    "FID_WEIGHTS_URL",
    "ImageBatch",
    "RESIZE_MODE",
    "InceptionFeatureExtractor",
    "clean_resize",
    "fid_inception_class",
    "inception_provenance",
    "load_inception",
    "resolve_inception_weights",
    "to_uint8_arrays",
]

EXTRACTOR_NAME = "inception-v3-tf-2015-12-05/pool3"
RESIZE_MODE = "clean: PIL bicubic per float32 channel to 299x299, clip [0,255], no quantisation"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "LAION_SG_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
FEATURE_DIM = 2048

ImageBatch = Sequence[Image.Image] | Sequence[np.ndarray] | np.ndarray


@functools.cache
def fid_inception_class() -> type:
    """Build the network classes lazily so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torchvision.models import inception as tv

    def avg_pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class InceptionA(tv.InceptionA):
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(avg_pool(x))]

    class InceptionC(tv.InceptionC):
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            b7d = self.branch7x7dbl_1(x)
            for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                b7d = conv(b7d)
            return [self.branch1x1(x), b7, b7d, self.branch_pool(avg_pool(x))]

    class InceptionE(tv.InceptionE):
        """`use_max_pool`: the last block of the TF graph max-pools its pooling branch."""

        use_max_pool = False

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.use_max_pool else avg_pool(x)
            return [self.branch1x1(x), b3, b3d, self.branch_pool(pooled)]

    class FIDInceptionV3(tv.Inception3):
        """Input: float N×3×299×299 in [0, 255]; output: N×2048 pool3 features."""

        def __init__(self) -> None:
            blocks = [
                tv.BasicConv2d,
                InceptionA,
                tv.InceptionB,
                InceptionC,
                tv.InceptionD,
                InceptionE,
                tv.InceptionAux,
            ]
            super().__init__(num_classes=1008, aux_logits=False, init_weights=False, inception_blocks=blocks)
            self.Mixed_7c.use_max_pool = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            x = (x - 128.0) / 128.0
            for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1,
                          self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2,
                          self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                          self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
                          self.avgpool):  # fmt: skip
                x = layer(x)
            return torch.flatten(x, 1)

    return FIDInceptionV3


def resolve_inception_weights(weights_path: str | Path | None = None, allow_download: bool = False) -> Path:
    """The weights file: `weights_path`, else $LAION_SG_INCEPTION_WEIGHTS, else torch hub's checkpoint cache.

    Downloads pytorch-fid's release file into the cache only when `allow_download` is true; never substitutes
    another network.
    """
    import torch

    if weights_path is not None or os.environ.get(WEIGHTS_ENV):
        path = Path(weights_path if weights_path is not None else os.environ[WEIGHTS_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_URL.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached
    if not allow_download:
        raise FileNotFoundError(
            f"FID Inception weights not found at {cached}. Pass weights_path, set ${WEIGHTS_ENV}, "
            f"or allow downloading {FID_WEIGHTS_URL}."
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(cached))
    return cached


def inception_provenance(weights_path: str | Path | None = None, allow_download: bool = False) -> dict[str, Any]:
    """What must accompany any FID or KID: the network, its weights file and their sha256, the resize."""
    path = resolve_inception_weights(weights_path, allow_download)
    return {
        "extractor": EXTRACTOR_NAME,
        "weights_path": str(path),
        "weights_sha256": weights_sha256(path),
        "resize": RESIZE_MODE,
    }


def load_inception(path: str | Path) -> torch.nn.Module:
    """The FID Inception network with the state dict in `path` (strict), in eval mode, gradients off."""
    import torch

    model = fid_inception_class()()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def to_uint8_arrays(images: ImageBatch) -> list[np.ndarray]:
    """PIL images or uint8 H×W×3 arrays (or an N×H×W×3 array) → list of uint8 H×W×3 arrays."""
    arrays = [
        np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else np.asarray(im) for im in images
    ]
    for array in arrays:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected uint8 HxWx3 images, got {array.dtype} {array.shape}")
    return arrays


def clean_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's resize: bicubic on each channel as a float32 PIL image, clipped; returns float32 H×W×3."""
    channels = []
    for c in range(3):
        channel = Image.fromarray(image[:, :, c].astype(np.float32))
        channels.append(np.asarray(channel.resize((size, size), resample=Image.Resampling.BICUBIC)))
    return np.clip(np.stack(channels, axis=2), 0.0, 255.0)


class InceptionFeatureExtractor:
    """Images → float32 N×2048 Inception pool3 features, with the provenance that must accompany any FID."""

    def __init__(
        self,
        weights_path: str | Path | None = None,
        *,
        allow_download: bool = False,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        import torch

        self.provenance = inception_provenance(weights_path, allow_download)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_inception(self.provenance["weights_path"]).to(self.device)
        self.batch_size = batch_size

    def __call__(self, images: ImageBatch) -> np.ndarray:
        """N×2048 float32 features; images are resized in a thread pool, one batch at a time."""
        import torch

        arrays = to_uint8_arrays(images)
        out = [np.zeros((0, FEATURE_DIM), dtype=np.float32)]
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            for start in range(0, len(arrays), self.batch_size):
                batch = np.stack(list(pool.map(clean_resize, arrays[start : start + self.batch_size])))
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
                with torch.inference_mode():
                    out.append(self.model(pixels).float().cpu().numpy())
        return np.concatenate(out)
