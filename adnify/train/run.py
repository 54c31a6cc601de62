"""The ``train()`` entry point: open or resume a run directory, prepare the session, run the loop."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import AdnifyError, first_line
from .loop import StepInfo, TrainResult, run_loop
from .rundir import RunDir

__all__ = ["train"]


def _run_info(source: Any, data: str | None, recipe: str | None, **options: Any) -> dict[str, Any]:
    if data is None:
        raise AdnifyError("no training data: pass --data (a folder, a save_to_disk folder, a Hub name or builtin:digits)")
    shown = source if isinstance(source, str) else f"<{type(source).__name__} object>"
    return {"source": shown, "data": data, "recipe": recipe or "resnet", **options}


def train(
    source: str | os.PathLike | nn.Module | None,
    *,
    data: str | None = None,
    output: str | os.PathLike | None = None,
    recipe: str | None = None,
    overrides: dict[str, Any] | None = None,
    convert_options: dict[str, Any] | None = None,
    baseline: bool = False,
    pattern: str | None = None,
    resume: bool = False,
    force: bool = False,
    eval_split: str | None = None,
    val_split: float = 0.1,
    image_column: str | None = None,
    label_column: str | None = None,
    max_steps: int | None = None,
    mixed_precision: str = "auto",
    log_with: str | None = None,
    cpu: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[StepInfo], None]] = (),
) -> TrainResult:
    """Train an adaptive depth network (or, with ``baseline``, the plain network) with a recipe.

    Args:
        source: a timm name (converted with ``convert_options``), a converted model directory, a
            run directory (with ``resume``: the run to continue), or a module.
        data: what :func:`adnify.io.data.load_image_data` reads; stored in the run, so not needed to resume.
        output: the run directory; default: ``source`` when resuming.
        recipe: a shipped recipe name or a YAML path (default ``resnet``); resuming uses the run's config.yaml.
        overrides: recipe keys to change, e.g. ``{"epochs": 5, "order": "sequential"}``.
        convert_options: keyword arguments of :func:`adnify.convert` for a timm name (``num_classes``
            also resizes the head of a saved model).
        baseline: train the network without adnify: the unconverted model, or with ``pattern`` the
            static sub-network ``net.export(pattern)``, with plain CE (KL to the original model label-free).
        pattern: the sub-network a baseline trains (``TTTT`` = the individual base-net).
        resume: continue the run in ``output`` from its last checkpoint.
        force: start over in an existing ``output``, deleting what is there.
        eval_split, val_split, image_column, label_column: see :func:`adnify.io.data.load_image_data`.
        max_steps: stop (with a checkpoint and the final model) once this many steps are done.
        mixed_precision: ``auto`` (fp16 on CUDA when the recipe's ``amp`` is on, else none), ``no``,
            ``fp16`` or ``bf16``.
        log_with: an accelerate tracker, e.g. ``tensorboard`` (logs under ``RUN_DIR/tensorboard``).
        cpu: train on the CPU even when a GPU is present.
        progress: show the progress bar and per-epoch results (main process only).
        callbacks: called after every optimizer step with a :class:`StepInfo`.

    Returns:
        A :class:`TrainResult`; the model is in ``RUN_DIR/final`` (``adnify.load(RUN_DIR)``).

    Raises:
        AdnifyError: bad input (data, labels, recipe keys, an existing run directory) or a NaN loss.
    """
    from .session import load_config, make_accelerator, prepare_session

    if output is None:
        if not (resume and isinstance(source, (str, os.PathLike))):
            raise AdnifyError("no run directory: pass --output/-o (or a run directory with --resume)")
        output = source
    run = RunDir(output)
    run.check_new(resume=resume, force=force)
    overrides = dict(overrides or {})
    if resume:
        info = run.read_run()
        if data is not None:
            info["data"] = data  # the data moved, say
        if isinstance(source, (str, os.PathLike)) and Path(source).resolve() != run.path.resolve():
            source = info.get("source")
    else:
        if pattern is not None and not baseline:
            raise AdnifyError("--pattern selects the static network of a --baseline run: add --baseline")
        info = _run_info(source, data, recipe, baseline=None, eval_split=eval_split, val_split=val_split,
                         image_column=image_column, label_column=label_column,
                         convert_options=dict(convert_options or {}))
        if convert_options and convert_options.get("shared_norms"):
            overrides.setdefault("shared_norms", True)
    config = load_config(run, recipe, overrides, resume)
    if baseline and not resume:
        info["baseline"] = pattern or "super"
    accelerator = make_accelerator(
        config, run, mixed_precision=mixed_precision, cpu=cpu, log_with=log_with,
        find_unused=config["order"] == "sequential" and not info.get("baseline"),
    )
    try:
        if resume and progress:
            accelerator.print(f"resuming {run.path}")
        with contextlib.ExitStack() as quiet:
            if not progress:  # -q: not even a download's bars
                from ..io.data_sources import progress_bars_off

                quiet.enter_context(progress_bars_off())
            session = _prepare(source, run, config, info, accelerator, resume, force, prepare_session)
        if log_with:
            accelerator.init_trackers("tensorboard" if log_with == "tensorboard" else "trackers",
                                      config=_flat(config))
        return run_loop(session, max_steps=max_steps, show_progress=progress, callbacks=tuple(callbacks))
    finally:
        accelerator.end_training()


def _prepare(source: Any, run: RunDir, config: dict[str, Any], info: dict[str, Any], accelerator: Any,
             resume: bool, force: bool, prepare_session: Callable) -> Any:
    session = prepare_session(source, run, config, info, accelerator, resume=resume, force=force)
    checkpoint = _load_newest_intact(run, accelerator) if resume else None
    if checkpoint is not None:
        session.scheduler.step_update(num_updates=session.state.step)
        if accelerator.is_main_process:
            run.truncate_metrics(session.state.step)
    return session


def _load_newest_intact(run: RunDir, accelerator: Any) -> Path | None:
    """Load the newest checkpoint that loads; warn about each damaged one skipped (a crash mid-write, a
    full disk). Every later load overwrites all that an earlier, failed one may have half-loaded."""
    steps = run.checkpoint_steps()
    damaged: list[str] = []
    for step in reversed(steps):
        path = run.checkpoint(step)
        try:
            accelerator.load_state(str(path))
        except Exception as err:  # safetensors, torch.load and accelerate raise many kinds here
            reason = first_line(err, with_type=True)
            damaged.append(f"{path.name} ({reason})")
            if accelerator.is_main_process:
                print(f"warning: checkpoint {path} is damaged ({reason}); trying the one before it", file=sys.stderr)
            continue
        if damaged and accelerator.is_main_process:
            print(f"warning: resuming from {path.name}, the newest intact checkpoint", file=sys.stderr)
        return path
    if damaged:
        raise AdnifyError(f"cannot resume {run.path}: no checkpoint is intact ({'; '.join(damaged)}); start over "
                          "with --force")
    return None


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker hyper-parameters must be scalars."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
