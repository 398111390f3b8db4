"""The README documents every setting the gateway reads."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from tentaculo.settings import PLUGIN_ALIASES, Settings

README = Path(__file__).resolve().parent.parent / "README.md"
# Settings gathered from families of variables, documented by their pattern.
PATTERNS = {
    "service_urls": "TENTACULO_SERVICE_<NAME>_URL",
    "service_tokens": "TENTACULO_SERVICE_<NAME>_TOKEN",
    "service_timeouts": "TENTACULO_SERVICE_<NAME>_TIMEOUT",
    "service_allow": "TENTACULO_SERVICE_<NAME>_ALLOW",
    "service_read_upgrades": "TENTACULO_SERVICE_<NAME>_READ_UPGRADES",
    "provider_options": "TENTACULO_PLUGIN_<NAME>__<OPTION>",
    "provider_option_sources": "TENTACULO_PLUGIN_<NAME>__<OPTION>",
}
# What from_env records about the variables it read, not a variable of its own.
NOT_VARIABLES = {"from_environment"}


def test_readme_configuration_table_names_every_setting() -> None:
    text = README.read_text()
    missing = []
    for f in fields(Settings):
        if f.name in NOT_VARIABLES:
            continue
        name = PATTERNS.get(f.name) or f"TENTACULO_{f.name.upper()}"
        if f"`{name}`" not in text:
            missing.append(name)
    missing += [alias for alias in PLUGIN_ALIASES if f"`{alias}`" not in text]
    assert missing == []


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
