"""A tiny sslcore checkpoint written the way the training engine writes one."""

from pathlib import Path

import torch
from omegaconf import OmegaConf

THIN = ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.125",
        'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[64,16]}]]']


def write_engine_checkpoint(ckpt_dir: Path, overrides=(), seed: int = 0):
    """Build a thin ResNet-18 model from the config, save it with ``save_checkpoint``.

    Returns:
        (path of model_final_checkpoint_phase0.torch, the model).
    """
    from sslcore.config import compose_config
    from sslcore.engine.checkpoint import save_checkpoint
    from sslcore.models import build_model

    cfg = compose_config([*THIN, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.MODEL).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    path = save_checkpoint(Path(ckpt_dir) / "model_final_checkpoint_phase0.torch", model=model,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1), method_state={},
                           phase_idx=0, iteration=1, phase_complete=True, iteration_in_phase=1,
                           config=OmegaConf.to_container(cfg, resolve=True))
    return path, model
