"""Offline stand-ins: tiny random-weight models and fixture data for the tests, the offline demo and `bench/`.

Each builder writes what the real loading code reads (a hub-layout folder or a weights file), so the product
loads a stand-in exactly as it loads the real model. Nothing here is a usable model.

- `tiny_qwen`: Qwen2.5-VL (annotation engines, the benchmark judge)
- `tiny_sdxl`: SDXL (SDXL-SG training and generation)
- `tiny_clip`: open_clip (CLIP-T, CLIP-I, CMMD)
- `tiny_inception`: FID-Inception weights in pytorch-fid's format (FID, KID)
- `tiny_owlv2`: OWLv2 open-vocabulary detector (the spatial track's VISOR detections)
- `tiny_clipseg`: CLIPSeg text-prompted segmenter (compositing's concept masks)
- `fixtures`: a small LAION-SG-shaped dataset of scikit-image photos with hand-written scene graphs
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_tiny_models"]


def make_tiny_models(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every tiny random-weight stand-in model under `root`; returns the path of each."""
    from laion_sg.offline.tiny_clip import build_tiny_open_clip
    from laion_sg.offline.tiny_clipseg import build_tiny_clipseg
    from laion_sg.offline.tiny_inception import build_random_inception
    from laion_sg.offline.tiny_owlv2 import build_tiny_owlv2
    from laion_sg.offline.tiny_qwen import build_tiny_qwen2_5_vl
    from laion_sg.offline.tiny_sdxl import build_tiny_sdxl

    root = Path(root)
    return {
        "qwen2_5_vl": build_tiny_qwen2_5_vl(root / "qwen2_5_vl", seed=seed),
        "sdxl": build_tiny_sdxl(root / "sdxl", seed=seed),
        "open_clip": build_tiny_open_clip(root / "open_clip", seed=seed),
        # a weights file in pytorch-fid's format, like the real pt_inception-2015-12-05-6726825d.pth
        "inception": build_random_inception(root / "inception" / "pt_inception-random.pth", seed=seed),
        "owlv2": build_tiny_owlv2(root / "owlv2", seed=seed),
        "clipseg": build_tiny_clipseg(root / "clipseg", seed=seed),
    }
