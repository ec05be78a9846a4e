"""Telephony adapters come from the ``intake.sources`` entry-point group, built-ins included.

Entry points named ``telephony.<provider>`` are adapters; the group's other entries belong
to other channels and are not loaded here.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from intake.config import SecretError
from intake.sources.telephony.base import AdapterContext, AdapterFactory, TelephonyAdapter

GROUP = "intake.sources"
PREFIX = "telephony."


class RegistryError(RuntimeError):
    """The installed adapters or their configuration cannot be used; says which and why."""


def telephony_entry_points() -> list[EntryPoint]:
    return [ep for ep in entry_points(group=GROUP) if ep.name.startswith(PREFIX)]


def load_factories(points: list[EntryPoint] | None = None) -> dict[str, AdapterFactory]:
    """Every installed adapter by provider name; two with one name fail the start."""
    factories: dict[str, AdapterFactory] = {}
    origins: dict[str, str] = {}
    for point in telephony_entry_points() if points is None else points:
        name = point.name.removeprefix(PREFIX)
        if name in factories:
            raise RegistryError(
                f"two telephony adapters named '{name}': {origins[name]} and {point.value}"
            )
        factory = point.load()
        if getattr(factory, "name", None) != name:
            raise RegistryError(
                f"entry point {point.name} ({point.value}) is not the adapter '{name}'"
            )
        factories[name] = factory
        origins[name] = point.value
    return factories


def build_adapters(
    enabled: Mapping[str, Any],
    context: AdapterContext,
    factories: Mapping[str, AdapterFactory] | None = None,
) -> list[TelephonyAdapter]:
    """The adapters of the enabled providers, each given its table; RegistryError
    (``telephony.<name>: reason``) for a provider that no installed adapter serves."""
    available = load_factories() if factories is None else factories
    adapters = []
    for name, table in enabled.items():
        factory = available.get(name)
        if factory is None:
            installed = ", ".join(sorted(available)) or "none"
            raise RegistryError(f"telephony.{name}: no such adapter installed ({installed})")
        try:
            adapters.append(factory(table, context))
        except (ValueError, LookupError, SecretError) as error:
            raise RegistryError(f"telephony.{name}: {error}") from None
    return adapters
