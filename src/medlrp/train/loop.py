"""The training loop: epochs of seeded mini-batches through any ``loss_fn(model, batch)``.

Deterministic for a fixed seed on a given machine: the shuffling uses its own ``torch.Generator`` and
nothing reads the global random state after the model is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from medlrp.data.folder import Batch
from medlrp.errors import InputError
from medlrp.train.losses import LossFn, cross_entropy_loss
from medlrp.train.tensors import minibatches


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: Passes over the training data.
        batch_size: Cases per step.
        lr: Peak learning rate of AdamW (cosine decay to 5% over the run).
        weight_decay: AdamW weight decay.
        seed: Seeds the shuffling order.
        recalibrate_bn: After training, recompute the BatchNorm running statistics over the training
            data (exact averages instead of the lagging exponential ones; matters for short runs).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    recalibrate_bn: bool = True

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot train."""
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 2:
            raise InputError(f"--batch-size must be at least 2 (BatchNorm), not {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, not {self.lr}")


@dataclass
class EpochLog:
    """Mean loss terms over an epoch, and the validation accuracy after it (if any)."""

    epoch: int
    parts: dict[str, float]
    val_accuracy: float | None = None


@dataclass
class History:
    """What :func:`fit` did."""

    epochs: list[EpochLog] = field(default_factory=list)


#: Called after every step as ``on_step(epoch, step, steps_per_epoch, parts)``.
StepCallback = Callable[[int, int, int, dict[str, float]], None]


def fit(
    model: nn.Module,
    train: Batch,
    config: TrainConfig,
    val: Batch | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    on_step: StepCallback | None = None,
    score: Callable[[nn.Module, Batch, int], float] | None = None,
) -> History:
    """Train ``model`` in place on ``train``; return the per-epoch history.

    Args:
        model: The model to train (this is training: its parameters change).
        train: All training cases as one batch (see :func:`medlrp.train.tensors.load_all`).
        config: Optimisation settings.
        val: Validation cases; accuracy is measured after every epoch.
        loss_fn: ``loss_fn(model, batch) -> (loss, parts)``; cross-entropy by default.
        on_step: Progress callback.
        score: ``score(model, val, batch_size)`` measured after every epoch (default :func:`accuracy`;
            a segmentation run's Dice), logged as the epoch's ``val_accuracy``.
    """
    config.check()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, len(train.label) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps, eta_min=config.lr * 0.05
    )
    history = History()
    for epoch in range(config.epochs):
        model.train()
        totals: dict[str, float] = {}
        count = 0
        batches = list(minibatches(train, config.batch_size, generator))
        for step, batch in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            loss, parts = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at epoch {epoch + 1}")
            loss.backward()
            optimizer.step()
            scheduler.step()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            count += 1
            if on_step is not None:
                on_step(epoch, step, len(batches), parts)
        log = EpochLog(epoch + 1, {k: v / max(count, 1) for k, v in totals.items()})
        if val is not None:
            log.val_accuracy = (score or accuracy)(model, val, config.batch_size)
        history.epochs.append(log)
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, train, config.batch_size)
    model.eval()
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Batch, batch_size: int = 64) -> None:
    """Set every BatchNorm's running mean and variance to their average over ``data``'s batches.

    The exponential running averages lag behind the weights after a short run; evaluation then sees
    statistics of earlier weights. One forward pass over the training data fixes that.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not all(m.track_running_stats for m in norms):
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        model.train()
        for batch in minibatches(data, batch_size, shuffle=False):
            model(batch.x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, data: Batch, batch_size: int = 64) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every case of ``data``."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(data.x[i : i + batch_size]) for i in range(0, len(data.label), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


def accuracy(model: nn.Module, data: Batch, batch_size: int = 64) -> float:
    """Fraction of ``data`` classified correctly (eval mode)."""
    logits = predict(model, data, batch_size)
    return float((logits.argmax(dim=1) == data.label).float().mean())
