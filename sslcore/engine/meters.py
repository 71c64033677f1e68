"""Accuracy meters (VISSL's ``accuracy_list_meter``): top-k accuracy of every model output at once.

A linear probe on several trunk layers gives one output per layer; fine-tuning gives one. The
meter keeps, for each output and each k of ``topk_values``, the number of correct samples and the
number of samples seen; with several processes the counts are summed over them
(:meth:`AccuracyListMeter.sync`), so the accuracy is exact over the whole split, not an average
of per-process accuracies.

Config (VISSL's keys)::

    METERS:
      name: accuracy_list_meter
      accuracy_list_meter: {num_meters: 5, topk_values: [1, 5], meter_names: [res2, ..., res5avg]}

Protocol: top-k classification accuracy as in Goyal et al. 2019,
https://arxiv.org/abs/1905.01235 (linear probes on several layers, top-1/top-5).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import all_reduce_sum

METER_NAMES = ("", "accuracy_list_meter")

declare("METERS", {
    "name": Key("", str, "meter of the train and test phases: 'accuracy_list_meter' (top-k "
                "accuracy of every model output) or '' (none)", choices=METER_NAMES),
    "enable_training_meter": Key(True, bool, "also measure accuracy on the training batches "
                                 "(from the training forward pass, augmented images)"),
    "benchmark_name": Key("linear_eval", str, "the 'benchmark' field of the metrics.json that "
                          "the test phase writes in CHECKPOINT.DIR (not in VISSL): linear_eval "
                          "or finetune"),
    "accuracy_list_meter": {
        "num_meters": Key(1, int, "number of model outputs measured (one per evaluated layer or "
                          "head); must equal the number of outputs"),
        "topk_values": Key([1], list, "the k of top-k accuracy, e.g. [1, 5]"),
        "meter_names": Key([], list, "a name per output (the layer it reads); [] = the feature "
                           "names of LINEAR_EVAL_FEAT_POOL_OPS_MAP in feature evaluation, else "
                           "output0, output1, ..."),
    },
})


class AccuracyListMeter:
    """Top-k accuracy of each of ``num_meters`` model outputs against one target.

    For each output (N, C) and each k, a sample counts as correct when its target is among the
    ``min(k, C)`` highest-scoring classes of its row. Ties are broken toward the lower class index
    (a stable descending sort), as :func:`sslcore.benchmarks.metrics.topk_accuracy` does:
    ``torch.topk`` leaves the order of tied scores unspecified, and on CPU it even differs
    between a whole batch and one of its rows, which would make counts depend on the batching.
    Samples whose target is negative (``ignore_index = -1``) are not counted.

    Args:
        num_meters: M, the number of model outputs.
        topk_values: the k values, each >= 1.
        meter_names: M names (the layers measured); None gives ``output0 ...``.

    Raises:
        ValueError: if M < 1, a k < 1, or the names do not number M; names the config key.

    Example:
        >>> meter = AccuracyListMeter(2, [1, 5], ["res4", "res5avg"])
        >>> meter.update([torch.randn(8, 10), torch.randn(8, 10)], torch.randint(0, 10, (8,)))
        >>> sorted(meter.value()["res4"])
        ['top1', 'top5']
    """

    def __init__(self, num_meters: int, topk_values: Sequence[int],
                 meter_names: Optional[Sequence[str]] = None) -> None:
        key = "config.METERS.accuracy_list_meter"
        if int(num_meters) < 1:
            raise ValueError(f"{key}.num_meters must be >= 1, got {num_meters}")
        ks = [int(k) for k in topk_values]
        if not ks or min(ks) < 1:
            raise ValueError(f"{key}.topk_values must be k >= 1 values such as [1, 5], got {ks}")
        names = [str(n) for n in meter_names] if meter_names else [
            f"output{i}" for i in range(int(num_meters))]
        if len(names) != int(num_meters):
            raise ValueError(f"{key}.meter_names has {len(names)} names for num_meters="
                             f"{num_meters}; give one name per output or []")
        self.names: List[str] = names
        self.topk_values: List[int] = ks
        self.reset()

    def reset(self) -> None:
        """Forget every count (start of a phase)."""
        # (M, K + 1) int64: correct counts per k, then the number of samples
        self.counts = torch.zeros(len(self.names), len(self.topk_values) + 1, dtype=torch.int64)

    def update(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Count one batch.

        Args:
            outputs: M tensors (N, C_m) of scores (logits), one per meter.
            target: (N,) int64 class indices; negative entries are ignored.

        Raises:
            ValueError: if the number of outputs is not M or an output's rows are not N; the
                message names ``METERS.accuracy_list_meter.num_meters``.
        """
        if len(outputs) != len(self.names):
            raise ValueError(
                f"the model gives {len(outputs)} outputs but config.METERS.accuracy_list_meter."
                f"num_meters={len(self.names)} (meter_names {self.names}); set num_meters (and "
                "meter_names) to one per output")
        target = target.detach().reshape(-1)
        keep = target >= 0
        with torch.no_grad():
            rows = []
            for name, out in zip(self.names, outputs):
                if out.ndim != 2 or out.shape[0] != target.shape[0]:
                    raise ValueError(f"meter '{name}': output of shape {tuple(out.shape)} does not "
                                     f"give (N, C) scores for {target.shape[0]} targets")
                k_max = min(max(self.topk_values), out.shape[1])
                order = torch.sort(out.detach(), dim=1, descending=True, stable=True).indices
                top = order[:, :k_max]  # (N, k_max): ties toward the lower class index
                hit = (top == target[:, None]) & keep[:, None]
                row = [hit[:, :min(k, out.shape[1])].any(dim=1).sum() for k in self.topk_values]
                rows.append(torch.stack(row + [keep.sum()]).to("cpu", torch.int64))
            self.counts += torch.stack(rows)

    def sync(self, device: Optional[torch.device] = None) -> None:
        """Sum the counts over all processes (no-op with one); every rank must call it.

        Args:
            device: where the all-reduce runs (CUDA for NCCL); default CPU (gloo).
        """
        reduced = all_reduce_sum(self.counts.to(device or "cpu"))
        self.counts = reduced.to("cpu", torch.int64)

    @property
    def num_samples(self) -> int:
        """Samples counted (by the first meter)."""
        return int(self.counts[0, -1])

    def value(self) -> Dict[str, Dict[str, float]]:
        """``{meter name: {"top1": %, "top5": %, ...}}`` in percent; 0 when nothing was counted."""
        out: Dict[str, Dict[str, float]] = {}
        for name, row in zip(self.names, self.counts.tolist()):
            total = max(row[-1], 1)
            out[name] = {f"top{k}": 100.0 * c / total for k, c in zip(self.topk_values, row[:-1])}
        return out


def build_accuracy_meter(cfg: Any, default_names: Sequence[str] = ()) -> AccuracyListMeter:
    """The meter of ``cfg.METERS.accuracy_list_meter``.

    Args:
        cfg: the whole config.
        default_names: names used when ``meter_names`` is [] and they number ``num_meters``.

    Returns:
        A fresh :class:`AccuracyListMeter`.

    Raises:
        ValueError: invalid ``num_meters``, ``topk_values`` or ``meter_names``.
    """
    meter_cfg = cfg.METERS.accuracy_list_meter
    names = list(meter_cfg.meter_names)
    if not names and len(default_names) == int(meter_cfg.num_meters):
        names = list(default_names)
    return AccuracyListMeter(int(meter_cfg.num_meters), list(meter_cfg.topk_values), names or None)
