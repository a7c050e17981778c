"""Fine-tune a :class:`~tokenuni.finetune.model.GlueModel` on a GLUE task: one plain, seeded torch loop.

The loop (:func:`finetune`) follows the protocol of the papers it serves — Yan et al. (UAI 2022,
SoftDecay: lr 2e-5, 3 epochs, max length 128, batch 32) and Rudman & Eickhoff (ICLR 2024, I-STAR) —
with what Hugging Face's ``Trainer`` does by default:

* AdamW (torch's fused implementation on CPU and CUDA) over ``model.parameter_groups(lr, weight_decay)``
  (the model decides the groups: no decay on biases/LayerNorm, SoftDecay's α with its own learning
  rate); a linear schedule, warm-up over
  ``ceil(warmup_ratio × total steps)`` optimizer steps from 0, then linear decay to 0 at the last
  step; every group follows it (α's own learning rate too).
* seeds for python, numpy and torch (:func:`set_seed`); the batch order of epoch e comes from
  ``numpy.random.default_rng([seed, e])`` — independent of any other random state.
* batches: plain shuffled (default), or length-grouped (``group_by_length``: shuffle, sort chunks of
  50 batches by length, shuffle the batches — less padding, slightly different gradient noise); the
  last batch may be short. Dynamic padding to the longest sequence of each batch (right padding).
* mixed precision only on CUDA: ``precision="auto"`` is bf16 autocast where the GPU supports it, else
  fp16 autocast with a ``GradScaler``; the CPU always runs float32.
* ``grad_accumulation`` micro-batches of ``batch_size`` per optimizer step (effective batch
  ``batch_size × grad_accumulation``); each micro-batch loss is divided by the number of micro-batches
  of its step; gradient norm clipped to ``max_grad_norm`` (1.0).
* loss = task loss (cross-entropy, or MSE on the 0–5 score for STS-B) + Σ ``model.regularisation(output,
  attention_mask).values()`` (I-STAR, cosine regulariser: terms already multiplied by their λ).
* ``model.start_epoch(sample_hidden)`` before every epoch: ``sample_hidden()`` yields, in eval mode
  and without gradients, ``(hidden_states, attention_mask)`` of training batches in a seeded random
  order, lazily, until the model stops reading (or ``sample_tokens`` real tokens were yielded).
* a step whose loss or gradient norm is not finite is skipped (counted in ``skipped_steps``; fp16's
  scaler skips its own overflow steps); more than 20 in a row is an error.

Curves go to ``log(key, value, step)`` (``step`` = optimizer steps done): every ``log_every`` steps
``train/loss`` (total), ``train/task_loss``, ``train/<term>`` per regulariser term and ``train/grad_norm``
(before clipping), each averaged over the finite steps since the last point, ``train/lr`` (the rate
of the first parameter group used by the last step), and, where the model offers them (GlueModel does),
the unweighted regulariser values of ``model.last_regulariser_values`` (``train/isoscore_star``,
``train/mean_cosine``) and ``train/softdecay_alpha`` (``model.alpha``); after every epoch
and every ``eval_every`` steps ``dev/<metric>`` (see :func:`tokenuni.glue.glue_metrics`, 0–1 scale) and
``dev/loss``. The same curves come back in the returned summary.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from tokenuni.finetune.batches import Encoded, _model_inputs, make_batches
from tokenuni.finetune.inference import (  # noqa: F401  (predict, task_loss, _infer, _to_predictions: re-exported)
    _evaluate, _infer, _logits, _to_predictions, predict, task_loss)
from tokenuni.finetune.runtime import (  # noqa: F401  (PRECISIONS: re-exported)
    PRECISIONS, _autocast, _device, resolve_precision, set_seed)
from tokenuni.glue import task_spec

logger = logging.getLogger(__name__)

#: consecutive non-finite steps tolerated before training stops with an error
MAX_CONSECUTIVE_SKIPPED = 20


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor after ``step`` optimizer steps: 0 → 1 over the warm-up, then 1 → 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


# -- training --------------------------------------------------------------------------------------
def finetune(model, tokenizer, task, train, dev, *, epochs: int, lr: float, batch_size: int, max_length: int,
             weight_decay: float = 0.01, warmup_ratio: float = 0.1, grad_accumulation: int = 1, seed: int,
             device, log: Callable[[str, float, int], None] | None = None, eval_every: int | None = None,
             progress: bool = True, log_every: int = 10, group_by_length: bool = False, precision: str = "auto",
             max_grad_norm: float | None = 1.0, sample_tokens: int | None = None,
             on_final_dev_batch: Callable | None = None) -> dict:
    """Fine-tune ``model`` (a GlueModel, see the module docstring) on ``task``; return a summary.

    ``task``: a :data:`tokenuni.glue.GLUE_TASKS` name (or entry). ``train`` / ``dev``: ``(texts_a,
    texts_b or None, labels)`` as :func:`tokenuni.glue.load_task` returns, or :class:`Encoded` examples
    (tokenised by the caller with this tokenizer and ``max_length``). ``device``: "cpu", "cuda",
    "auto" or a torch device; the model is moved there. ``log``: called as ``log(key, value, step)``
    (see the module docstring for the keys). ``sample_tokens``: cap of real tokens ``sample_hidden``
    yields per call (``None``: no cap — the whole training set at most; GlueModel's I-STAR stops
    reading at its own ``c0_tokens``). ``group_by_length``, ``precision``, ``max_grad_norm``,
    ``log_every``: see the module docstring. ``on_final_dev_batch(index, batch, output)``: called for every
    batch of the final dev evaluation (the one whose metrics are returned; see :func:`_infer`).

    Returns a dict: ``task``, ``main_metric``, ``main`` (its final dev value), ``dev`` (final dev
    metrics and ``loss``), ``best_dev`` (the evaluation with the best main metric, with ``step`` and
    ``epoch``), ``dev_history``, ``curves`` (key → [[step, value], …]) and ``curve_lengths``,
    ``final_loss`` (mean total loss of the last optimizer step), ``steps``, ``steps_per_epoch``,
    ``warmup_steps``, ``skipped_steps``, ``train_examples``, ``dev_examples``, ``effective_batch_size``,
    ``dev_logits`` (the final evaluation's logits, or scores, in dev order: a numpy array, not JSON),
    ``seconds`` (all), ``tokenise_seconds`` / ``train_seconds`` / ``eval_seconds`` / ``start_epoch_seconds``
    (wall clock) and the same as ``*_cpu_seconds`` (the process's CPU time, all threads: comparable on a
    busy machine),
    ``seconds_per_epoch`` (training part of each epoch), ``tokens`` (real training tokens) and
    ``tokens_per_second`` (over ``train_seconds``), ``precision``, ``device``, ``seed``.
    """
    import torch
    from tqdm.auto import tqdm

    started = time.perf_counter()
    spec = task_spec(task)
    task_name = spec["name"]
    regression = spec["regression"]
    if epochs < 1 or batch_size < 1 or grad_accumulation < 1 or log_every < 1:
        raise ValueError("epochs, batch_size, grad_accumulation and log_every must be >= 1")
    if eval_every is not None and eval_every < 1:
        raise ValueError("eval_every must be >= 1 (or None)")
    device = _device(device)
    precision = resolve_precision(precision, device)
    set_seed(seed)

    tokenise_started, tokenise_cpu = time.perf_counter(), time.process_time()
    train_data = train if isinstance(train, Encoded) else Encoded(tokenizer, train[0], train[1], train[2], max_length)
    dev_data = dev if isinstance(dev, Encoded) else Encoded(tokenizer, dev[0], dev[1], dev[2], max_length)
    if train_data.labels is None or dev_data.labels is None:
        raise ValueError("training and dev examples need labels")
    tokenise_seconds, tokenise_cpu = time.perf_counter() - tokenise_started, time.process_time() - tokenise_cpu
    model.to(device)

    n_batches = math.ceil(len(train_data) / batch_size)
    steps_per_epoch = math.ceil(n_batches / grad_accumulation)
    total_steps = steps_per_epoch * epochs
    warmup_steps = math.ceil(total_steps * warmup_ratio)
    # the fused kernel: one pass over each parameter (5× faster than the per-tensor loop on a CPU, where the
    # 30k × d word-embedding matrix dominates a small model's optimizer step); same update rule
    optimizer = torch.optim.AdamW(model.parameter_groups(lr, weight_decay), lr=lr, weight_decay=weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup_steps, total_steps))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    curves: dict[str, list[list[float]]] = defaultdict(list)
    dev_history: list[dict] = []
    final_logits: list[np.ndarray] = []

    def emit(key: str, value: float, step: int) -> None:
        value = float(value)
        curves[key].append([step, value])
        if log is not None:
            log(key, value, step)

    def evaluate(step: int, epoch: float, final: bool = False) -> dict:
        metrics, logits = _evaluate(model, dev_data, spec, batch_size, device, precision,
                                    on_batch=on_final_dev_batch if final else None)
        if final:
            final_logits.append(logits)
        for name, value in metrics.items():
            emit(f"dev/{name}", value, step)
        dev_history.append({"step": step, "epoch": epoch, **metrics})
        return metrics

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step = 0
    tokens = 0
    skipped = consecutive_skipped = overflow_steps = 0
    train_seconds = eval_seconds = start_epoch_seconds = 0.0
    train_cpu = eval_cpu = start_epoch_cpu = 0.0
    seconds_per_epoch: list[float] = []
    window: dict[str, float] = defaultdict(float)  # sums since the last logged point
    window_steps = 0
    final_loss = math.nan
    last_eval_step = -1
    bar = tqdm(total=total_steps, desc=f"finetune {task_name}", unit="step", disable=not progress)
    try:
        for epoch in range(epochs):
            # -- the epoch hook: hidden states of a seeded sample of training batches, no grad
            hook_started, hook_cpu = time.perf_counter(), time.process_time()
            generators = []

            def sample_hidden(epoch=epoch, generators=generators):
                def generate():
                    model.eval()
                    yielded = 0
                    order = np.random.default_rng([seed, epoch, 1]).permutation(len(train_data))
                    try:
                        for start in range(0, len(order), batch_size):
                            batch = train_data.batch(order[start:start + batch_size], device)
                            with torch.no_grad(), _autocast(precision, device):
                                output = model(**_model_inputs(batch))
                            yield output.hidden_states, batch["attention_mask"]
                            yielded += int(batch["attention_mask"].sum())
                            if sample_tokens is not None and yielded >= sample_tokens:
                                break
                    finally:
                        model.train()
                generator = generate()
                generators.append(generator)
                return generator

            model.train()
            model.start_epoch(sample_hidden)
            for generator in generators:
                generator.close()
            model.train()
            synchronize()
            start_epoch_seconds += time.perf_counter() - hook_started
            start_epoch_cpu += time.process_time() - hook_cpu

            # -- the epoch
            epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
            epoch_eval = epoch_eval_cpu = 0.0
            batches = make_batches(train_data.lengths, batch_size, np.random.default_rng([seed, epoch]),
                                   group_by_length)
            optimizer.zero_grad(set_to_none=True)
            for first in range(0, len(batches), grad_accumulation):
                group = batches[first:first + grad_accumulation]
                sums: dict[str, float] = defaultdict(float)
                finite = True
                for index in group:
                    batch = train_data.batch(index, device)
                    with _autocast(precision, device):
                        output = model(**_model_inputs(batch))
                        loss_task = task_loss(_logits(output), batch["labels"], regression)
                        terms = model.regularisation(output, batch["attention_mask"])
                    loss = loss_task + sum(terms.values()) if terms else loss_task
                    if not torch.isfinite(loss.detach()):
                        finite = False
                        break
                    (scaler.scale(loss / len(group)) if scaler else loss / len(group)).backward()
                    tokens += int(batch["attention_mask"].sum())
                    sums["train/loss"] += float(loss.detach()) / len(group)
                    sums["train/task_loss"] += float(loss_task.detach()) / len(group)
                    for name, value in terms.items():
                        sums[f"train/{name}"] += float(value.detach()) / len(group)
                    for name, value in (getattr(model, "last_regulariser_values", None) or {}).items():
                        sums[f"train/{name}"] += float(value) / len(group)  # unweighted, e.g. isoscore_star

                grad_norm, status = math.nan, "ok" if finite else "non-finite"
                if finite:
                    if scaler:
                        scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(
                        parameters, max_grad_norm if max_grad_norm is not None else math.inf))
                    if scaler:
                        scale = scaler.get_scale()
                        scaler.step(optimizer)  # skips the update itself when a gradient overflowed
                        scaler.update()
                        if scaler.get_scale() < scale:
                            status = "overflow"
                    elif math.isfinite(grad_norm):
                        optimizer.step()
                    else:
                        status = "non-finite"
                optimizer.zero_grad(set_to_none=True)
                step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                            category=UserWarning)
                    scheduler.step()
                step += 1
                bar.update(1)
                if status == "ok":
                    consecutive_skipped = 0
                    final_loss = sums["train/loss"]
                    for key, value in sums.items():
                        window[key] += value
                    window["train/grad_norm"] += grad_norm
                    window_steps += 1
                elif status == "overflow":  # fp16 loss scaling at work: not an error
                    overflow_steps += 1
                else:
                    skipped += 1
                    consecutive_skipped += 1
                    logger.warning("step %d: non-finite loss or gradient, update skipped", step)
                    if consecutive_skipped > MAX_CONSECUTIVE_SKIPPED:
                        raise FloatingPointError(f"{consecutive_skipped} consecutive non-finite steps (last: step "
                                                 f"{step}, epoch {epoch}); lower the learning rate or λ")

                if step % log_every == 0 or step == total_steps:
                    if window_steps:
                        for key, value in window.items():
                            emit(key, value / window_steps, step)
                        bar.set_postfix(loss=f"{window['train/loss'] / window_steps:.4f}")
                    emit("train/lr", step_lr, step)
                    with torch.no_grad():
                        alpha = getattr(model, "alpha", None)
                    if isinstance(alpha, float):
                        emit("train/softdecay_alpha", alpha, step)
                    window.clear()
                    window_steps = 0
                if eval_every and step % eval_every == 0 and first + grad_accumulation < len(batches):
                    synchronize()
                    eval_started, eval_started_cpu = time.perf_counter(), time.process_time()
                    evaluate(step, epoch + (first + len(group)) / len(batches))
                    last_eval_step = step
                    epoch_eval += time.perf_counter() - eval_started
                    epoch_eval_cpu += time.process_time() - eval_started_cpu

            synchronize()
            eval_started, eval_started_cpu = time.perf_counter(), time.process_time()
            if last_eval_step != step or epoch == epochs - 1:
                evaluate(step, epoch + 1, final=epoch == epochs - 1)
                last_eval_step = step
            epoch_eval += time.perf_counter() - eval_started
            epoch_eval_cpu += time.process_time() - eval_started_cpu
            eval_seconds += epoch_eval
            eval_cpu += epoch_eval_cpu
            seconds_per_epoch.append(time.perf_counter() - epoch_started - epoch_eval)
            train_seconds += seconds_per_epoch[-1]
            train_cpu += time.process_time() - epoch_cpu - epoch_eval_cpu
    finally:
        bar.close()

    final = {k: v for k, v in dev_history[-1].items() if k not in ("step", "epoch")}
    main = spec["main_metric"]
    scored = [h for h in dev_history if not math.isnan(h[main])]
    best = max(scored, key=lambda h: h[main]) if scored else dev_history[-1]
    return {
        "task": task_name,
        "main_metric": main,
        "main": final[main],
        "dev": final,
        "best_dev": dict(best),
        "dev_history": dev_history,
        "curves": dict(curves),
        "curve_lengths": {key: len(points) for key, points in curves.items()},
        "final_loss": final_loss,
        "epochs": epochs,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup_steps,
        "skipped_steps": skipped,
        "fp16_overflow_steps": overflow_steps,
        "train_examples": len(train_data),
        "dev_examples": len(dev_data),
        "effective_batch_size": batch_size * grad_accumulation,
        "dev_logits": final_logits[-1],
        "seconds": time.perf_counter() - started,
        "tokenise_seconds": tokenise_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "start_epoch_seconds": start_epoch_seconds,
        "tokenise_cpu_seconds": tokenise_cpu,
        "train_cpu_seconds": train_cpu,
        "eval_cpu_seconds": eval_cpu,
        "start_epoch_cpu_seconds": start_epoch_cpu,
        "seconds_per_epoch": seconds_per_epoch,
        "tokens": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds > 0 else math.nan,
        "precision": precision,
        "device": str(device),
        "seed": seed,
    }
