"""Attention variants on RTS-distorted MNIST: one tiny ResNet, eight attention modules.

    python examples/attention_rts.py            # 8 variants x 3 seeds (~15 min on 2 cores)
    python examples/attention_rts.py --quick    # 1 seed, 2 epochs (smoke run)
    python examples/attention_rts.py --docs     # also write docs/stn_attention_rts.md
    python examples/attention_rts.py --variants nl --seeds 1 --maps docs/nonlocal_query_rts.png

The library's tiny ResNet (``attention_jax.models.ResNet``, layout ``resnet_tiny``: one basic
block per stage, 16-32-64 wide, with the 7x7/2 stem and max pool, so 42x42 digits become 11x11
maps and non-local attention stays cheap) with ``attention`` = none, se, eca, cbam, bam, gc,
ca, nl, trained on ``distorted_mnist/RTS`` exactly as ``examples/stn_mnist.py`` trains its
models (4,000 training digits distorted afresh each batch, Adam with warm-up and cosine decay,
the fixed test split of 1,000 other digits). Reports test error (mean and std over seeds),
parameter count and training-step time (median, wall and process CPU).

Writes ``summary.json`` (``{variant: {"test_error_mean", "test_error_std", "seeds",
"params", "step_ms", "step_cpu_ms"}}``, error in percent) and ``table.md`` under ``--out``
(default ``runs/attention_rts``); ``--docs`` also writes ``docs/stn_attention_rts.md``.

``--maps PATH`` (needs ``nl`` among the variants) draws what the seed-0 ``nl`` network's first
non-local block (``layer1_0``, on the 11x11 feature map) attends to: its attention rows, as the
block sows them (``attention_jax.intermediates``, name ``attention``), for three query cells of
each of the first ``--map-digits`` RTS test digits (two on the ink, one on the background),
saved as PATH (PNG) with a JSON beside it (same name, ``.json``) that holds a measured fact the
picture illustrates, over the test digits (those with both ink and background cells): the
attention mass that ink and background queries put on ink cells, against the fraction of cells
that are ink (see ``ink_attention``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stn_mnist import Budget, Data, load_data  # noqa: E402

from attention_jax import intermediates  # noqa: E402
from attention_jax.data import get_distortion  # noqa: E402
from attention_jax.models import LAYOUTS, ResNet  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("none", "se", "eca", "cbam", "bam", "gc", "ca", "nl")


def build_model(variant: str) -> ResNet:
    """The tiny ResNet with ``variant`` attention (``"none"``: without) for 42x42 digits."""
    layout = {**LAYOUTS["resnet_tiny"], "small_stem": False}
    return ResNet(**layout, num_classes=10, in_channels=1,
                  attention=None if variant == "none" else variant)


@functools.cache
def _compiled(variant: str, budget: Budget, n: int):
    model = build_model(variant)
    distort = get_distortion("RTS")
    steps = min(n // budget.batch_size, budget.steps_per_epoch or n)
    total = steps * budget.epochs
    warmup = min(budget.warmup_epochs * steps, total // 2)
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, budget.lr, warmup, total))

    @jax.jit
    def init(key):
        variables = model.init(key, jnp.zeros((1, 42, 42, 1)))
        return variables["params"], variables["batch_stats"], tx.init(variables["params"])

    @jax.jit
    def order(key, e):
        perm = jax.random.permutation(jax.random.fold_in(key, e), n)
        return perm[:steps * budget.batch_size].reshape(steps, budget.batch_size)

    @jax.jit
    def step(params, stats, opt_state, x_train, y_train, idx, key, i):
        x = distort(jax.random.fold_in(key, i), x_train[idx])

        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_train[idx]).mean()
            return loss, new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    @jax.jit
    def wrong(params, stats, x, y):
        logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
        return jnp.sum(logits.argmax(-1) != y)

    return steps, init, order, step, wrong


def train_variant(variant: str, seed: int, data: Data, budget: Budget) -> dict[str, Any]:
    """Train one variant with one seed on RTS.

    Returns:
      ``{"error": test error %, "params": parameter count, "step_ms", "step_cpu_ms": median
      step times, "variables": {"params", "batch_stats"} of the trained network}``.
    """
    steps, init, order, step, wrong = _compiled(variant, budget, int(data.x_train.shape[0]))
    k_init, k_shuffle, k_aug = jax.random.split(jax.random.PRNGKey(seed), 3)
    params, stats, opt_state = init(k_init)
    times, cpu = [], []
    for e in range(budget.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        batches = order(k_shuffle, e)
        for j in range(steps):
            params, stats, opt_state, loss = step(params, stats, opt_state, data.x_train,
                                                  data.y_train, batches[j], k_aug, e * steps + j)
        jax.block_until_ready(loss)
        if e > 0 or budget.epochs == 1:
            times.append((time.perf_counter() - t0) / steps)
            cpu.append((time.process_time() - c0) / steps)
    x_test, y_test = data.test["RTS"]
    errors = sum(int(wrong(params, stats, x_test[i:i + 500], y_test[i:i + 500]))
                 for i in range(0, len(x_test), 500))
    return {"error": 100.0 * errors / len(x_test),
            "params": sum(int(a.size) for a in jax.tree.leaves(params)),
            "step_ms": 1e3 * statistics.median(times), "step_cpu_ms": 1e3 * statistics.median(cpu),
            "variables": {"params": params, "batch_stats": stats}}


MAP_BLOCK = ("layer1_0", "attn")
"""Where the drawn non-local block sits: the first stage's block, on the 11x11 feature map."""
INK, BACKGROUND = 0.3, 0.02
"""A map cell is ink when the mean intensity (pixels in [0, 1]) of the image area it covers
is at least ``INK``, background when at most ``BACKGROUND``; cells in between are neither."""


@functools.cache
def _collect_fn():
    model = build_model("nl")

    @jax.jit
    def collect(variables, x):
        logits, maps = intermediates(model, x, variables=variables, train=False)
        block = maps
        for name in MAP_BLOCK:
            block = block[name]
        return logits.argmax(-1), block["attention"][0]

    return collect


def nonlocal_attention(variables: Any, x: Any, batch: int = 250
                       ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The first non-local block's attention rows, as the block sows them, for images ``x``.

    Args:
      variables: ``{"params", "batch_stats"}`` of ``build_model("nl")``.
      x: (N, 42, 42, 1) images.
      batch: images per call.

    Returns:
      ``(predictions (N,) int, attention (N, h * w, h * w) float32, (h, w))``: row
      ``i * w + j`` of ``attention[n]`` is feature cell (i, j)'s softmax over all cells.

    Raises:
      RuntimeError: if the sown map is not (N, T, T) with T = h * w and rows that are
        probability distributions (finite, >= 0, summing to 1 within 1e-5).
    """
    collect = _collect_fn()
    preds, rows = [], []
    for i in range(0, len(x), batch):
        p, a = collect(variables, x[i:i + batch])
        preds.append(np.asarray(p))
        rows.append(np.asarray(a))
    pred, att = np.concatenate(preds), np.concatenate(rows)
    t = att.shape[1] if att.ndim == 3 else 0
    side = int(round(np.sqrt(t)))
    if att.shape != (len(x), t, t) or side * side != t or t == 0:
        raise RuntimeError(f"nonlocal_attention: sown map has shape {att.shape}, expected "
                           f"({len(x)}, h * w, h * w) of a square feature map")
    sums = att.sum(-1, dtype=np.float64)
    if not (np.isfinite(att).all() and (att >= 0).all() and np.abs(sums - 1).max() <= 1e-5):
        raise RuntimeError("nonlocal_attention: sown rows are not distributions (max |sum - 1| "
                           f"{np.abs(sums - 1).max():.2e}, min {att.min():.2e})")
    return pred, att, (side, side)


def _area_matrix(big: int, small: int) -> np.ndarray:
    edges = np.arange(small + 1) * big / small
    px = np.arange(big)[None, :]
    overlap = np.minimum(px + 1, edges[1:, None]) - np.maximum(px, edges[:-1, None])
    return np.clip(overlap, 0, None) / (big / small)


def cell_intensity(images: Any, map_size: tuple[int, int]) -> np.ndarray:
    """Mean pixel intensity of the image area each attention-map cell covers.

    The map's (h, w) cells are stretched over the (H, W) image as ``viz.overlay`` and
    ``viz.query_attention`` draw them: cell (i, j) covers rows [i H / h, (i + 1) H / h) and
    columns [j W / w, (j + 1) W / w), partial pixels weighted by the area covered. (For the
    tiny ResNet's 11x11 map of 42x42 digits, the stem's true cell centres, 4 i + 0.5 px, lie
    within 1.4 px of these stretched ones, (i + 0.5) 42 / 11; a cell is 3.8 px wide.)

    Args:
      images: (N, H, W, 1) or (N, H, W) images.
      map_size: (h, w).

    Returns:
      (N, h, w) float64 area means.
    """
    x = np.asarray(images, np.float64)
    x = x[..., 0] if x.ndim == 4 else x
    h, w = map_size
    return np.einsum("ip,npq,jq->nij", _area_matrix(x.shape[1], h), x,
                     _area_matrix(x.shape[2], w))


def pick_queries(cells: np.ndarray) -> list[tuple[str, tuple[int, int]]]:
    """The query cells drawn for one digit, by a fixed rule (not chosen by looking).

    Args:
      cells: (h, w) cell intensities (``cell_intensity``).

    Returns:
      ``[(kind, (row, col)), ...]``: ``"ink"`` the brightest cell; ``"ink"`` the ink cell
      farthest from it (if another exists); ``"background"`` the background cell farthest from
      every ink cell (if one exists). Ties go to the first in row-major order.
    """
    h, w = cells.shape
    rc = np.stack(np.unravel_index(np.arange(h * w), (h, w)), -1).astype(np.float64)
    flat = cells.reshape(-1)
    first = int(np.argmax(flat))
    out = [("ink", (first // w, first % w))]
    ink = np.flatnonzero(flat >= INK)
    others = ink[ink != first]
    if others.size:
        far = others[int(np.argmax(np.linalg.norm(rc[others] - rc[first], axis=-1)))]
        out.append(("ink", (int(far) // w, int(far) % w)))
    background = np.flatnonzero(flat <= BACKGROUND)
    if background.size:
        ref = rc[ink] if ink.size else rc[[first]]
        dist = np.linalg.norm(rc[background][:, None] - ref[None], axis=-1).min(-1)
        b = int(background[int(np.argmax(dist))])
        out.append(("background", (b // w, b % w)))
    return out


def ink_attention(attention: np.ndarray, cells: np.ndarray) -> dict[str, float]:
    """How much of its attention a query puts on the digit's ink, against chance.

    Per digit: each query's attention mass on the ink cells (intensity >= ``INK``), averaged
    over the ink queries and over the background queries (intensity <= ``BACKGROUND``), and the
    fraction of cells that are ink (the mass a uniform attention would put on them). Digits
    without an ink or a background cell are left out.

    Args:
      attention: (N, T, T) rows (queries) over keys, T = h * w.
      cells: (N, h, w) cell intensities.

    Returns:
      ``{"digits": digits used, "ink_fraction": mean fraction of ink cells,
      "ink_query_mass_on_ink", "background_query_mass_on_ink": the means over digits (and
      ``..._std``: their standard deviations over digits),
      "digits_ink_query_above_fraction": share of digits whose ink queries put more than the
      ink fraction on ink}``.

    Raises:
      RuntimeError: if no image has both an ink and a background cell.
    """
    cells = cells.reshape(len(cells), -1)
    ink, bg = cells >= INK, cells <= BACKGROUND
    mass = np.einsum("nqk,nk->nq", attention.astype(np.float64), ink.astype(np.float64))
    keep = ink.any(1) & bg.any(1)
    if not keep.any():
        raise RuntimeError("ink_attention: no image has both an ink and a background cell")
    ink, bg, mass = ink[keep], bg[keep], mass[keep]
    frac = ink.mean(1)
    on_ink = (mass * ink).sum(1) / ink.sum(1)
    on_bg = (mass * bg).sum(1) / bg.sum(1)
    return {"digits": int(keep.sum()), "ink_fraction": float(frac.mean()),
            "ink_query_mass_on_ink": float(on_ink.mean()),
            "ink_query_mass_on_ink_std": float(on_ink.std()),
            "background_query_mass_on_ink": float(on_bg.mean()),
            "background_query_mass_on_ink_std": float(on_bg.std()),
            "digits_ink_query_above_fraction": float((on_ink > frac).mean())}


def draw_query_maps(images: Any, labels: Any, preds: Any, attention: np.ndarray,
                    map_size: tuple[int, int], title: str = "") -> Any:
    """Each digit, then its query cells' attention maps (``viz.query_attention``), one row each.

    Args:
      images: (n, H, W, 1) digits.
      labels, preds: (n,) true and predicted classes.
      attention: (n, h * w, h * w) attention rows.
      map_size: (h, w).
      title: figure title.

    Returns:
      The ``Figure``: ``n x 4`` axes, column 0 the digit, columns 1-3 the queries of
      ``pick_queries`` (an axes left blank, turned off, when a digit has fewer).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attention_jax import viz

    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(8.6, 2.3 * n), squeeze=False)
    cells = cell_intensity(images, map_size)
    for i in range(n):
        viz.show_image(images[i], ax=axes[i, 0],
                       title=f"label {int(labels[i])}, predicted {int(preds[i])}")
        queries = pick_queries(cells[i])
        for k, (kind, q) in enumerate(queries, 1):
            viz.query_attention(images[i], attention[i], q, map_size=map_size, ax=axes[i, k],
                                title=f"{kind} query {q}")
        for k in range(len(queries) + 1, 4):
            axes[i, k].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _cpu() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_maps(path: pathlib.Path, run: dict[str, Any], data: Data, budget: Budget,
               digits: int = 4, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Draw the trained ``nl`` network's query maps into ``path`` and its facts beside it.

    Args:
      path: the PNG to write; the facts go to ``path.with_suffix(".json")``.
      run: ``train_variant("nl", ...)``'s result.
      data: the data (its RTS test split is used).
      budget: the training settings (recorded).
      digits: how many test digits to draw (the first ones of the split).
      seed: the run's seed (recorded).

    Returns:
      ``(figure, facts)``: the drawn figure and the dict written as JSON.
    """
    x_test, y_test = data.test["RTS"]
    preds, att, size = nonlocal_attention(run["variables"], x_test)
    cells = cell_intensity(x_test, size)
    stats = ink_attention(att, cells)
    facts = {
        "network": "resnet_tiny+nl (examples/attention_rts.py)",
        "block": "/".join(MAP_BLOCK), "map_size": list(size), "seed": seed,
        "epochs": budget.epochs, "test_error": run["error"],
        "sown_map_shape": list(att.shape), "max_row_sum_error": float(
            np.abs(att.sum(-1, dtype=np.float64) - 1).max()),
        "ink_threshold": INK, "background_threshold": BACKGROUND,
        "drawn": [{"test_index": i, "label": int(y_test[i]), "predicted": int(preds[i]),
                   "queries": [[kind, list(q)] for kind, q in pick_queries(cells[i])]}
                  for i in range(digits)],
        **stats, "cpu": _cpu(), "date": time.strftime("%Y-%m-%d"),
    }
    title = (f"resnet_tiny+nl on RTS ({budget.epochs} epochs, seed {seed}, test error "
             f"{run['error']:.1f}%): first non-local block, {size[0]}x{size[1]} map")
    fig = draw_query_maps(x_test[:digits], y_test[:digits], preds[:digits], att[:digits], size,
                          title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    print(f"non-local attention over {stats['digits']} RTS test digits: ink queries put "
          f"{stats['ink_query_mass_on_ink']:.3f} of their attention on ink cells, background "
          f"queries {stats['background_query_mass_on_ink']:.3f}; ink cells are "
          f"{stats['ink_fraction']:.3f} of the map (what uniform attention would put there); "
          f"ink queries above that in {100 * stats['digits_ink_query_above_fraction']:.1f}% "
          "of the digits")
    print(f"wrote {path}, {path.with_suffix('.json')}")
    return fig, facts


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the variants (error %, parameters, step times)."""
    lines = ["| attention | test error % | params | step ms (wall) | step ms (CPU) |",
             "|---|---|---|---|---|"]
    for v, s in summary.items():
        err = f"{s['test_error_mean']:.2f}"
        if s["seeds"] > 1:
            err += f" ± {s['test_error_std']:.2f}"
        lines.append(f"| {v} | {err} | {s['params']:,} | {s['step_ms']:.1f} | "
                     f"{s['step_cpu_ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 2 epochs (smoke run)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of "
                   + ",".join(VARIANTS))
    p.add_argument("--lr", type=float, default=Budget.lr, help="peak learning rate")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="at most this many steps per epoch (default: all; for smoke tests)")
    p.add_argument("--data-dir", default=None, help="tfds data directory (default: tfds')")
    p.add_argument("--out", default=str(ROOT / "runs" / "attention_rts"),
                   help="output directory (default: runs/attention_rts)")
    p.add_argument("--docs", action="store_true", help="also write docs/stn_attention_rts.md")
    p.add_argument("--docs-dir", default=str(ROOT / "docs"),
                   help="where --docs writes (default: the repository's docs/)")
    p.add_argument("--maps", default=None, metavar="PATH",
                   help="draw the seed-0 nl network's non-local query maps into PATH (PNG), "
                   "its measured facts beside it (.json); needs nl among --variants")
    p.add_argument("--map-digits", type=int, default=4, help="test digits drawn by --maps")
    args = p.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")
    if args.maps and "nl" not in variants:
        p.error("--maps: needs the nl variant among --variants")
    if args.map_digits < 1:
        p.error(f"--map-digits: must be at least 1, got {args.map_digits}")
    seeds = 1 if args.quick else args.seeds
    epochs = args.epochs or (2 if args.quick else 10)
    budget = Budget(epochs=epochs, lr=args.lr, steps_per_epoch=args.steps_per_epoch)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = load_data(("RTS",), args.data_dir)
    summary: dict[str, dict[str, Any]] = {}
    for v in variants:
        runs = []
        for seed in range(seeds):
            r = train_variant(v, seed, data, budget)
            if args.maps and v == "nl" and seed == 0:
                write_maps(pathlib.Path(args.maps), r, data, budget, args.map_digits, seed)
            r.pop("variables")
            runs.append(r)
            print(f"RTS resnet_tiny+{v:<5} seed {seed}: {r['error']:.2f}% ({r['params']:,} "
                  f"params, {r['step_ms']:.1f} ms/step)", flush=True)
        errors = [r["error"] for r in runs]
        summary[v] = {"test_error_mean": statistics.fmean(errors),
                      "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
                      "seeds": len(errors), "params": runs[0]["params"],
                      "step_ms": statistics.median(r["step_ms"] for r in runs),
                      "step_cpu_ms": statistics.median(r["step_cpu_ms"] for r in runs)}
    total = time.perf_counter() - t_start
    text = table(summary)
    print("\n" + text + f"\n\nTotal {total / 60:.1f} min.")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(text + "\n")
    if args.docs:
        pathlib.Path(args.docs_dir).mkdir(parents=True, exist_ok=True)
        doc = pathlib.Path(args.docs_dir) / "stn_attention_rts.md"
        doc.write_text(_doc(text, budget, seeds, total))
        print(f"wrote {doc}")
    print(f"wrote {out}/summary.json, table.md")
    return 0


def _doc(text: str, budget: Budget, seeds: int, total: float) -> str:
    settings = dataclasses.asdict(budget)
    return (
        "# Attention variants on RTS-distorted MNIST\n\n"
        "Generated by `python examples/attention_rts.py --docs`. The tiny ResNet of "
        "`attention_jax.models` (layout `resnet_tiny`, 7x7/2 stem and max pool, one basic "
        "block per stage, 16-32-64 wide) with each attention module, trained on "
        "`distorted_mnist/RTS` (4,000 digits distorted afresh each batch; test: the fixed "
        "split of 1,000 other digits), "
        f"{settings['epochs']} epochs of batch {settings['batch_size']}, Adam, peak learning "
        f"rate {settings['lr']:g} with a {settings['warmup_epochs']}-epoch warm-up and cosine "
        f"decay; {seeds} seed(s), mean ± sample std. Step times are medians on "
        "the 2-core CPU this was run on (wall and process CPU time; the CPU time is the "
        "steadier figure on a shared machine).\n\n"
        f"{text}\n\nTotal wall time {total / 60:.1f} min.\n")


if __name__ == "__main__":
    sys.exit(main())
