"""The web client's vendored libraries are what scripts/vendor_web.py wrote (offline check)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def vendor_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_web", ROOT / "scripts" / "vendor_web.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vendored_files_match_their_manifest() -> None:
    script = vendor_script()
    assert script.verify(ROOT / "web" / "vendor") == []


def test_the_client_imports_only_files_served_from_this_server() -> None:
    bare = re.compile(r"""^(?:import|export)\b[^"'\n]*?\bfrom\s*["']([^"']+)["']""", re.MULTILINE)
    for module in [*(ROOT / "web").rglob("*.js"), *(ROOT / "web").rglob("*.mjs")]:
        for specifier in bare.findall(module.read_text(encoding="utf-8")):
            assert specifier.startswith("."), f"{module}: imports {specifier!r}"
            assert (module.parent / specifier).resolve().is_file(), f"{module}: {specifier}"
    html = (ROOT / "web" / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in html  # no inline script: the CSP allows none
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere
