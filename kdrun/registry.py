"""One small generic registry per kind of thing (datasets, models, methods).

Config files pick entries by name; an unknown name or an unknown parameter becomes a one-line
`ConfigError` that lists the valid choices, instead of a KeyError or TypeError deep in a stack.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Iterable, TypeVar

from kdrun.errors import ConfigError

Entry = TypeVar("Entry", bound=Callable[..., Any])


def closest_hint(name: str, choices: Iterable[str]) -> str:
    """'did you mean X? ' when a choice is close to `name`, else ''."""
    matches = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean '{matches[0]}'? " if matches else ""


class Registry(Generic[Entry]):
    """Maps names to builders (functions or classes) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str) -> Callable[[Entry], Entry]:
        """Decorator: register a builder under `name`; a duplicate name is a bug and raises."""

        def decorator(entry: Entry) -> Entry:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} '{name}'",
                f"{closest_hint(name, self._entries)}choose one of: {', '.join(self.names())}",
            )
        return self._entries[name]

    def build(self, name: str, /, *args: Any, **params: Any) -> Any:
        """Call the builder registered as `name`, rejecting parameters it does not take.

        `args` are supplied by kdrun itself (e.g. the dataset's input shape); `params` come from the
        user's config, so an unexpected one is reported as a config key, with the valid keys.
        """
        builder = self.get(name)
        accepted = _keyword_parameters(builder, skip=len(args))
        unknown = sorted(set(params) - accepted) if accepted is not None else []
        if unknown:
            raise ConfigError(
                f"{self.kind} '{name}' has no option '{unknown[0]}'",
                f"{closest_hint(unknown[0], accepted or [])}valid options: {', '.join(sorted(accepted or []))}",
            )
        return builder(*args, **params)


def _keyword_parameters(builder: Callable[..., Any], skip: int) -> set[str] | None:
    """Names a builder accepts as config keys; None when it takes **kwargs (accepts anything).

    The first `skip` parameters are filled by kdrun itself, so they are not config keys.
    """
    signature = inspect.signature(builder)
    names = set()
    for parameter in list(signature.parameters.values())[skip:]:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.add(parameter.name)
    return names
