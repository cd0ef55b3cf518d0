"""One registry per choice (losses, encoders, data sources): each entry declared once, beside its behaviour,
with its id, the label the Train tab shows and what it needs. Config validation, the CLI's choices and help,
the Train tab and Compare's ablations all read the registry, so adding a choice touches one source file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from segdemo.errors import ConfigError


class Entry(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def label(self) -> str: ...


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Entries by id, in the order declared (which is the order the page and --help list them)."""

    def __init__(self, what: str, entries: Iterable[E] = ()):
        self.what = what  # "loss", "encoder", "data source": used in the messages
        self._by_id: dict[str, E] = {}
        for e in entries:
            self.add(e)

    def add(self, entry: E) -> E:
        if entry.id in self._by_id:
            raise ValueError(f"{self.what} {entry.id!r} is declared twice")
        self._by_id[entry.id] = entry
        return entry

    def __getitem__(self, id: str) -> E:
        """The entry, or ConfigError with the choices: a typo in a config or an API call gets a sentence."""
        try:
            return self._by_id[id]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.what} {id!r}; choose one of {', '.join(self.ids)}") from None

    def __contains__(self, id: object) -> bool:
        return id in self._by_id

    def __iter__(self) -> Iterator[E]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def choices(self, where: str = "") -> list[tuple[str, str]]:
        """(label, id) pairs for a gradio Dropdown or Radio; entries with `pages` naming where (or all)."""
        return [(e.label, e.id) for e in self if not where or where in getattr(e, "pages", (where,))]

    def label(self, id: str) -> str:
        """The label for an id, the id itself for one not declared (an old checkpoint's)."""
        e = self._by_id.get(id)
        return e.label if e else id
