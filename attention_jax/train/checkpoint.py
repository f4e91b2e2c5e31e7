"""Orbax checkpoints of a run, and where a run starts: a fresh state or the newest readable
checkpoint whose settings match the run's."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from attention_jax._extras import require
from attention_jax._validation import fail
from attention_jax.train.config import RESUME_KEYS, TrainConfig

__all__ = ["Checkpointer", "CheckpointError", "restore_or_init", "check_checkpoint_dir",
           "check_writable", "FORMAT"]

FORMAT = "attention-jax-train/1"


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used (empty for --resume, another run's, or taken)."""


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _cause(err: BaseException) -> str:
    """One line saying why: the innermost error, without TensorStore's spec dump."""
    inner, seen = err, set()
    while (inner.__cause__ or inner.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    text = (str(inner) or type(inner).__name__).strip().splitlines()[0]
    for cut in (" [source locations=", " See full TensorStore details", " [tensorstore_spec="):
        text = text.split(cut)[0]
    return text if len(text) <= 300 else text[:297] + "..."


def check_writable(arg: str, path: str, *, directory: bool) -> None:
    """``path`` can be created (or used) as a directory/file: fail now, not after training."""
    what = "a directory" if directory else "a file"
    if os.path.exists(path) and os.path.isdir(path) != directory:
        raise fail("train", arg, f"a path usable as {what}", f"{path!r}, which is "
                   f"{'a directory' if os.path.isdir(path) else 'a file'}")
    parent = path if os.path.isdir(path) else os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    parent = parent or "."
    if not os.path.isdir(parent):
        raise fail("train", arg, f"a path usable as {what}", f"{path!r}, which lies under the "
                   f"file {parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail("train", arg, f"a path usable as {what}", f"{path!r}, but {parent!r} is not "
                   "writable")


class Checkpointer:
    """A run's orbax checkpoints: one directory per step holding the train state (``state``)
    and the run's settings as JSON (``meta``).

    Saves are synchronous (the train step donates the state's buffers right after a save);
    ``keep`` steps are kept. Stale temporary directories of a killed save are removed when a
    checkpointer is opened for writing.

    Args:
      path: the checkpoint directory.
      create: create it (and write into it); False opens an existing one read-only.
      keep: how many steps to keep.
    """

    def __init__(self, path: str, *, create: bool = True, keep: int = 2) -> None:
        ocp = require("orbax.checkpoint", "train", "attention-jax train's checkpoints")

        self.path = os.path.abspath(path)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=False,
            cleanup_tmp_directories=create)
        self._manager = ocp.CheckpointManager(
            self.path, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        """The completed steps, ascending."""
        return sorted(self._manager.all_steps())

    def read_meta(self, step: int) -> dict[str, Any]:
        """The settings saved with ``step`` (raises on a damaged or foreign checkpoint)."""
        ocp = require("orbax.checkpoint", "train", "attention-jax train's checkpoints")

        meta = self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"train: checkpoint_dir must hold an attention-jax training "
                                  f"checkpoint, got {self.path} (step {step}) with metadata "
                                  f"{str(meta)[:200]}")
        return meta

    def layout(self, step: int) -> dict[str, tuple[tuple[int, ...], str]] | None:
        """The saved state's arrays, ``{path: (shape, dtype)}``, from its metadata file."""
        metadata = self._manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        return None if tree is None else _layout(tree)

    def restore(self, step: int, abstract_state: Any) -> dict[str, Any]:
        """The state saved at ``step``, laid out (shapes, dtypes, shardings) as the target."""
        ocp = require("orbax.checkpoint", "train", "attention-jax train's checkpoints")

        return self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write ``state`` and ``meta`` as ``step`` (an existing step is an error)."""
        ocp = require("orbax.checkpoint", "train", "attention-jax train's checkpoints")

        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def set_aside(self, step: int, suffix: str) -> str:
        """Rename step ``step`` to ``<step>.<suffix>`` (kept, no longer a checkpoint).

        Returns:
          The new directory name.
        """
        name = f"{step}.{suffix}"
        n = 1
        while os.path.exists(os.path.join(self.path, name)):
            n += 1
            name = f"{step}.{suffix}-{n}"
        if jax.process_index() == 0:
            os.rename(os.path.join(self.path, str(step)), os.path.join(self.path, name))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"attention-jax set aside {step}")
        self._manager.reload()
        return name

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in flat}


def run_meta(config: TrainConfig, *, num_classes: int, input_shape: tuple[int, ...],
             devices: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of its run: the whole config, plus what the run derived."""
    return {"format": FORMAT, "model": config.model, "api": config.api,
            "attention": config.attention, "dataset": config.dataset,
            "distort": config.distort, "num_classes": num_classes,
            "input_shape": list(input_shape), "devices": devices,
            "model_overrides": _jsonable(overrides),
            "config": _jsonable(dataclasses.asdict(config))}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def run_settings(config: TrainConfig, devices: int, overrides: dict[str, Any]) -> dict:
    """The run's values of ``RESUME_KEYS`` (``devices`` resolved to a count)."""
    settings = {k: getattr(config, k) for k in RESUME_KEYS if hasattr(config, k)}
    settings.update(devices=devices, model_overrides=_jsonable(overrides))
    return settings


def _saved_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings; keys older checkpoints lack get the value they implied."""
    saved = dict(meta.get("config") or {})
    saved.setdefault("api", "linen")
    saved["devices"] = meta.get("devices", saved.get("devices"))
    saved["model_overrides"] = meta.get("model_overrides", {})
    return saved


def _check_settings(meta: dict[str, Any], config: TrainConfig, settings: dict[str, Any],
                    path: str, step: int) -> None:
    """Refuse a resume whose settings differ from the checkpoint's (unless overridden)."""
    saved = _saved_settings(meta)
    unused = {"momentum"} if saved.get("optimizer") == settings["optimizer"] == "adam" else set()
    differ = [k for k in RESUME_KEYS
              if k not in config.resume_override and k not in unused and k in saved
              and saved[k] != settings[k]
              and not (k == "devices" and saved[k] is None)]  # older checkpoints: unresolved
    if differ:
        have = ", ".join(f"{k}={saved[k]!r}" for k in differ)
        want = ", ".join(f"{k}={settings[k]!r}" for k in differ)
        flags = " ".join(f"--resume-override {k.replace('_', '-')}" for k in differ)
        raise CheckpointError(
            f"train: --resume checkpoint must have the same {', '.join(differ)}, got {path} "
            f"(step {step}) holding {have} while this run asks for {want}; a resume with "
            f"other settings is not exact: pass {flags} to continue anyway (nothing was "
            "overwritten)")


def check_checkpoint_dir(config: TrainConfig, settings: dict[str, Any]) -> str | None:
    """Check the checkpoint directory before anything is written; returns its path.

    Without resume it must be new or hold no checkpoint; with resume it must hold one, and the
    settings of its newest step with readable settings must match the run's.
    """
    if not config.checkpoint_dir:
        return None
    path = os.path.abspath(config.checkpoint_dir)
    check_writable("checkpoint_dir", path, directory=True)
    if not os.path.isdir(path):
        if config.resume:
            raise CheckpointError(f"train: --resume needs a checkpoint in checkpoint_dir, got "
                                  f"{path} which does not exist")
        return path
    reader = Checkpointer(path, create=False)
    try:
        steps = reader.steps()
        if not config.resume:
            if steps:
                raise CheckpointError(
                    f"train: checkpoint_dir must be empty or new (without --resume), got "
                    f"{path} holding a checkpoint at step {steps[-1]}; pass --resume to "
                    "continue it or choose another directory (nothing was overwritten)")
            return path
        if not steps:
            raise CheckpointError(f"train: --resume needs a checkpoint in checkpoint_dir, got "
                                  f"{path} with no checkpoint")
        if config.resume_step is not None and config.resume_step not in steps:
            raise CheckpointError(
                f"train: resume_step must be one of the steps checkpointed in {path} "
                f"({', '.join(map(str, steps))}), got {config.resume_step}")
        for step in _candidates(steps, config):
            try:
                meta = reader.read_meta(step)
            except CheckpointError:
                raise
            except Exception:  # a damaged step: restore_or_init says so and falls back
                continue
            _check_settings(meta, config, settings, path, step)
            break
    finally:
        reader.close()
    return path


def _candidates(steps: Sequence[int], config: TrainConfig) -> list[int]:
    if config.resume_step is not None:
        return [config.resume_step]
    return sorted(steps, reverse=True)


def restore_or_init(
    config: TrainConfig,
    checkpointer: Checkpointer | None,
    init: Callable[[], dict[str, Any]],
    abstract_state: Any,
    *,
    settings: dict[str, Any],
    input_shape: tuple[int, ...],
) -> dict[str, Any]:
    """The state a run starts from: a fresh ``init()``, or with ``config.resume`` the newest
    readable checkpoint (``config.resume_step``: that one).

    A step that cannot be read (damaged files, a killed write) is set aside as
    ``<step>.unreadable`` with one line on stderr naming it and the cause, and the next older
    step is tried. Newer steps than an explicit ``resume_step`` are set aside as
    ``<step>.superseded``, so the resumed run can write its own.

    Args:
      config: the run.
      checkpointer: its checkpoints (None without ``checkpoint_dir``).
      init: builds a fresh state.
      abstract_state: the state's shapes, dtypes and shardings (``jax.ShapeDtypeStruct``).
      settings: the run's values of ``RESUME_KEYS``.
      input_shape: (H, W, C) of the run's images.

    Returns:
      The train state ``{"step", "params", "opt_state", "batch_stats"}``.

    Raises:
      CheckpointError: no step can be read, or the checkpoint is another run's (settings,
        input shape, parameter or optimiser-state layout), in one line.
    """
    if not config.resume or checkpointer is None:
        return init()
    path, want = checkpointer.path, _layout(abstract_state)
    steps = checkpointer.steps()
    unreadable: list[tuple[int, str]] = []
    for step in _candidates(steps, config):
        try:
            meta = checkpointer.read_meta(step)
            _check_settings(meta, config, settings, path, step)
            if tuple(meta["input_shape"]) != tuple(input_shape):
                raise CheckpointError(
                    f"train: --resume checkpoint must be for inputs {tuple(input_shape)}, got "
                    f"{path} (step {step}) for {tuple(meta['input_shape'])}")
            saved = checkpointer.layout(step)
            if saved is not None and saved != want:
                raise CheckpointError(_layout_message(saved, want, meta, config, path, step))
            state = checkpointer.restore(step, abstract_state)
        except CheckpointError:
            raise
        except Exception as err:  # damaged: say so, try the previous step
            unreadable.append((step, _cause(err)))
            if config.resume_step is not None:
                break
            continue
        for bad, why in unreadable:
            name = checkpointer.set_aside(bad, "unreadable")
            _say(f"train: checkpoint step {bad} in {path} is unreadable ({why}); set aside as "
                 f"{name}, resuming from step {step}")
        for newer in [s for s in checkpointer.steps() if s > step]:
            name = checkpointer.set_aside(newer, "superseded")
            _say(f"train: resuming from step {step}: the newer step {newer} in {path} was set "
                 f"aside as {name}")
        return state
    reasons = "; ".join(f"step {s}: {why}" for s, why in unreadable)
    raise CheckpointError(f"train: --resume needs a readable checkpoint, got {path} where "
                          f"{reasons} (nothing was overwritten)")


def _layout_message(saved: dict, want: dict, meta: dict, config: TrainConfig, path: str,
                    step: int) -> str:
    differ = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    part = differ[0].split("/")[0]
    example = differ[0]
    detail = f"{example}: {saved.get(example, 'absent')} saved, {want.get(example, 'absent')} here"
    if part == "opt_state":
        old = (meta.get("config") or {}).get("optimizer")
        return (f"train: --resume checkpoint must hold this run's optimizer state, got {path} "
                f"(step {step}) saved with optimizer {old!r} (this run: {config.optimizer!r}); "
                f"{len(differ)} arrays differ, e.g. {detail}. Optimizer state does not carry "
                "over to another optimizer: start a new run in another --checkpoint-dir")
    return (f"train: --resume checkpoint must hold this model's {part}, got {path} (step "
            f"{step}) where {len(differ)} arrays differ, e.g. {detail}")
