"""The spatial-transformer experiment on the embedded distorted digits, in one command.

    python examples/stn_digits.py            # full run (budget: ~15 min on 2 CPU cores)
    python examples/stn_digits.py --quick    # smoke run (~2 min): 1 seed, few steps

1. CNN vs ST-CNN (a ``SpatialTransformer`` in front of the same CNN) on digits-R and
   digits-RTS: test error, mean and std over seeds, same budget (steps, batch, optimiser).
2. The tiny ResNet backbone with no attention, SE, ECA, CBAM, BAM and non-local on digits-RTS:
   test error (mean, std), parameter count and train-step time.
3. A picture: test digits next to what the trained ST-CNN (digits-RTS, seed 0) made of them.

Results (markdown tables, JSON, PNG) go to ``results/stn_digits/`` (git-ignored); the PNG is also
copied to ``docs/stn_digits.png`` for the README. Data: the embedded digits tfds builder,
generated locally on first use (nothing is downloaded). The paper's MNIST figures for reference
(Jaderberg et al. 2015, table 1): RTS 0.8% (CNN) vs 0.5% (ST-CNN); R 1.2% vs 0.7%.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import sys
import time
from typing import Any

import numpy as np

from attention_jax import list_attention
from attention_jax.data import Loader, load
from attention_jax.train import TrainConfig, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
ATTENTIONS = (None, "se", "eca", "cbam", "bam", "nl")


def _run(args: argparse.Namespace, *, dataset: str, model: str, seed: int, steps: int,
         attention: str | None = None, overrides: dict[str, Any] | None = None):
    cfg = TrainConfig(dataset=dataset, model=model, attention=attention, steps=steps,
                      batch_size=args.batch_size, lr=args.lr, schedule="cosine", seed=seed,
                      data_dir=args.data_dir, progress=False, log_every=max(steps // 4, 1),
                      eval_batch_size=500)
    return train(cfg, model_overrides=overrides)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pct(values: list[float]) -> str:
    m, s = _mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}"


def stn_part(args: argparse.Namespace, seeds: list[int]) -> tuple[list[dict], Any]:
    rows, picture_run = [], None
    for dataset in ("digits/R", "digits/RTS"):
        for model in ("cnn", "stcnn"):
            errors, result = [], None
            for seed in seeds:
                t0 = time.perf_counter()
                result = _run(args, dataset=dataset, model=model, seed=seed, steps=args.steps)
                errors.append(result.eval["error"])
                print(f"  {dataset:<11} {model:<6} seed {seed}: test error "
                      f"{100 * result.eval['error']:.2f}% ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
                if dataset == "digits/RTS" and model == "stcnn" and seed == seeds[0]:
                    picture_run = result
            rows.append({"dataset": dataset, "model": model, "errors": errors,
                         "params": result.num_params, "step_time_s": result.step_time_s})
    return rows, picture_run


def attention_part(args: argparse.Namespace, seeds: list[int]) -> list[dict]:
    rows = []
    known = set(list_attention())
    for attention in ATTENTIONS:
        name = attention or "none"
        if attention is not None and attention not in known:
            print(f"  resnet+{name}: not registered, skipped", flush=True)
            rows.append({"attention": name, "missing": True})
            continue
        errors, times, result = [], [], None
        for seed in seeds:
            t0 = time.perf_counter()
            # The 7x7/2 stem + max pool (not the small stem): 42x42 inputs become 11x11 maps,
            # so non-local attention stays cheap on a CPU.
            result = _run(args, dataset="digits/RTS", model="resnet", attention=attention,
                          seed=seed, steps=args.steps_attention,
                          overrides={"small_stem": False})
            errors.append(result.eval["error"])
            times.append(result.step_time_s)
            print(f"  resnet+{name:<5} seed {seed}: test error {100 * result.eval['error']:.2f}%"
                  f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append({"attention": name, "errors": errors, "params": result.num_params,
                     "step_time_s": statistics.fmean(times)})
    return rows


def save_picture(result: Any, args: argparse.Namespace, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = load("digits/RTS", split="test", data_dir=args.data_dir)
    batch = Loader(test, batch_size=10, seed=0, shuffle=True).batch(0)
    rectified = np.asarray(result.model.apply(result.variables, batch["image"],
                                              method=result.model.rectify))
    fig, axes = plt.subplots(2, 10, figsize=(10, 2.3))
    for i in range(10):
        for row, imgs in enumerate((batch["image"], rectified)):
            axes[row, i].imshow(imgs[i, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("input (digits-RTS test)", loc="left", fontsize=9)
    axes[1, 0].set_title("spatial transformer output", loc="left", fontsize=9)
    fig.tight_layout()
    path = out / "stn_digits.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, few steps (smoke run)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500, help="steps per CNN / ST-CNN run")
    p.add_argument("--steps-attention", type=int, default=250, help="steps per ResNet run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--part", choices=("all", "stn", "attention"), default="all")
    p.add_argument("--data-dir", default=None, help="tfds data dir (default: tfds')")
    p.add_argument("--out", default=str(ROOT / "results" / "stn_digits"))
    p.add_argument("--no-docs", action="store_true", help="do not copy the PNG to docs/")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.steps_attention = 1, 60, 30
    seeds = list(range(args.seeds))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"args": vars(args)}
    lines = [f"Budget per run: {args.steps} steps (ResNet: {args.steps_attention}) of batch "
             f"{args.batch_size}, Adam lr {args.lr} cosine; {len(seeds)} seed(s)."]

    if args.part in ("all", "stn"):
        print("CNN vs ST-CNN", flush=True)
        rows, picture_run = stn_part(args, seeds)
        report["stn"] = rows
        lines += ["", "| dataset | model | test error % (mean ± std) | params | step ms |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {'ST-CNN' if r['model'] == 'stcnn' else 'CNN'} | "
                  f"{_pct(r['errors'])} | {r['params']:,} | {1e3 * r['step_time_s']:.1f} |"
                  for r in rows]
        if picture_run is not None:
            png = save_picture(picture_run, args, out)
            report["picture"] = str(png)
            if not args.no_docs:
                (ROOT / "docs").mkdir(exist_ok=True)
                shutil.copy(png, ROOT / "docs" / "stn_digits.png")

    if args.part in ("all", "attention"):
        print("Tiny ResNet + attention on digits-RTS", flush=True)
        rows = attention_part(args, seeds)
        report["attention"] = rows
        lines += ["", "| attention | test error % (mean ± std) | params | step ms |",
                  "|---|---|---|---|"]
        for r in rows:
            if r.get("missing"):
                lines.append(f"| {r['attention']} | not registered | | |")
            else:
                lines.append(f"| {r['attention']} | {_pct(r['errors'])} | {r['params']:,} | "
                             f"{1e3 * r['step_time_s']:.1f} |")

    total = time.perf_counter() - t_start
    lines.append(f"\nTotal time: {total / 60:.1f} min.")
    table = "\n".join(lines)
    report["total_s"] = total
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
