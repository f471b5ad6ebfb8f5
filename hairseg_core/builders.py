"""A tiny name → builder registry.

Search spaces name backbones, losses, datasets and post-processors as strings; a
registry turns those strings into objects and, when a name is wrong, says which
names exist instead of failing deep inside a trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry is asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to builders; ``kind`` is used in error messages ("backbone", "loss", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@BACKBONES.register("resnet101")``."""

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._builders))}"
            ) from None

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
