"""The README's configuration table stays true to the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from api.core.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_variables() -> set[str]:
    text = README.read_text(encoding="utf-8")
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, flags=re.MULTILINE))


def test_every_setting_is_documented_in_the_readme_table() -> None:
    expected = {name.upper() for name in Settings.model_fields}
    assert expected - documented_variables() == set()


def test_the_readme_table_documents_no_setting_that_does_not_exist() -> None:
    expected = {name.upper() for name in Settings.model_fields}
    assert documented_variables() - expected == set()


def test_the_quick_start_is_two_make_commands_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    makefile = (README.parent / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^serve:", makefile, flags=re.MULTILINE)
    assert re.search(r"^test:", makefile, flags=re.MULTILINE)
