"""The training core shared by the ranker and the fine-tune.

:mod:`.state` restores seeds, RNG and adapter weights; :mod:`.run` holds the
checkpoint, log, progress and resume scaffolding (:class:`TrainingRun`) that both
loops use, so a change to how runs are saved or resumed is made once.
"""

from .run import (CHECKPOINT_NAME, ProgressFn, TrainingRun, load_checked_checkpoint, micro_batches, oom_as_error,
                  trim_log)
from .state import adapter_state, load_adapter_state, rng_state, seed_all, set_rng_state

__all__ = [
    "CHECKPOINT_NAME", "ProgressFn", "TrainingRun", "load_checked_checkpoint", "micro_batches", "oom_as_error",
    "trim_log", "adapter_state", "load_adapter_state", "rng_state", "seed_all", "set_rng_state",
]
