"""Seeding, RNG state and LoRA adapter state: what a checkpoint needs to restore a run bit for bit."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adapter_state(model, adapter: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if f".{adapter}." in k and "lora_" in k}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def attach_lora(model, lora, names: tuple[str, ...] = ("default",), gradient_checkpointing: bool = False):
    """``model`` with a fresh LoRA adapter per name (``lora``: a ``LoraConfig``), ``names[0]`` active, in train mode.

    Only adapter weights are trainable. Gradient checkpointing needs the inputs to require grad,
    or the frozen embeddings would cut the graph before the first adapted layer.
    """
    from ..models import LoraSettings, add_lora

    settings = LoraSettings(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=tuple(lora.target_modules))
    for name in names:
        model = add_lora(model, settings, adapter_name=name)
    if len(names) > 1:
        model.set_adapter(names[0])
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model
