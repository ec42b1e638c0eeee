"""GraphiQL is served fully offline: no CDN URLs, every asset local and intact."""

from __future__ import annotations

import hashlib
import json
import re

from api.graphiql import GRAPHIQL_DIR, graphiql_html
from tests.support import GraphQLClient

# Every attribute that makes the browser fetch something from the page's markup.
_URL_ATTR = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


def _referenced_urls() -> list[str]:
    """Return every src/href value in the page."""
    return _URL_ATTR.findall(graphiql_html())


def test_html_references_no_external_hosts() -> None:
    """The page names no CDN and no absolute http(s) URL in any src/href."""
    html = graphiql_html().lower()
    for needle in ("unpkg", "cdn", "esm.sh", "jsdelivr", "http://", "https://"):
        assert needle not in html
    for url in _referenced_urls():
        assert not url.lower().startswith(("http:", "https:", "//")), url


def test_html_has_no_inline_script() -> None:
    """Every <script> has a src and no body, so `script-src 'self'` is enough."""
    scripts = re.findall(
        r"<script\b([^>]*)>(.*?)</script>", graphiql_html(), re.DOTALL | re.IGNORECASE
    )
    assert scripts
    for attrs, body in scripts:
        assert "src=" in attrs
        assert body.strip() == ""


async def test_every_referenced_asset_is_served(client: GraphQLClient) -> None:
    """Each local src/href the page references answers 200 with a body."""
    urls = _referenced_urls()
    assert any(url.endswith("/init.js") for url in urls)
    assert any(url.endswith("graphiql.min.js") for url in urls)
    for url in urls:
        assert url.startswith("/graphql/static/"), url
        response = await client.http.get(url)
        assert response.status_code == 200, url
        assert response.content, url


async def test_page_route_serves_html(client: GraphQLClient) -> None:
    """A browser's GET /graphql gets the GraphiQL page."""
    response = await client.http.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="graphiql"' in response.text


def test_manifest_matches_files_on_disk() -> None:
    """MANIFEST.json's sha256 for each vendored file matches the file's bytes."""
    manifest = json.loads((GRAPHIQL_DIR / "MANIFEST.json").read_text(encoding="utf-8"))
    files = manifest["files"]
    assert files
    for entry in files:
        assert entry["package"] in manifest["packages"]
        assert entry["version"] == manifest["packages"][entry["package"]]["version"]
        path = GRAPHIQL_DIR / entry["file"]
        assert path.resolve().is_relative_to(GRAPHIQL_DIR.resolve())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["file"]


def test_every_vendored_script_is_in_manifest() -> None:
    """Each vendor/ file the page loads is accounted for in the manifest."""
    manifest = json.loads((GRAPHIQL_DIR / "MANIFEST.json").read_text(encoding="utf-8"))
    listed = {entry["file"] for entry in manifest["files"]}
    prefix = "/graphql/static/"
    for url in _referenced_urls():
        rel = url.removeprefix(prefix)
        if rel.startswith("vendor/"):
            assert rel in listed, rel
