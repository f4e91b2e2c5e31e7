"""Pictures of attention: maps over images, channel weights, spatial-transformer grids, one
query pixel's self-attention, learning curves.

Every function takes arrays (numpy or JAX; a leading batch axis of one is dropped where a
single image is meant) and draws with matplotlib, which is imported only when a function is
called (matplotlib is a dependency of this module only). Each returns the matplotlib ``Axes`` or
``Figure`` it drew on, so callers can save or adjust it; pass ``ax=`` to draw into an existing
figure. Images are (H, W), (H, W, 1) or (H, W, 3); pixel (row, col) is centred at (col, row)
in the axes' data coordinates, as ``imshow`` puts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attention_jax._extras import require
from attention_jax._validation import fail

__all__ = [
    "show_image",
    "overlay",
    "channel_weights",
    "stn_grid",
    "sampling_outline",
    "query_attention",
    "learning_curves",
]


def _pyplot():
    return require("matplotlib.pyplot", "bench", "attention_jax.viz")


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots(figsize=figsize)
    return ax


def _image(fn: str, arg: str, image: Any) -> np.ndarray:
    """(H, W) or (H, W, 3) float array from (H, W), (H, W, 1), (H, W, 3) or (1, H, W, C)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3) or min(a.shape[:2]) < 1:
        raise fail(fn, arg, "an image (H, W), (H, W, 1) or (H, W, 3)", f"shape {a.shape}")
    return a


def _map2d(fn: str, arg: str, attention: Any) -> np.ndarray:
    """(h, w) from (h, w), (h, w, 1) or (1, h, w, 1)."""
    a = np.asarray(attention, dtype=np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 or min(a.shape) < 1:
        raise fail(fn, arg, "a map (h, w) (or (h, w, 1), (1, h, w, 1))", f"shape {a.shape}")
    return a


def _extent(image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return (-0.5, w - 0.5, h - 0.5, -0.5)


def show_image(image: Any, *, ax: Any = None, title: str | None = None,
               vmin: float | None = 0.0, vmax: float | None = 1.0) -> Any:
    """Draw one image, without ticks.

    Args:
      image: (H, W), (H, W, 1) or (H, W, 3) (a leading batch of one is dropped).
      ax: axes to draw on (default: a new figure).
      title: axes title.
      vmin, vmax: grey-level range of one-channel images (default [0, 1]; None: the data's).

    Returns:
      The ``Axes``.
    """
    img = _image("show_image", "image", image)
    ax = _axes(ax, (3, 3))
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=_extent(img),
                  interpolation="nearest")
    else:
        ax.imshow(np.clip(img, 0.0, 1.0), extent=_extent(img), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def overlay(image: Any, attention: Any, *, ax: Any = None, alpha: float = 0.5,
            cmap: str = "jet", title: str | None = None, colorbar: bool = False,
            vmin: float | None = None, vmax: float | None = None) -> Any:
    """An image with a spatial attention map drawn over it, stretched to the image's extent.

    The map may be coarser than the image (a feature map's resolution): each of its (h, w)
    cells covers an (H / h, W / w) block of pixels, as the map's own pixels would.

    Args:
      image: (H, W), (H, W, 1) or (H, W, 3) (a leading batch of one is dropped).
      attention: (h, w) map (or (h, w, 1), (1, h, w, 1)), any resolution.
      ax: axes to draw on (default: a new figure).
      alpha: opacity of the map (0..1).
      cmap: colormap of the map.
      title: axes title.
      colorbar: add a colour bar for the map.
      vmin, vmax: the map's colour range (default: its own min and max).

    Returns:
      The ``Axes``; ``ax.images[0]`` is the image, ``ax.images[1]`` the map.
    """
    if not 0.0 <= alpha <= 1.0:
        raise fail("overlay", "alpha", "in [0, 1]", repr(alpha))
    img = _image("overlay", "image", image)
    amap = _map2d("overlay", "attention", attention)
    ax = show_image(img, ax=ax, title=title, vmin=None, vmax=None)
    shown = ax.imshow(amap, cmap=cmap, alpha=alpha, extent=_extent(img), vmin=vmin,
                      vmax=vmax, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, shrink=0.8)
    return ax


def channel_weights(weights: Any, *, ax: Any = None, title: str | None = None,
                    sort: bool = False, ylim: tuple[float, float] | None = (0.0, 1.0)) -> Any:
    """Channel attention weights as bars, one per channel (e.g. SE/ECA/CBAM gates).

    Args:
      weights: (C,), or anything that squeezes to it ((1, 1, 1, C), (1, C), ...).
      ax: axes to draw on (default: a new figure).
      title: axes title.
      sort: draw the bars in decreasing order (the x axis is then the rank).
      ylim: the y range (default (0, 1), a sigmoid gate's; None: automatic).

    Returns:
      The ``Axes``; its bars are ``ax.patches``.
    """
    w = np.squeeze(np.asarray(weights, dtype=np.float64))
    if w.ndim != 1 or w.size < 1:
        raise fail("channel_weights", "weights", "one weight per channel (C,)",
                   f"shape {np.shape(weights)}")
    ax = _axes(ax, (6, 2.5))
    shown = np.sort(w)[::-1] if sort else w
    ax.bar(np.arange(w.size), shown, width=0.8, color="tab:blue")
    ax.set_xlabel("channel (by weight)" if sort else "channel")
    ax.set_ylabel("weight")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    return ax


def sampling_outline(grid: Any, image_size: Sequence[int]) -> np.ndarray:
    """Where a sampling grid reads its input: the border of the output, in input pixels.

    Args:
      grid: (Ho, Wo, 2) normalised (x, y) sampling grid (``align_corners=False``), e.g. the
        ``"grid"`` a spatial transformer returns with ``return_transform=True`` (a leading
        batch of one is dropped).
      image_size: (H, W) of the input it samples.

    Returns:
      (P, 2) array of (x, y) = (col, row) pixel coordinates tracing the outer sample points
      clockwise from the top-left and back to it (P = 2 (Ho + Wo) - 3).
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim == 4 and g.shape[0] == 1:
        g = g[0]
    if g.ndim != 3 or g.shape[-1] != 2 or min(g.shape[:2]) < 2:
        raise fail("sampling_outline", "grid", "a grid (Ho, Wo, 2) with Ho, Wo >= 2",
                   f"shape {np.shape(grid)}")
    h, w = (int(v) for v in image_size)
    border = np.concatenate([g[0, :], g[1:, -1], g[-1, -2::-1], g[-2::-1, 0]])
    # Normalised -> pixel coordinates (align_corners=False: -1 and 1 are the outer edges).
    return np.stack([(border[:, 0] + 1) * w / 2 - 0.5, (border[:, 1] + 1) * h / 2 - 0.5], -1)


def stn_grid(inputs: Any, outputs: Any, *, grids: Any = None, labels: Sequence[Any] | None = None,
             n: int | None = None, axes: Any = None, row_titles: Sequence[str] = (
                 "input", "transformer output")) -> Any:
    """Spatial transformer inputs above their outputs, as in the paper's figures.

    Args:
      inputs: (N, H, W[, C]) images the transformer received.
      outputs: (N, Ho, Wo[, C]) what it made of them.
      grids: optional (N, Ho, Wo, 2) sampling grids: the region each one read is outlined on
        its input (``sampling_outline``).
      labels: optional per-image labels, shown above the inputs.
      n: how many to show (default: all N).
      axes: a (2, n) array of axes to draw on (default: a new figure).
      row_titles: the two rows' titles (drawn on the first column).

    Returns:
      The ``Figure``; the images are ``axes[0, i].images[0]`` (input) and ``axes[1, i]``'s
      (output), the outlines ``axes[0, i].lines``.
    """
    x, y = np.asarray(inputs), np.asarray(outputs)
    if x.ndim not in (3, 4) or y.ndim not in (3, 4) or len(x) != len(y) or len(x) < 1:
        raise fail("stn_grid", "outputs", f"a batch as long as inputs ({np.shape(inputs)[:1]}), "
                   "both (N, H, W[, C])", f"shape {np.shape(outputs)}")
    n = len(x) if n is None else min(int(n), len(x))
    if axes is None:
        fig, axes = _pyplot().subplots(2, n, figsize=(1.3 * n, 2.9), squeeze=False)
    axes = np.asarray(axes).reshape(2, n)
    for i in range(n):
        show_image(x[i], ax=axes[0, i])
        show_image(y[i], ax=axes[1, i])
        if grids is not None:
            outline = sampling_outline(np.asarray(grids)[i], x.shape[1:3])
            axes[0, i].plot(outline[:, 0], outline[:, 1], color="yellow", lw=1.0)
            h, w = x.shape[1:3]
            axes[0, i].set_xlim(-0.5, w - 0.5)
            axes[0, i].set_ylim(h - 0.5, -0.5)
        if labels is not None:
            axes[0, i].set_title(str(labels[i]), fontsize=9)
    for row, title in enumerate(row_titles):
        axes[row, 0].set_ylabel(title, fontsize=9)
    return axes[0, 0].figure


def query_attention(image: Any, attention: Any, query: tuple[int, int], *, map_size:
                    tuple[int, int] | None = None, ax: Any = None, alpha: float = 0.6,
                    cmap: str = "magma", title: str | None = None) -> Any:
    """One query pixel's self-attention map over the image, with the query marked.

    Args:
      image: (H, W[, C]) the image the feature map came from.
      attention: the attention weights of every query over every key: (T, T) with T = h * w
        (rows are queries, row-major pixels), or (h, w, h, w); a leading batch or head axis
        of one is dropped.
      query: (row, col) of the query in the attention map's (h, w) grid.
      map_size: (h, w) of the map, needed for a (T, T) matrix unless the map is square.
      ax: axes to draw on (default: a new figure).
      alpha: opacity of the map.
      cmap: colormap.
      title: axes title (default: the query's position).

    Returns:
      The ``Axes``: ``ax.images[1]`` is the query's (h, w) map, ``ax.lines[0]`` the marker at
      the query cell's centre in image pixels.
    """
    fn = "query_attention"
    a = np.asarray(attention, dtype=np.float64)
    square4 = a.ndim == 4 and a.shape[:2] == a.shape[2:]
    while not square4 and a.ndim > 2 and a.shape[0] == 1:  # batch / head axes of one
        a = a[0]
    if square4:
        h, w = a.shape[:2]
        a = a.reshape(h * w, h * w)
        map_size = (h, w) if map_size is None else map_size
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise fail(fn, "attention", "weights (T, T) or (h, w, h, w)",
                   f"shape {np.shape(attention)}")
    t = a.shape[0]
    if map_size is None:
        side = int(round(np.sqrt(t)))
        if side * side != t:
            raise fail(fn, "map_size", f"(h, w) with h * w = {t} (the map is not square)", None)
        map_size = (side, side)
    h, w = (int(v) for v in map_size)
    if h * w != t:
        raise fail(fn, "map_size", f"(h, w) with h * w = {t}", repr(map_size))
    r, c = (int(v) for v in query)
    if not (0 <= r < h and 0 <= c < w):
        raise fail(fn, "query", f"a (row, col) inside the {h}x{w} map", repr(query))
    img = _image(fn, "image", image)
    row = a[r * w + c].reshape(h, w)
    ax = overlay(img, row, ax=ax, alpha=alpha, cmap=cmap,
                 title=title if title is not None else f"query ({r}, {c})")
    big_h, big_w = img.shape[:2]
    ax.plot([(c + 0.5) * big_w / w - 0.5], [(r + 0.5) * big_h / h - 0.5], marker="x",
            color="cyan", markersize=10, mew=2.5)
    return ax


def learning_curves(curves: Mapping[str, tuple[Any, Any]], *, ax: Any = None,
                    xlabel: str = "epoch", ylabel: str = "test error (%)",
                    title: str | None = None, log_y: bool = False) -> Any:
    """Mean curves with a +-1 standard deviation band over runs (seeds), one line per label.

    Args:
      curves: label -> (x (T,), y (S, T) or (T,)): the values of S runs at the points x.
      ax: axes to draw on (default: a new figure).
      xlabel, ylabel, title: axis labels and title.
      log_y: logarithmic y axis.

    Returns:
      The ``Axes``; ``ax.lines[i]`` is label i's mean, ``ax.collections[i]`` its band (when S
      > 1).
    """
    ax = _axes(ax, (5, 3.2))
    for label, (xs, ys) in curves.items():
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
        if xs.ndim != 1 or ys.shape[1] != xs.size:
            raise fail("learning_curves", "curves", "label -> (x (T,), y (S, T))",
                       f"{label!r}: x {xs.shape}, y {ys.shape}")
        mean = ys.mean(0)
        (line,) = ax.plot(xs, mean, label=str(label))
        if ys.shape[0] > 1:
            std = ys.std(0, ddof=1)
            ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            lw=0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    return ax
