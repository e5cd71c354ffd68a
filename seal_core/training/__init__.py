"""The training core shared by the ranker and the fine-tune.

:mod:`.state` restores seeds, RNG and adapter weights; :mod:`.checkpoint` reads and
writes checkpoints without pickle (safetensors + JSON); :mod:`.run` holds the
checkpoint, log, progress and resume scaffolding (:class:`TrainingRun`) that both
loops use, so a change to how runs are saved or resumed is made once.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import Dist, device_for, init_distributed, is_main_process, shutdown_distributed
from .run import (CHECKPOINT_NAME, CheckpointMismatch, ProgressFn, TrainingRun, load_checked_checkpoint, micro_batches,
                  oom_as_error, trim_log)
from .state import adapter_state, attach_lora, load_adapter_state, rng_state, seed_all, set_rng_state

__all__ = [
    "Dist", "device_for", "init_distributed", "is_main_process", "shutdown_distributed", "CHECKPOINT_NAME", "CheckpointError", "CheckpointMismatch", "load_checkpoint", "save_checkpoint", "ProgressFn", "TrainingRun", "load_checked_checkpoint", "micro_batches", "oom_as_error",
    "trim_log", "adapter_state", "attach_lora", "load_adapter_state", "rng_state", "seed_all", "set_rng_state",
]
