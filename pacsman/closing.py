"""Mixins for objects that hold a resource, so that ``with obj:`` releases it on exit."""

from __future__ import annotations

from typing import Self

__all__ = ["Closing", "Started"]


class Closing:
    """``__enter__`` returns the object; ``__exit__`` calls :meth:`close`."""

    def close(self) -> None:
        """Release what the object holds (override)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Started:
    """``__enter__`` returns :meth:`start` (which returns the object); ``__exit__`` calls
    :meth:`stop`.  For servers and peers that are started, not opened."""

    def start(self) -> Self:
        """Start serving (override); return the object."""
        return self

    def stop(self) -> None:
        """Stop serving and release what was held (override)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
