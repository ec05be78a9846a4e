"""Adapters come from the intake.sources entry points; what cannot work fails at start."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from intake.sources.telephony.base import AdapterContext
from intake.sources.telephony.registry import RegistryError, build_adapters, load_factories

GENERIC = "intake.sources.telephony.generic:GenericCti"


def point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="intake.sources")


def test_installed_package_registers_every_built_in_adapter() -> None:
    assert sorted(load_factories()) == ["generic", "mango", "telnyx", "twilio", "zadarma"]


def test_two_adapters_with_one_name_fail_at_start() -> None:
    with pytest.raises(RegistryError, match="two telephony adapters named 'generic'"):
        load_factories([point("telephony.generic", GENERIC), point("telephony.generic", GENERIC)])


def test_entry_point_whose_adapter_has_another_name_fails_at_start() -> None:
    with pytest.raises(RegistryError, match="is not the adapter 'other'"):
        load_factories([point("telephony.other", GENERIC)])


def test_enabled_provider_without_an_adapter_fails_with_its_key_path() -> None:
    with pytest.raises(RegistryError, match=r"^telephony\.asterisk: no such adapter installed"):
        build_adapters({"asterisk": {"enabled": True}}, AdapterContext("RU"))
