"""A tiny name -> factory registry used for encoders, probes and datasets (timm-style `create_*`)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. Add an entry with the `register` decorator in the module that defines it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._descriptions: dict[str, str] = {}
        self._facts: dict[str, dict[str, str]] = {}

    def register(self, name: str, description: str = "", **facts: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator adding `factory` under `name`; `facts` are short strings listings show (e.g. sample_rate="16 kHz")."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise RegistryError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            self._descriptions[name] = description or (factory.__doc__ or "").strip().split("\n")[0]
            self._facts[name] = {key: str(value) for key, value in facts.items()}
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def description(self, name: str) -> str:
        self.get(name)
        return self._descriptions[name]

    def facts(self, name: str) -> dict[str, str]:
        self.get(name)
        return dict(self._facts[name])

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
