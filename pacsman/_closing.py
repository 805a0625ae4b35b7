"""A mixin for objects that hold a resource: ``with obj:`` calls ``obj.close()`` on exit."""

from __future__ import annotations

from typing import Self

__all__ = ["Closing"]


class Closing:
    """``__enter__`` returns the object; ``__exit__`` calls :meth:`close`."""

    def close(self) -> None:
        """Release what the object holds (override)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
