"""A trainer's run (:mod:`.train_identitynet`, :mod:`.train_animatenet`): the run checks (:func:`open_run`) and the
run loop with resume, evaluation, logging, checkpoints and the summary (:func:`run_loop`)."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from portraittalk.ptalk_models.training import (CHECKPOINTS_DIR, CheckpointError, DatasetError, eval_indices,
                                                read_trainer_state)

from .training_cli import TrainError


def open_run(args, dataset_cls, latest_checkpoint: Callable, log: logging.Logger):
    """``(out folder, dataset, newest checkpoint or None)`` of a run: the dataset ``dataset_cls(--data)``
    (``DatasetError`` → :class:`TrainError`) and the checkpoints in ``--out`` checked against ``--resume``
    (``latest_checkpoint(out)``; none to resume from, or some without ``--resume``: :class:`TrainError`)."""
    out = Path(args.out).expanduser()
    try:
        data = dataset_cls(args.data)
    except DatasetError as e:
        raise TrainError(str(e)) from None
    found = latest_checkpoint(out)
    if args.resume and found is None:
        raise TrainError(f"--resume: {out / CHECKPOINTS_DIR} holds no checkpoint to resume from")
    if not args.resume and found is not None:
        raise TrainError(f"{out} already holds checkpoints (newest: step {found[0]}); pass --resume to continue "
                         "that run or choose another --out")
    if args.init and args.resume:
        log.warning("--init is ignored with --resume (the run's own checkpoint is loaded)")
    return out, data, found


def batch_text(config) -> str:
    """``"batch B = n x m"`` of a train config (``n`` micro-batches of ``m``)."""
    return f"batch {config.batch} = {math.ceil(config.batch / config.micro_batch)} x {config.micro_batch}"


# ------------------------------------------------------------------------------------------------ resume
def resume_state(tuner, state_path: Path, config, log: logging.Logger) -> None:
    """Restore the trainer state ``state_path`` into ``tuner`` (``CheckpointError`` → :class:`TrainError`), with
    a warning when the saved config differs from ``config``."""
    tensors, meta = read_trainer_state(state_path)
    try:
        tuner.load_state_tensors(tensors, meta, state_path.name)
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    _warn_config_change(json.loads(meta.get("config", "{}")), config, log)
    print(f"resumed {state_path.name} at step {tuner.step}", flush=True)


def _warn_config_change(saved: dict, config, log: logging.Logger) -> None:
    diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(asdict(config))).items()
            if k in saved and saved[k] != v}
    if diff:
        log.warning("resuming with settings that differ from the saved run (the result will not equal an "
                    "uninterrupted run): %s", ", ".join(f"{k} {a} → {b}" for k, (a, b) in diff.items()))


# -------------------------------------------------------------------------------------------- the record
class RunRecord:
    """What one run of the loop records: a ``train_log.jsonl`` line per step and evaluation (appended to
    ``out``'s), and this run's losses, step times, evaluations (fixed batch ``eval_idx``) and checkpoints."""

    def __init__(self, out: Path, tuner, eval_idx, seed: int, eval_unit: str):
        self.tuner, self.eval_idx, self.seed, self.eval_unit = tuner, eval_idx, seed, eval_unit
        self.start = tuner.step
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self.evals: list[dict] = []
        self.written: list = []
        self._log = open(out / "train_log.jsonl", "a", encoding="utf-8")

    def _write(self, entry: dict) -> None:
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    def evaluate(self) -> None:
        """The fixed-batch loss (fixed noise: ``seed + 99991``), logged and printed; nothing without a batch."""
        if self.eval_idx:
            v = self.tuner.evaluate(self.eval_idx, seed=self.seed + 99991)
            step = self.tuner.step
            self.evals.append({"step": step, "loss": v})
            self._write({"step": step, "eval_loss": v})
            print(f"eval step {step}: fixed-batch loss {v:.6f} ({len(self.eval_idx)} {self.eval_unit})", flush=True)

    def step(self, loss: float, seconds: float) -> None:
        """Record the optimiser step just taken (``tuner.step`` is its number)."""
        self.losses.append(loss)
        self.step_seconds.append(seconds)
        self._write({"step": self.tuner.step, "loss": loss, "seconds": round(seconds, 4)})

    def close(self) -> None:
        self._log.close()


# ---------------------------------------------------------------------------------------------- the loop
def _train_step(tuner) -> tuple[float, float]:
    """``(loss, seconds)`` of one optimiser step; a non-finite loss raises :class:`TrainError` (code 1)."""
    t0 = time.perf_counter()
    loss = tuner.train_step()
    dt = time.perf_counter() - t0
    if not math.isfinite(loss):
        raise TrainError(f"loss became {loss} at step {tuner.step}; lower --lr", code=1)
    return loss, dt


def _train(args, tuner, record: RunRecord, config, save_checkpoint: Callable, out: Path, run_args: dict) -> None:
    """Steps up to ``--steps``: evaluations before the first, every ``--eval-every`` and after the last step,
    ``save_checkpoint`` every ``--save-every`` steps and at the end."""
    if tuner.step >= args.steps:
        print(f"already at step {tuner.step} >= --steps {args.steps}; nothing to train", flush=True)
    else:
        record.evaluate()
    while tuner.step < args.steps:
        loss, dt = _train_step(tuner)
        record.step(loss, dt)
        if not args.quiet:
            print(f"step {tuner.step}/{args.steps}  loss {loss:.6f}  {dt:.2f} s  "
                  f"{config.batch / dt:.2f} samples/s", flush=True)
        if args.eval_every and tuner.step % args.eval_every == 0 and tuner.step < args.steps:
            record.evaluate()
        if tuner.step % args.save_every == 0 or tuner.step == args.steps:
            record.written.append(save_checkpoint(out, tuner, run_args))
    if record.losses:
        record.evaluate()


def _summary(record: RunRecord, config, device, precision: str) -> dict:
    """The summary entries of :func:`run_loop` (without ``save_final``'s)."""
    steps_run, train_s = len(record.losses), sum(record.step_seconds)
    return {"step": record.tuner.step, "start_step": record.start, "losses": record.losses, "eval": record.evals,
            "seconds_per_step": train_s / steps_run if steps_run else None,
            "samples_per_second": steps_run * config.batch / train_s if steps_run and train_s > 0 else None,
            "checkpoints": [str(a) for a, _ in record.written], "device": str(device), "precision": precision}


def _done_line(step: int, summary: dict, steps_run: int, done_prefix: str, final_text: str) -> str:
    """The last line of a run: ``done: [prefix]step N; k step(s) in this run[, speed]; final_text``."""
    return (f"done: {done_prefix}step {step}; {steps_run} step(s) in this run"
            + (f", {summary['seconds_per_step']:.2f} s/step, {summary['samples_per_second']:.2f} samples/s"
               if steps_run else "") + f"; {final_text}")


def run_loop(args, tuner, *, save_checkpoint: Callable, out: Path, config, precision: str, device,
             state_path: Path | None, t_load: float, log: logging.Logger, describe: Callable[[float], None],
             eval_unit: str, save_final: Callable[[dict], tuple[dict, str]], done_prefix: str = "") -> dict:
    """The loop of a trainer's ``train``: resume (``state_path``: the trainer state to restore, with a warning
    when the saved config differs), the banner (``describe(setup seconds)``), the fixed-batch evaluation
    (``eval_indices`` of ``--eval-samples``; before the first and after the last step, every ``--eval-every``),
    one ``train_log.jsonl`` line per step and evaluation, ``save_checkpoint(out, tuner, run args)`` (the
    network's) every ``--save-every`` steps and at the end, then ``save_final(run_args)`` → ``(summary entries,
    "what → file" for the last line)``.

    Returns the summary: ``step``, ``start_step``, ``losses`` (per step of this run), ``eval``
    (``[{step, loss}]``), ``seconds_per_step``, ``samples_per_second`` (optimiser steps only, without
    evaluation and checkpoint writing), ``checkpoints`` (written), ``device``, ``precision`` + ``save_final``'s.
    A non-finite loss raises :class:`TrainError` (code 1)."""
    run_args = dict(vars(args))
    run_args.update(precision=precision, device=str(device))
    if state_path is not None:
        resume_state(tuner, state_path, config, log)
    t_load = time.perf_counter() - t_load
    out.mkdir(parents=True, exist_ok=True)
    describe(t_load)

    eval_idx = eval_indices(len(tuner.dataset), args.eval_samples)
    record = RunRecord(out, tuner, eval_idx, args.seed, eval_unit)
    try:
        _train(args, tuner, record, config, save_checkpoint, out, run_args)
    finally:
        record.close()
    extra, final_text = save_final(run_args)
    summary = _summary(record, config, device, precision)
    summary.update(extra)
    print(_done_line(tuner.step, summary, len(record.losses), done_prefix, final_text), flush=True)
    return summary
