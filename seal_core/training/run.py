"""The scaffolding every training loop shares: checkpoint, log, progress bar and resume.

A loop keeps its own state in a dataclass with ``to_checkpoint()``/``from_checkpoint()``;
:class:`TrainingRun` writes that state together with the resolved config, the sample ids
it was made for and the RNG state, so ``--resume`` refuses a checkpoint from another run
and continues a matching one bit for bit. ``train_log.jsonl`` is kept in step with the
checkpoint, so a resumed run's log reads as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch

from ..errors import SealError
from ..faults import fault_point
from ..progress import ProgressFn
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import Dist
from .state import rng_state, set_rng_state

CHECKPOINT_NAME = "last.safetensors"
# Earlier versions pickled checkpoints; those are never loaded (unpickling can run code).
LEGACY_CHECKPOINT_NAME = "last.pt"


class CheckpointMismatch(SealError):
    """The checkpoint belongs to another run: other samples or other settings.

    The one error after which starting afresh is right; every other error leaves the
    checkpoint in place and fails the stage.
    """

    def __init__(self, path: Path, keys: list[str], what: str):
        self.path, self.keys = path, keys
        super().__init__(f"{path}: the checkpoint was made for {what}; rerun without --resume, with the same "
                         "settings, or with --out elsewhere")


def micro_batches(idx: list[int], size: int) -> list[list[int]]:
    """``idx`` cut into forward passes of at most ``size`` samples (gradients accumulate over them)."""
    return [idx[i: i + size] for i in range(0, len(idx), size)]


def load_checked_checkpoint(path: Path, sample_ids: list[str], config: dict, free_keys: Iterable[str],
                            data_name: str = "data") -> dict:
    """Load a checkpoint for ``--resume``, refusing one made for other samples or another config.

    ``free_keys`` are config keys that may differ (output path, progress bar, step limit, ...).
    """
    # Everything loads to the CPU: torch.set_rng_state only takes a CPU ByteTensor, and a state
    # mapped to CUDA would make every GPU resume fail. Optimiser load_state_dict and the in-place
    # copy_ of adapter weights move tensors to their parameters' device themselves.
    legacy = path.with_name(LEGACY_CHECKPOINT_NAME)
    if not path.exists() and legacy.exists():
        raise CheckpointError(f"{legacy} is a pickled checkpoint of an earlier version, which is not loaded "
                              "(unpickling a file can run code); rerun without --resume")
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or not isinstance(ck.get("config"), dict) or "sample_ids" not in ck:
        raise CheckpointError(f"{path} is not a valid checkpoint (no config or sample ids); "
                              "rerun without --resume or point --out elsewhere")
    if ck["sample_ids"] != sample_ids:
        raise CheckpointMismatch(path, ["sample_ids"], f"different {data_name} (sample ids differ)")
    free = set(free_keys)
    old = {k: v for k, v in ck["config"].items() if k not in free}
    diff = sorted(k for k in set(config) | set(old) if k not in free and old.get(k) != config.get(k))
    if diff:
        raise CheckpointMismatch(path, diff, f"other settings (config differs in {', '.join(diff)})")
    return ck


def trim_log(log_path: Path, step: int) -> None:
    """Drop log lines past ``step``: the steps after the checkpoint are run again."""
    if log_path.exists():
        keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in keep))


@contextlib.contextmanager
def oom_as_error(message: str) -> Iterator[None]:
    """Turn a CUDA/CPU out-of-memory error into one actionable line instead of a traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise SealError(message) from None


class TrainingRun:
    """Checkpoint, log, progress and resume for one training loop writing to ``out_dir``.

    ``config`` is the resolved config (a plain dict); ``free_keys`` are its keys that may differ on
    resume because they do not change the maths (output path, progress bar, step limit, ...).
    """

    def __init__(self, out_dir: Path, config: dict, sample_ids: list[str], *, free_keys: Iterable[str],
                 data_name: str, desc: str, progress: bool = True, on_progress: Optional[ProgressFn] = None,
                 dist: Dist = Dist()):
        self.dist = dist
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "checkpoints" / CHECKPOINT_NAME
        self.log_path = self.out_dir / "train_log.jsonl"
        self.config = config
        self.sample_ids = sample_ids
        self.free_keys = set(free_keys)
        self.data_name = data_name
        self.desc = desc
        self.show_progress = progress
        self.on_progress = on_progress
        self.total_steps = 0
        self.completed = True
        self._bar = None

    def can_resume(self, resume: bool) -> bool:
        return resume and (self.checkpoint_path.exists()
                           or self.checkpoint_path.with_name(LEGACY_CHECKPOINT_NAME).exists())

    def restore(self, resume: bool) -> Optional[dict]:
        """The checked checkpoint to continue from, RNG state restored; ``None`` for a fresh start.

        Call it where a fresh run would start drawing random numbers, after the model and
        optimisers exist: their initialisation is overwritten by the checkpoint's state anyway.
        """
        if self.can_resume(resume):
            ck = load_checked_checkpoint(self.checkpoint_path, self.sample_ids, self.config, self.free_keys,
                                         self.data_name)
            world = ck.get("world_size", 1)
            if world != self.dist.world_size:
                # Each rank's RNG stream and share of every batch depend on the world size.
                raise SealError(f"{self.checkpoint_path} was written by {world} process(es); resume it with "
                                f"{world} (this run has {self.dist.world_size}), or rerun without --resume")
            set_rng_state(ck["rng_ranks"][self.dist.rank] if world > 1 else ck["rng"])
            if self.dist.is_main:
                trim_log(self.log_path, ck["step"])
                print(f"{self.desc}: resuming from step {ck['step']} ({self.checkpoint_path})", file=sys.stderr)
            return ck
        if self.dist.is_main:
            if resume:
                print(f"no checkpoint at {self.checkpoint_path}; starting from scratch", file=sys.stderr)
            if self.log_path.exists():
                self.log_path.unlink()
        return None

    def save(self, state: dict) -> None:
        """Write ``state`` (the loop's ``to_checkpoint()``) atomically: a crash keeps the previous one."""
        rngs = self.dist.gather_objects(rng_state())
        if not self.dist.is_main:
            return
        ck = {"config": self.config, "sample_ids": self.sample_ids, **state, "rng": rngs[0],
              "world_size": self.dist.world_size}
        if self.dist.enabled:
            ck["rng_ranks"] = rngs
        save_checkpoint(self.checkpoint_path, ck)

    @contextlib.contextmanager
    def progress(self, total_steps: int, initial_step: int) -> Iterator[None]:
        from tqdm.auto import tqdm

        self.total_steps = total_steps
        self._bar = tqdm(total=total_steps, initial=initial_step, desc=self.desc, unit="step",
                         disable=not (self.show_progress and self.dist.is_main), dynamic_ncols=True)
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None

    def steps(self, state, epochs: int, max_steps: int, checkpoint_every: int,
              batches_of_epoch: Callable[[int], list[list[int]]], checkpoint: Callable[[], None],
              end_epoch: Optional[Callable[[], None]] = None) -> Iterator[list[int]]:
        """Yield the batches still to train, in order, keeping ``state`` and the checkpoints in step.

        ``state`` has ``epoch``, ``batch_pos`` and ``step``. The loop body trains on the batch and
        logs it as step ``state.step + 1``; then the position advances and a checkpoint is written
        every ``checkpoint_every`` steps, at each epoch end (after ``end_epoch``, or a plain move to
        the next epoch) and when ``max_steps`` stops the run. ``self.completed`` says which.
        """
        self.completed = True
        while state.epoch < epochs and self.completed:
            batches = batches_of_epoch(state.epoch)
            while state.batch_pos < len(batches):
                if max_steps and state.step >= max_steps:
                    self.completed = False
                    break
                yield batches[state.batch_pos]
                state.step, state.batch_pos = state.step + 1, state.batch_pos + 1
                if checkpoint_every and state.step % checkpoint_every == 0:
                    checkpoint()
            if self.completed:
                if end_epoch is not None:
                    end_epoch()
                else:
                    state.epoch, state.batch_pos = state.epoch + 1, 0
            checkpoint()

    def log(self, rec: dict, **postfix) -> None:
        """Append one step's record to the log, advance the bar, and tell ``on_progress`` (rank 0 only)."""
        if self.dist.is_main:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix(**postfix)
            if self.on_progress:
                self.on_progress({**rec, "total_steps": self.total_steps})
        fault_point("step")
