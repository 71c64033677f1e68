"""NPID, NPID++ and PIRL: instance discrimination against a memory bank (``nce_loss_with_memory``).

- [0] NPID, Wu et al. 2018, https://arxiv.org/abs/1805.01978 (4096 negatives, T = 0.07, m = 0.5)
- [1] NPID++ and PIRL, Misra & van der Maaten 2020, https://arxiv.org/abs/1912.01991
  (NPID++: 32,000 negatives and longer training; PIRL: see :mod:`sslcore.methods.pirl`)

Each training sample y owns a row of a memory bank (:class:`~sslcore.methods.memory_bank.MemoryBank`),
indexed by its dataset index (``batch["data_idx"]``). Per step the method:

1. runs the model (one input, or PIRL's named inputs) to get one embedding per output;
2. draws K negatives per sample and output, seeded by (SEED_VALUE, iteration, output, sample id);
3. computes :class:`~sslcore.losses.nce_with_memory.NCELossWithMemory` against the bank;
4. after the optimizer step, writes the (normalised) embeddings of every output, or of output
   ``update_mem_with_emb_index`` only, into the bank rows of their samples, gathered from all
   ranks: ``m_y <- normalize(m * m_y + (1 - m) * z_y)``. VISSL writes during the loss's forward
   pass, after scoring, which trains the same; only with several outputs that all update the
   memory does VISSL score the later outputs against rows the earlier ones already moved, while
   here every output is scored against the memory as the step found it.

The bank and the NCE constant Z are saved in the checkpoint (``classy_state_dict.loss``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sslcore.data.seeding import derive_seed
from sslcore.engine.checkpoint import unwrap
from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.memory_bank import MemoryBank
from sslcore.methods.pirl import check_multi_input_config, model_inputs

log = logging.getLogger(__name__)

_SECTION = "LOSS.nce_loss_with_memory"
_BANK_SEED_TAG = 0xBA4C  # the bank's initial rows: derive_seed(SEED_VALUE, tag)


def count_train_samples(cfg: DictConfig) -> Optional[int]:
    """Size of the training set of ``cfg.DATA.TRAIN`` (after DATA_LIMIT), or None if unreadable.

    Builds the dataset (lists files; loads no image). Failures are logged, not raised: the
    method then asks for ``num_train_samples`` when training starts.
    """
    from sslcore.data import build_dataset

    try:
        return len(build_dataset(cfg, "TRAIN"))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot count the training samples for %s.num_train_samples: %s", _SECTION, exc)
        return None


@register_method
class NPID(SSLMethod):
    """Memory-bank NCE for NPID / NPID++ (one input) and PIRL (patches + image inputs).

    Papers: [0] https://arxiv.org/abs/1805.01978, [1] https://arxiv.org/abs/1912.01991

    Args:
        cfg: the resolved config; reads ``LOSS.nce_loss_with_memory`` (memory_params,
            negative_sampling_params, update_mem_with_emb_index, num_train_samples),
            SEED_VALUE and DATA.TRAIN.INPUT_KEY_NAMES.
        model: the (possibly DDP-wrapped) model.
        loss: the :class:`~sslcore.losses.nce_with_memory.NCELossWithMemory`.

    Raises:
        ValueError: num_train_samples unknown (-1 and the data could not be counted), a memory
            smaller than the data, or inconsistent PIRL settings.
    """

    loss_names = ("nce_loss_with_memory",)

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        section = cfg.LOSS.nce_loss_with_memory
        num_samples = int(section.num_train_samples)
        if num_samples < 1:
            raise ValueError(f"config.{_SECTION}.num_train_samples is {num_samples}: it is inferred "
                             "from DATA.TRAIN when that data can be read (it could not; see the "
                             "warning above). Fix DATA.TRAIN or set num_train_samples")
        mem = section.memory_params
        size = num_samples if int(mem.memory_size) == -1 else int(mem.memory_size)
        if size < num_samples:
            raise ValueError(f"config.{_SECTION}.memory_params.memory_size={size} is smaller than "
                             f"num_train_samples={num_samples}; use -1")
        check_multi_input_config(cfg)
        params = list(unwrap(model).parameters())
        device = params[0].device if params else torch.device("cpu")
        self.seed = int(cfg.SEED_VALUE)
        self.bank = MemoryBank(size, int(mem.embedding_dim), momentum=float(mem.momentum),
                               norm_init=bool(mem.norm_init),
                               seed=derive_seed(self.seed, _BANK_SEED_TAG)).to(device)
        self.num_negatives = int(section.negative_sampling_params.num_negatives)
        self.update_all = bool(mem.update_mem_on_forward)
        self.update_index = int(section.update_mem_with_emb_index)
        self.norm_embedding = bool(section.norm_embedding)
        self.input_names = list(cfg.DATA.TRAIN.INPUT_KEY_NAMES)
        self._pending: List[Tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """``num_train_samples`` = the training set's size, when it is -1 and the data is readable."""
        if int(cfg.LOSS.nce_loss_with_memory.num_train_samples) > 0:
            return {}
        count = count_train_samples(cfg)
        return {} if count is None else {f"{_SECTION}.num_train_samples": count}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Run the model on the batch's input(s); one (B, D) embedding per output."""
        return self.model(model_inputs(batch, self.input_names))

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """NCE of every output against the bank; remembers the embeddings that update it."""
        ids = batch["data_idx"]
        if not self.update_all and not 0 <= self.update_index < len(outputs):
            raise ValueError(f"config.{_SECTION}.update_mem_with_emb_index={self.update_index} but "
                             f"the model gives {len(outputs)} output(s)")
        negatives = [self.bank.sample_negatives(ids, self.num_negatives,
                                                seed_parts=(self.seed, task.iteration, t))
                     for t in range(len(outputs))]
        loss = self.loss(outputs, ids, self.bank.memory, negatives)
        chosen = range(len(outputs)) if self.update_all else [self.update_index]
        self._pending = [(self._for_memory(outputs[i]), ids) for i in chosen]
        return loss

    def _for_memory(self, embedding: torch.Tensor) -> torch.Tensor:
        embedding = embedding.detach().float()
        return F.normalize(embedding, p=2, dim=1) if self.norm_embedding else embedding

    def on_update(self, task: Any) -> None:
        """Write this step's embeddings (all ranks') into the bank."""
        for embedding, ids in self._pending:
            self.bank.update(embedding, ids)
        self._pending = []

    def state_dict(self) -> Dict[str, Any]:
        """The loss state (NCE constant Z) and the memory bank."""
        return {"loss": self.loss.state_dict(), "memory_bank": self.bank.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        if "memory_bank" in state:
            self.bank.load_state_dict(state["memory_bank"])
