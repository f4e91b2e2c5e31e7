"""Attention variants on RTS-distorted MNIST: one tiny ResNet, eight attention modules.

    python examples/attention_rts.py            # 8 variants x 3 seeds (~15 min on 2 cores)
    python examples/attention_rts.py --quick    # 1 seed, 2 epochs (smoke run)
    python examples/attention_rts.py --docs     # also write docs/stn_attention_rts.md

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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stn_mnist import Budget, Data, load_data  # noqa: E402

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
    """Train one variant with one seed on RTS; returns error (%), params, step times."""
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
            "step_ms": 1e3 * statistics.median(times), "step_cpu_ms": 1e3 * statistics.median(cpu)}


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
    args = p.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")
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
