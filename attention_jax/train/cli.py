"""``attention-jax train``: train a model of the library on a tfds dataset from the shell.

Example::

    attention-jax train --dataset digits/RTS --model stcnn --steps 2000 --batch-size 64 \\
        --checkpoint-dir runs/st --metrics runs/st/metrics.jsonl
    attention-jax train ... --checkpoint-dir runs/st --resume     # continue exactly

Multi-host: start one process per host with the same flags after setting the coordinator
(``--coordinator host:port --num-processes N --process-id i``, passed to
``jax.distributed.initialize``); ``--devices`` then counts devices over all hosts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``attention-jax train``.

    Returns:
      An ``argparse.ArgumentParser``.
    """
    from attention_jax.train.trainer import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="attention-jax train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=d.dataset,
                   help="digits/{R,RTS,P,E,plain} (embedded, generated locally) or a tfds name")
    p.add_argument("--distort", default=None, choices=("R", "RTS", "P", "E"),
                   help="apply an STN-paper distortion on the fly to every batch")
    p.add_argument("--data-dir", default=None, help="tfds data directory (default: tfds')")
    p.add_argument("--download", action="store_true",
                   help="allow tfds to download a dataset that is not prepared (needs network)")
    p.add_argument("--model", default=d.model, help="cnn, stcnn or resnet")
    p.add_argument("--attention", default=None,
                   help="attention registry name for --model resnet (e.g. se, eca, cbam)")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size (divisible by the device count)")
    p.add_argument("--optimizer", default=d.optimizer, help="adam or sgd (with --momentum)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--schedule", default=d.schedule, help="cosine or constant")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--clip-norm", type=_clip_norm, default=d.clip_norm,
                   help=f"global gradient-norm clipping threshold, 0 = off (default "
                        f"{d.clip_norm})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--devices", type=int, default=None, help="devices to use (default: all)")
    p.add_argument("--checkpoint-dir", default=None, help="orbax checkpoint directory")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--resume", action="store_true",
                   help="continue the run checkpointed in --checkpoint-dir")
    p.add_argument("--metrics", dest="metrics_file", default=None,
                   help="write metrics as JSON lines to this file")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the test split")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar")
    p.add_argument("--coordinator", default=None,
                   help="multi-host: coordinator address host:port for jax.distributed")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    return p


def _clip_norm(text: str) -> float | None:
    value = float(text)
    return None if value == 0 else value


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attention-jax train``.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Exit code: 0 on success, 2 on bad input (message on stderr).
    """
    parser = build_parser()
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
    coordinator = args.pop("coordinator")
    num_processes, process_id = args.pop("num_processes"), args.pop("process_id")
    if coordinator is not None:
        import jax

        jax.distributed.initialize(coordinator, num_processes, process_id)

    from attention_jax.train.trainer import TrainConfig, train

    try:
        result = train(TrainConfig(**args))
    except ValueError as err:
        print(f"attention-jax train: error: {err}", file=sys.stderr)
        return 2
    summary = {"step": result.step, "params": result.num_params,
               "compile_time_s": round(result.compile_time_s, 3),
               "step_time_s": round(result.step_time_s, 5)}
    train_logs = [h for h in result.history if h.get("split") == "train"]
    if train_logs:
        summary["train_loss"] = train_logs[-1]["loss"]
    if result.eval is not None:
        summary.update({f"test_{k}": v for k, v in result.eval.items()})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
