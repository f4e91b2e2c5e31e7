"""Metric records: strict JSON lines, one readable line each on stdout, and the check that
stops a run whose loss is no longer finite."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from attention_jax.train.config import TrainConfig

__all__ = ["MetricsWriter", "NonFiniteLossError", "strict_json"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (``on_nonfinite="stop"``)."""


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(record: dict[str, Any]) -> str:
    """One record as strict JSON: NaN and infinities become ``null``."""
    return json.dumps(_finite_or_none(record), allow_nan=False)


def _kept_lines(path: str, step: int) -> list[str]:
    """The lines of a metrics file logged up to ``step`` (a resumed run rewrites the rest)."""
    if not os.path.exists(path):
        return []
    kept = []
    with open(path) as fh:
        for line in fh:
            try:
                if json.loads(line).get("step", step + 1) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue
    return kept


def _describe(record: dict[str, Any], total: int) -> str:
    def num(key, fmt):
        v = record.get(key)
        return "null" if v is None else format(v, fmt)  # NaN shows as nan

    if record.get("split") == "train":
        return (f"step {record['step']}/{total}: loss {num('loss', '.4f')}, accuracy "
                f"{num('accuracy', '.3f')}, lr {num('lr', '.3g')}, "
                f"{1e3 * record['step_time_s']:.1f} ms/step")
    return (f"{record.get('split')} at step {record['step']}: loss {num('loss', '.4f')}, "
            f"accuracy {num('accuracy', '.4f')}, error {num('error', '.4f')} "
            f"({record.get('count')} examples)")


class MetricsWriter:
    """Metric records: kept in ``history``, appended to a JSON-lines file as strict JSON
    (non-finite numbers as ``null``), and echoed as one readable line each.

    Args:
      path: the JSON-lines file, or None. A resumed run keeps its lines up to ``start`` and
        rewrites the rest; a new run starts the file afresh.
      start: the step the run starts from.
      resume: whether the run is resumed.
      total: the run's total steps (for the echoed lines).
      echo: called with each line (default: print to stdout); None silences it.
    """

    def __init__(self, path: str | None, *, start: int = 0, resume: bool = False,
                 total: int = 0, echo: Callable[[str], None] | None = print) -> None:
        self.history: list[dict[str, Any]] = []
        self.total, self._echo, self._fh = total, echo, None
        if jax.process_index() != 0:
            self._echo = None
            return
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            kept = _kept_lines(path, start) if resume else []
            self._fh = open(path, "w")  # noqa: SIM115 (closed by close())
            self._fh.writelines(kept)
            self._fh.flush()

    def write(self, record: dict[str, Any]) -> None:
        """Record one dict of metrics (``step``, ``split`` and numbers)."""
        self.history.append(record)
        if self._fh is not None:
            self._fh.write(strict_json(record) + "\n")
            self._fh.flush()
        if self._echo is not None:
            self._echo(_describe(record, self.total))

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def train_record(done: int, window: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The record of the steps in ``window`` (the metrics of steps ending at ``done``).

    Args:
      done: the step count after the window.
      window: each step's ``{"loss", "accuracy", "lr"}`` (device scalars).
      seconds: wall time of the window.

    Returns:
      ``{"step", "split": "train", "loss", "accuracy", "lr", "step_time_s"}``: means over the
      window, the last learning rate.
    """
    vals = jax.device_get(window)
    return {"step": done, "split": "train",
            "loss": float(np.mean([v["loss"] for v in vals])),
            "accuracy": float(np.mean([v["accuracy"] for v in vals])),
            "lr": float(vals[-1]["lr"]), "step_time_s": seconds / len(vals)}


def check_finite(window: list[dict[str, Any]], done: int, config: TrainConfig) -> None:
    """Raise ``NonFiniteLossError`` naming the first step of ``window`` whose loss is not
    finite (with ``config.on_nonfinite == "stop"``).

    Args:
      window: each step's metrics, the last one of step ``done``.
      done: the step count after the window.
      config: the run.
    """
    if config.on_nonfinite != "stop" or not window:
        return
    vals = jax.device_get(window)
    for i, v in enumerate(vals):
        loss = float(v["loss"])
        if not math.isfinite(loss):
            step = done - len(vals) + i + 1
            raise NonFiniteLossError(
                f"train: the loss became {loss} at step {step} (lr {float(v['lr']):.3g}); the "
                "run stopped without saving that state. Lower --lr, keep --clip-norm on, or "
                "pass --on-nonfinite continue to keep going")
