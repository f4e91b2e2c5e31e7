"""PyTorch references for spatial transformer networks (Jaderberg et al., NeurIPS 2015).

Grids use ``F.affine_grid`` (affine, similarity, translation), a homography applied to
``F.affine_grid``'s identity grid (perspective) and a float64 thin-plate-spline solve (tps);
sampling is ``F.grid_sample``. Submodule names match the JAX parameter names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as tF
from torch import nn

TRANSFORM_PARAMS = {"affine": 6, "similarity": 4, "translation": 2, "perspective": 8}


class LocalisationNet(nn.Module):
    def __init__(self, channels: int, out_features: int, *, features=(8, 16), hidden: int = 32,
                 pool_size=(4, 4)):
        super().__init__()
        self.pool_size = pool_size
        cells = 1 if pool_size is None else pool_size[0] * pool_size[1]
        self.conv1 = nn.Conv2d(channels, features[0], 3, padding=1)
        self.conv2 = nn.Conv2d(features[0], features[1], 3, padding=1)
        self.fc1 = nn.Linear(features[1] * cells, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = tF.max_pool2d(torch.relu(self.conv1(x)), 2, ceil_mode=True)
        h = tF.max_pool2d(torch.relu(self.conv2(h)), 2, ceil_mode=True)
        if self.pool_size is None:
            h = h.mean((2, 3))
        else:  # flattened in (h, w, c) order, as the NHWC JAX side
            h = tF.adaptive_avg_pool2d(h, self.pool_size).permute(0, 2, 3, 1).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def tps_base_points(gh: int, gw: int) -> torch.Tensor:
    ys = torch.linspace(-1, 1, gh, dtype=torch.float64)
    xs = torch.linspace(-1, 1, gw, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)


def _u(d2: torch.Tensor) -> torch.Tensor:
    return torch.where(d2 > 0, d2 * torch.log(torch.where(d2 > 0, d2, torch.ones_like(d2))),
                       torch.zeros_like(d2))


def tps_grid(cp: torch.Tensor, base: torch.Tensor, h: int, w: int, align_corners: bool):
    """Bookstein's thin-plate spline from ``base`` (output) to ``cp`` (N, K, 2) (input)."""
    k = base.shape[0]
    big = torch.zeros(k + 3, k + 3, dtype=torch.float64)
    big[:k, :k] = _u(((base[:, None] - base[None]) ** 2).sum(-1))
    p = torch.cat([torch.ones(k, 1, dtype=torch.float64), base], 1)
    big[:k, k:] = p
    big[k:, :k] = p.T
    ident = torch.eye(2, 3, dtype=torch.float32)[None]
    q = tF.affine_grid(ident, (1, 1, h, w), align_corners=align_corners).reshape(-1, 2).double()
    qa = torch.cat([_u(((q[:, None] - base[None]) ** 2).sum(-1)),
                    torch.ones(q.shape[0], 1, dtype=torch.float64), q], 1)
    m = (qa @ torch.linalg.inv(big)[:, :k]).float()
    return torch.einsum("pk,nkd->npd", m, cp).reshape(cp.shape[0], h, w, 2)


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, *, transform: str = "affine", out_size=None,
                 mode: str = "bilinear", padding_mode: str = "zeros", align_corners=False,
                 tps_grid_size=(3, 3), features=(8, 16), hidden: int = 32, pool_size=(4, 4)):
        super().__init__()
        self.transform, self.out_size, self.mode = transform, out_size, mode
        self.padding_mode, self.align_corners = padding_mode, align_corners
        self.tps_grid_size = tps_grid_size
        if transform == "tps":
            p = 2 * tps_grid_size[0] * tps_grid_size[1]
        else:
            p = TRANSFORM_PARAMS[transform]
        self.loc = LocalisationNet(channels, p, features=features, hidden=hidden,
                                   pool_size=pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ho, wo = self.out_size or (h, w)
        p = self.loc(x)
        ac = self.align_corners
        if self.transform == "tps":
            base = tps_base_points(*self.tps_grid_size)
            grid = tps_grid(p.reshape(n, -1, 2), base, ho, wo, ac)
        elif self.transform == "perspective":
            m = torch.cat([p, torch.ones(n, 1)], 1).reshape(n, 3, 3)
            ident = torch.eye(2, 3)[None]
            b = tF.affine_grid(ident, (1, 1, ho, wo), align_corners=ac)[0]
            bx, by = b[..., 0], b[..., 1]
            uvw = [bx * m[:, r, 0, None, None] + by * m[:, r, 1, None, None]
                   + m[:, r, 2, None, None] for r in range(3)]
            d = uvw[2]
            d = torch.where(d.abs() < 1e-6, torch.where(d < 0, -1e-6, 1e-6), d)
            grid = torch.stack([uvw[0] / d, uvw[1] / d], -1)
        else:
            if self.transform == "affine":
                theta = p.reshape(n, 2, 3)
            elif self.transform == "similarity":
                s, a, tx, ty = p.unbind(1)
                c_, s_ = s * torch.cos(a), s * torch.sin(a)
                theta = torch.stack([c_, -s_, tx, s_, c_, ty], 1).reshape(n, 2, 3)
            else:
                one, zero = torch.ones(n), torch.zeros(n)
                theta = torch.stack([one, zero, p[:, 0], zero, one, p[:, 1]], 1).reshape(n, 2, 3)
            grid = tF.affine_grid(theta, (n, c, ho, wo), align_corners=ac)
        return tF.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding_mode,
                              align_corners=ac)


