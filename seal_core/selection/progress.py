"""Progress bars of the selection passes."""

from __future__ import annotations

import sys


class ProgressBar:
    """tqdm on stderr when asked (and on a terminal), else a no-op."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self._tqdm = None
        if enabled:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total, desc=desc, unit="row", unit_scale=True, file=sys.stderr,
                              disable=None, leave=False)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def update(self, n: int) -> None:
        if self._tqdm is not None:
            self._tqdm.update(n)
