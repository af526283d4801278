"""The service's settings have one source (service/settings.py); the README's Configuration table
and docker-compose.yml must name every one of them, so that neither drifts from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
VARIABLES = {f"IMF_{name.upper()}" for name in Settings.model_fields}


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


def test_readme_configuration_table_names_every_setting() -> None:
    table = _section((REPO / "README.md").read_text(encoding="utf-8"), "### Configuration")
    rows = [line for line in table.splitlines() if line.startswith("| `IMF_")]
    named = {v for line in rows for v in re.findall(r"`(IMF_[A-Z_]+)`", line.split("|")[1])}
    assert named == VARIABLES, f"missing: {sorted(VARIABLES - named)}, unknown: {sorted(named - VARIABLES)}"


def test_compose_passes_every_setting_to_the_api() -> None:
    compose = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    api = compose[compose.index("\n  api:"):compose.index("\n  redis:")]
    environment = api[api.index("    environment:"):api.index("    volumes:")]
    named = set(re.findall(r"^      (IMF_[A-Z_]+):", environment, flags=re.M))
    assert named == VARIABLES, f"missing: {sorted(VARIABLES - named)}, unknown: {sorted(named - VARIABLES)}"



def test_keyless_entity_adding_on_a_public_address_needs_an_explicit_yes(tmp_path: Path) -> None:
    """Anyone who reaches the port could add entities: refused at start unless a key is set, the
    address is loopback, or IMF_ALLOW_KEYLESS_ENTITIES says so."""
    common = {"allow_new_entities": True, "state_dir": tmp_path / "state"}
    with pytest.raises(ValidationError, match="IMF_ALLOW_KEYLESS_ENTITIES"):
        Settings(host="0.0.0.0", **common)
    assert Settings(host="0.0.0.0", api_key="k", **common).allow_new_entities
    assert Settings(host="127.0.0.1", **common).allow_new_entities
    assert Settings(host="0.0.0.0", allow_keyless_entities=True, **common).allow_new_entities
