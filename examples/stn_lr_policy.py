"""Which learning rates keep every seed of an ST-CNN alive: the evidence for stn_mnist.py's policy.

    python examples/stn_lr_policy.py            # 8 policies x 5 seeds, ST-CNN-Aff on RTS
    python examples/stn_lr_policy.py --docs     # also write docs/stn_lr_policy.md

A spatial transformer whose localisation net moves too fast can lose the digit early (zoom out,
flip, or sample empty canvas) and never find it again: the run "collapses" to a test error far
above its peers'. A smaller rate for the localisation net is the usual remedy. This script
trains ``examples/stn_mnist.py``'s ST-CNN-Aff on RTS (same data, model, schedule) under
several (peak learning rate, localisation-rate multiple, warm-up) policies and seeds, and counts
the collapsed runs: test error above 3x the median of all the study's runs and 5 points more,
or above 50% (the rule of ``stn_mnist.collapsed``, with the whole study as the reference, so a
policy whose every seed fails is caught too).

Writes ``summary.json`` (``{policy: {"lr", "loc_lr_scale", "warmup_epochs", "errors",
"collapsed", "test_error_mean", "test_error_std"}}``) and ``table.md`` under ``--out`` (default
``runs/stn_lr_policy``); ``--docs`` also writes ``docs/stn_lr_policy.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import stn_mnist as S  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
POLICIES = ((2e-3, 1.0, 1), (2e-3, 0.1, 1), (1e-2, 1.0, 1), (1e-2, 0.1, 1),
            (2e-3, 1.0, 0), (2e-3, 0.1, 0), (1e-2, 1.0, 0), (1e-2, 0.1, 0))
"""(peak learning rate, localisation-rate multiple, warm-up epochs); stn_mnist.py uses
(2e-3, 1.0, 1)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds per policy")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run")
    p.add_argument("--config", default="RTS", choices=S.CONFIGS, help="distortion")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="at most this many steps per epoch (default: all; for smoke tests)")
    p.add_argument("--data-dir", default=None, help="tfds data directory (default: tfds')")
    p.add_argument("--out", default=str(ROOT / "runs" / "stn_lr_policy"),
                   help="output directory (default: runs/stn_lr_policy)")
    p.add_argument("--docs", action="store_true", help="also write docs/stn_lr_policy.md")
    p.add_argument("--docs-dir", default=str(ROOT / "docs"),
                   help="where --docs writes (default: the repository's docs/)")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = S.load_data((args.config,), args.data_dir)
    summary, runs = {}, []
    for lr, scale, warmup in POLICIES:
        budget = S.Budget(epochs=args.epochs, lr=lr, loc_lr_scale=scale, warmup_epochs=warmup,
                          eval_every=args.epochs, steps_per_epoch=args.steps_per_epoch)
        name = f"lr {lr:g}, localisation x{scale:g}, " + (
            f"{warmup}-epoch warm-up" if warmup else "no warm-up")
        group = []
        for seed in range(args.seeds):
            r = S.train_run("ST-CNN-Aff", args.config, seed, data, budget)
            group.append(r)
            print(f"{name}, seed {seed}: {r.test_error:.2f}%", flush=True)
        runs += group
        errors = [r.test_error for r in group]
        summary[name] = {"lr": lr, "loc_lr_scale": scale, "warmup_epochs": warmup,
                         "errors": errors,
                         "test_error_mean": statistics.fmean(errors),
                         "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0}
    reference = statistics.median(r.test_error for r in runs)
    for entry in summary.values():
        entry["collapsed"] = sum(
            e >= 50.0 or (e > S.COLLAPSE_FACTOR * reference and e > reference + 5.0)
            for e in entry["errors"])
    lines = ["| policy (peak lr, localisation rate, warm-up) | test error % per seed | "
             "mean ± std | collapsed |", "|---|---|---|---|"]
    for name, e in summary.items():
        lines.append(f"| {name} | {', '.join(f'{v:.1f}' for v in e['errors'])} | "
                     f"{e['test_error_mean']:.2f} ± {e['test_error_std']:.2f} | "
                     f"{e['collapsed']} of {len(e['errors'])} |")
    text = "\n".join(lines)
    total = time.perf_counter() - t_start
    print("\n" + text + f"\n\nTotal {total / 60:.1f} min.")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(text + "\n")
    if args.docs:
        docs = pathlib.Path(args.docs_dir)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "stn_lr_policy.md").write_text(
            "# The learning-rate policy of the STN experiment\n\n"
            f"Generated by `python examples/stn_lr_policy.py --docs` ({time.strftime('%Y-%m-%d')}"
            f", {S._machine()}, {total / 60:.1f} min). ST-CNN-Aff on {args.config}, "
            f"{args.epochs} epochs of batch 64 per run, Adam with the given linear warm-up and "
            "cosine decay; the localisation net (parameters under `loc`) at the given multiple "
            "of the peak rate (`optax.multi_transform` with "
            "`attention_jax.models.localisation_labels`). A run has collapsed when its error "
            f"is above 3x the median of all {len(runs)} runs ({reference:.2f}%) and 5 points more, "
            "or above 50%.\n\n"
            f"{text}\n\nNo collapsed seed under: "
            + "; ".join(n for n, e in summary.items() if e["collapsed"] == 0) + ".\n")
    print(f"wrote {out}/summary.json, table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
