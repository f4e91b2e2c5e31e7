"""``attention-jax train``: train a model of the library on a tfds dataset from the shell.

Example::

    attention-jax train --dataset digits/RTS --model stcnn --steps 2000 --batch-size 64 \\
        --checkpoint-dir runs/st --metrics runs/st/metrics.jsonl
    attention-jax train ... --checkpoint-dir runs/st --resume     # continue exactly
    attention-jax train ... --resume-step 1000                    # from an older step
    attention-jax train ... --steps 4000 --resume --resume-override steps   # train longer
    attention-jax train --model resnet --api nnx --attention se ...           # an nnx model
    attention-jax train --model seresnet50 --init-from seresnet50.safetensors \\
        --freeze-backbone ...              # fine-tune timm's weights: new head, frozen backbone

A resume must use the checkpoint's settings (seed, lr, batch size, steps, optimizer, ...): it
is refused otherwise, since it would not continue the run exactly, unless
``--resume-override KEY`` names each setting that may change. An unreadable newest step (a
damaged file) is set aside with one line on stderr and the previous step is used.

Output: one line per ``--log-every`` steps on stdout (also with ``--no-progress``), the same
records as strict JSON lines in ``--metrics`` (``null`` for NaN), and a JSON summary as the
last line. Exit codes: 0 done, 1 the loss became NaN or infinite (``--on-nonfinite stop``),
2 bad input (message on stderr, before the first step).

Multi-host: start one process per host with the same flags after setting the coordinator
(``--coordinator host:port --num-processes N --process-id i``, passed to
``jax.distributed.initialize``); ``--devices`` then counts devices over all hosts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

_DESCRIPTION = ("Train a model of the library on a tensorflow-datasets image dataset: "
                "checkpoints with exact resume, JSON-lines metrics, a final test evaluation.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``attention-jax train``.

    Returns:
      An ``argparse.ArgumentParser``.
    """
    from attention_jax.cli import HelpFormatter
    from attention_jax.compiler import CONVOLUTION_RUNTIMES
    from attention_jax.train.config import APIS, ON_NONFINITE, RESUME_KEYS, TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="attention-jax train", description=_DESCRIPTION,
                                formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=d.dataset,
                      help="digits/{R,RTS,P,E,plain} (embedded, generated locally) or the name "
                           "of a prepared tensorflow-datasets image dataset")
    data.add_argument("--distort", default=None, choices=("R", "RTS", "P", "E"),
                      help="apply an STN-paper distortion on the fly to every batch "
                           "(default: none)")
    data.add_argument("--data-dir", default=None,
                      help="tensorflow-datasets data directory (default: $TFDS_DATA_DIR, else "
                           "~/tensorflow_datasets)")
    data.add_argument("--download", action="store_true",
                      help="let tensorflow-datasets download a dataset that is not prepared "
                           "(needs network; off: nothing is fetched)")
    model = p.add_argument_group("model")
    model.add_argument("--model", default=d.model,
                       help="a zoo name: cnn, stcnn, resnet (small digit models) or one of "
                            "timm's attention ResNets, e.g. resnet18, seresnet50, "
                            "ecaresnet50d (attention-jax convert --help lists them)")
    model.add_argument("--api", default=d.api, choices=APIS,
                       help="Flax API of the model; checkpoints are the same")
    model.add_argument("--attention", default=None,
                       help="attention registry name for a ResNet, e.g. se, eca, cbam "
                            "(default: the model's own)")
    model.add_argument("--init-from", default=None, metavar="FILE",
                       help="start from these weights: a timm state dict (.safetensors, .pth, "
                            ".pt, .bin) of a timm name or an attention-jax variables file "
                            "(attention-jax convert). A head of another width is replaced by "
                            "a fresh one for the dataset's classes, a stem for other input "
                            "channels is adapted (timm's rule), the rest must match. Not "
                            "read again on --resume (default: random initialisation)")
    model.add_argument("--freeze-backbone", action="store_true",
                       help="with --init-from, train only the classifier head: the other "
                            "weights and the BatchNorm statistics stay the file's (the model "
                            "runs in eval mode during training)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps")
    opt.add_argument("--batch-size", type=int, default=d.batch_size,
                     help="global batch size (divisible by the device count)")
    opt.add_argument("--optimizer", default=d.optimizer, help="adam (AdamW) or sgd")
    opt.add_argument("--lr", type=float, default=d.lr,
                     help="peak learning rate, a finite number > 0")
    opt.add_argument("--schedule", default=d.schedule,
                     help="cosine (decay to 0 over --steps) or constant")
    opt.add_argument("--momentum", type=float, default=d.momentum,
                     help="SGD momentum in [0, 1); 0 = plain SGD (ignored by adam)")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay,
                     help="decoupled weight decay for adam, L2 for sgd (>= 0)")
    opt.add_argument("--clip-norm", type=_clip_norm, default=d.clip_norm,
                     help="global gradient-norm clipping threshold; 0 turns clipping off")
    opt.add_argument("--seed", type=int, default=d.seed,
                     help="seed of the parameters, data order, dropout and distortions")
    opt.add_argument("--on-nonfinite", default=d.on_nonfinite, choices=ON_NONFINITE,
                     help="when the loss becomes NaN or infinite: stop with an error before "
                          "saving that state, or continue (metrics then hold null)")
    run = p.add_argument_group("checkpoints and logs")
    run.add_argument("--checkpoint-dir", default=None,
                     help="orbax checkpoint directory (default: no checkpoints)")
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                     help="save a checkpoint every this many steps, and at the end")
    run.add_argument("--resume", action="store_true",
                     help="continue the run checkpointed in --checkpoint-dir from its newest "
                          "readable step (an unreadable newer step is set aside, saying so)")
    run.add_argument("--resume-step", type=int, default=None, metavar="N",
                     help="continue from checkpointed step N (implies --resume; newer steps "
                          "are set aside)")
    run.add_argument("--resume-override", action="append", default=[], metavar="KEY",
                     choices=RESUME_KEYS, type=lambda s: s.replace("-", "_"),
                     help="a setting that may differ from the checkpoint's on --resume (the "
                          "run is then not an exact continuation); repeat for several: "
                          + ", ".join(k.replace("_", "-") for k in RESUME_KEYS))
    run.add_argument("--metrics", dest="metrics_file", default=None,
                     help="write metrics to this file as JSON lines (default: none)")
    run.add_argument("--log-every", type=int, default=d.log_every,
                     help="print and record the mean train loss every this many steps")
    run.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                     help="batch size of the final evaluation on the test split")
    run.add_argument("--no-eval", dest="eval", action="store_false",
                     help="skip the final evaluation on the test split")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="hide the progress bar (the log lines still go to stdout)")
    multi = p.add_argument_group("devices and hosts")
    multi.add_argument("--cpu-convolutions", default=d.cpu_convolutions,
                       choices=CONVOLUTION_RUNTIMES,
                       help="the runtime of XLA:CPU's convolutions in the train and evaluation "
                            "steps: eigen (default) = XLA's own convolution runtime, faster "
                            "for convolutional models at batch 8 and more on the AMD EPYC Zen "
                            "4 and the Intel Xeon (see the README); ynnpack = what XLA picks "
                            "by itself (attention_jax.cpu_compiler_options); CPU only")
    multi.add_argument("--devices", type=int, default=None,
                       help="devices to use (default: all JAX sees)")
    multi.add_argument("--coordinator", default=None,
                       help="coordinator address host:port for jax.distributed (one process "
                            "per host, same flags)")
    multi.add_argument("--num-processes", type=int, default=None,
                       help="number of processes of a multi-host run")
    multi.add_argument("--process-id", type=int, default=None,
                       help="this process's index in a multi-host run, from 0")
    return p


def _clip_norm(text: str) -> float | None:
    value = float(text)
    return None if value == 0 else value


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attention-jax train``.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      Exit code: 0 on success, 1 when the loss became non-finite (``--on-nonfinite stop``),
      2 on bad input (message on stderr).
    """
    parser = build_parser()
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else list(argv)))
    if args["resume_step"] is not None:
        args["resume"] = True
    args["resume_override"] = tuple(args["resume_override"])
    coordinator = args.pop("coordinator")
    num_processes, process_id = args.pop("num_processes"), args.pop("process_id")
    if coordinator is not None:
        import jax

        jax.distributed.initialize(coordinator, num_processes, process_id)

    from attention_jax.train.metrics import strict_json
    from attention_jax.train.trainer import NonFiniteLossError, TrainConfig, train

    try:
        result = train(TrainConfig(**args))
    except ValueError as err:
        print(f"attention-jax train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"attention-jax train: error: {err}", file=sys.stderr)
        return 1
    summary = {"step": result.step, "params": result.num_params,
               "compile_time_s": round(result.compile_time_s, 3),
               "step_time_s": round(result.step_time_s, 5)}
    train_logs = [h for h in result.history if h.get("split") == "train"]
    if train_logs:
        summary["train_loss"] = train_logs[-1]["loss"]
    if result.eval is not None:
        summary.update({f"test_{k}": v for k, v in result.eval.items()})
    print(strict_json(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
