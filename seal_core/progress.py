"""The progress callback every long-running stage accepts.

A stage calls ``on_progress(record)`` once per step (or batch) with a JSON-able record
holding at least ``step`` and ``total_steps``; the Prefect tasks turn it into a progress
artifact, the CLI ignores it (tqdm shows progress there). Light on purpose: no torch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

ProgressFn = Callable[[Mapping[str, Any]], None]
