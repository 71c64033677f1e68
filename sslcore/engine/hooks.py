"""Hooks: VISSL's hook points, called by the train loop in this order::

    on_start
    for each phase (epoch):
        on_phase_start
        for each iteration:
            forward          -> on_forward
            loss, meters     -> on_loss_and_meter
            backward         -> on_backward
            optimizer step   -> on_update
                             -> on_step
        on_phase_end
    on_end

A hook receives the :class:`~sslcore.engine.trainer.TrainTask` and reads or changes its state.
Methods (momentum encoders, queues, memory banks, prototypes) are hooks too: they subclass
:class:`sslcore.methods.base.SSLMethod`.
"""

from __future__ import annotations

from typing import Any, Iterable, List

HOOK_POINTS = ("on_start", "on_phase_start", "on_forward", "on_loss_and_meter", "on_backward",
               "on_update", "on_step", "on_phase_end", "on_end")


class Hook:
    """Base class: every hook point is a no-op; subclasses override the ones they need."""

    def on_start(self, task: Any) -> None:
        """Once, after the task is built and restored from a checkpoint."""

    def on_phase_start(self, task: Any) -> None:
        """At the start of every phase (epoch), after the sampler's epoch is set."""

    def on_forward(self, task: Any) -> None:
        """After the model's forward pass; ``task.last_output`` holds its outputs."""

    def on_loss_and_meter(self, task: Any) -> None:
        """After the loss is computed; ``task.last_loss`` holds it (a scalar tensor)."""

    def on_backward(self, task: Any) -> None:
        """After ``loss.backward()``, before the optimizer step (gradients can be changed)."""

    def on_update(self, task: Any) -> None:
        """After the optimizer step (e.g. momentum-encoder update, prototype normalisation)."""

    def on_step(self, task: Any) -> None:
        """At the end of every iteration, after ``task.iteration`` was incremented."""

    def on_phase_end(self, task: Any) -> None:
        """At the end of every phase (epoch), after ``task.phase_idx`` finished."""

    def on_end(self, task: Any) -> None:
        """Once, after the last phase (also runs when training stops early)."""


def run_hooks(hooks: Iterable[Hook], point: str, task: Any) -> None:
    """Call ``point`` on every hook in order.

    Raises:
        ValueError: if ``point`` is not one of :data:`HOOK_POINTS`.
    """
    if point not in HOOK_POINTS:
        raise ValueError(f"unknown hook point '{point}'; valid: {', '.join(HOOK_POINTS)}")
    for hook in hooks:
        getattr(hook, point)(task)


def hook_names(hooks: List[Hook]) -> List[str]:
    """Class names of ``hooks``, for logging."""
    return [type(h).__name__ for h in hooks]
