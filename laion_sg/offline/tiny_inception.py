"""Random FID-Inception weights for tests and the offline demo, in pytorch-fid's release-file format."""

from __future__ import annotations

from pathlib import Path

from benchmark.metrics.inception import fid_inception_class


def build_random_inception(out_path: str | Path, seed: int = 0) -> Path:
    """Write random FID-Inception weights in the release file's format (a plain state dict `.pth`, ~95 MB).

    Convolutions use He-normal initialisation so activations keep their scale through the 94 layers; batch
    norm keeps its identity statistics. For tests and the offline demo only: the features mean nothing.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    model = fid_inception_class()()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
                module.bias.zero_()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_path)
    return out_path
