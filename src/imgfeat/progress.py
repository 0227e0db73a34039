"""A progress bar on stderr for long work (tqdm), usable as an `on_progress` callback."""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """`bar(done, errors, todo)` as runners call `on_progress`; `close()` when finished.

    The bar is created on the first call, once the number of images to do is known.
    """

    def __init__(self, desc: str, unit: str = "img"):
        self.desc, self.unit = desc, unit
        self.bar: Any = None

    def __call__(self, done: int, errors: int, todo: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=todo, unit=self.unit, desc=self.desc, dynamic_ncols=True, file=sys.stderr)
        self.bar.update(done)
        self.bar.set_postfix(errors=errors, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
