"""Vendor adapters behind one protocol, and the registry that maps names to them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import Provider
from .parallel import Parallel
from .respell import Respell
from .vectorshift import VectorShift

__all__ = ["PROVIDERS", "Parallel", "Provider", "Respell", "VectorShift", "resolve_provider"]

PROVIDERS: dict[str, Callable[..., Provider]] = {
    "parallel": Parallel,
    "respell": Respell,
    "vectorshift": VectorShift,
}


def resolve_provider(provider: str | Provider, **options: Any) -> Provider:
    """A Provider object as given, or built from its name with ``api_key``/``base_url``."""
    if isinstance(provider, str):
        factory = PROVIDERS.get(provider.lower())
        if factory is None:
            names = ", ".join(sorted(PROVIDERS))
            raise ConfigError(
                f"unknown provider {provider!r}; choose one of: {names}, or pass a Provider object"
            )
        return _build(provider.lower(), factory, {k: v for k, v in options.items() if v is not None})
    if isinstance(provider, Provider):
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} go to the Provider object itself when provider= is one "
                f"(e.g. Respell(api_key=..., base_url=...))"
            )
        return provider
    raise ConfigError(f"provider must be a name or a Provider object, not {type(provider).__name__}")


def _build(name: str, factory: Callable[..., Provider], options: dict[str, Any]) -> Provider:
    """Call the factory; an option it does not take is a ConfigError naming the ones it does."""
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)}: not an option of frame_batch.run or of the {name} provider; "
            f"{name} takes: {', '.join(accepted)}"
        )
    return factory(**options)
