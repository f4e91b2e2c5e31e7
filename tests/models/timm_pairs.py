"""timm models with random weights, and our variables holding the same weights.

``timm_random(name)`` builds ``timm.create_model(name)`` on the meta device (no init cost) and
fills every tensor from a seeded generator: conv/linear weights N(0, 1/fan_in), norm weights
U(0.5, 1), biases and running means N(0, 0.1^2), running variances U(0.5, 1.5). timm's own
init zeroes the last BN of each block and GC's fc2, which would hide those layers from a
parity test; these values exercise every layer and keep the logits O(1) through 100 layers.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.timm_oracle import create


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 values for every tensor of ``model.state_dict()`` (shapes only read)."""
    rng = np.random.default_rng(seed)

    # Drawn in float32 directly (a float64 draw cast down costs ~4 s for a ResNet-101).
    def normal(shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def uniform(lo, hi, shape):
        return np.float32(lo) + np.float32(hi - lo) * rng.random(shape, dtype=np.float32)

    out = {}
    for k, v in model.state_dict().items():
        shape = tuple(v.shape)
        if not v.is_floating_point():
            out[k] = np.zeros(shape, np.int64)
        elif k.endswith("running_var"):
            out[k] = uniform(0.5, 1.5, shape)
        elif k.endswith("running_mean") or (len(shape) == 1 and k.endswith("bias")):
            out[k] = np.float32(0.1) * normal(shape)
        elif len(shape) == 1:
            out[k] = uniform(0.5, 1.0, shape)
        else:
            out[k] = normal(shape) / np.float32(np.sqrt(np.prod(shape[1:])))
    return out


def _byobnet_with_depths(name: str, layers):
    """timm's ``ByobNet`` of ``name`` with ``layers[s]`` blocks in stage s (its own class and
    config, only the depths changed: timm's ``create_model`` takes no depth for these)."""
    import dataclasses

    from timm.models import byobnet

    cfg = byobnet.model_cfgs[name]
    blocks = tuple(dataclasses.replace(b, d=d) for b, d in zip(cfg.blocks, layers, strict=True))
    return byobnet.ByobNet(dataclasses.replace(cfg, blocks=blocks))


def timm_random(name: str, seed: int = 0, layers=None) -> tuple[torch.nn.Module, dict]:
    """``(model, state_dict)``: timm's ``name`` (with ``layers`` blocks per stage if given) in
    eval mode holding ``state_dict`` (numpy)."""
    with torch.device("meta"):
        if layers is not None and name == "gcresnet50t":
            create("resnet18")  # imports timm through the stand-ins
            model = _byobnet_with_depths(name, layers)
        elif layers is not None:
            model = create(name, layers=list(layers))
        else:
            model = create(name)
    model = model.to_empty(device="cpu")
    sd = random_state_dict(model, seed)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
    return model.eval(), sd
