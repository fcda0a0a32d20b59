"""The Content-Security-Policy (console/middleware.py): on every page and file the console serves,
strict (no inline script, no other origin), and nothing in a template that it would refuse.
tests/e2e/test_content_security_policy.py runs the pages under it in a real browser."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pytest
from django.conf import settings
from django.template.utils import get_app_template_dirs
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from console.access.services import api_token_issue
from domains.models import Domain
from hosts.models import Host
from tests.conftest import quiet_login

ROOT = Path(__file__).resolve().parents[2]
# Pages the walk leaves out: the download of a domain's serial log asks its host's agent.
NOT_WALKED = {"domain-serial-log", "healthz", "livez"}


def policy(response: Any) -> dict[str, str]:
    header = response.get("Content-Security-Policy")
    assert header, f"{response.status_code} {getattr(response, 'url', '')}: no Content-Security-Policy"
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


class InlineCode(HTMLParser):
    """What the policy refuses in HTML: <script> without src (a JSON data block is data, not
    code), event-handler attributes, javascript: URLs, <style> elements and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}=…>")
            if (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value}>")
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in named and named.get("type") != "application/json":
            self._script = ""

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.found.append(f"<script>{self._script.strip()[:60]}</script>")
            self._script = None


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    parser.close()
    return parser.found


def project_templates() -> list[Path]:
    """Every template of the project's own apps (third-party apps' are not ours to edit)."""
    configured = cast(list[Path], settings.TEMPLATES[0]["DIRS"])
    dirs = [Path(d) for d in configured] + [Path(d) for d in get_app_template_dirs("templates")]
    ours = {d for d in dirs if d.is_relative_to(ROOT) and ".venv" not in d.parts}
    return sorted(p for d in ours for p in d.rglob("*.html"))


def test_templates_have_no_inline_script_handler_or_style() -> None:
    templates = project_templates()
    assert any(p.name == "base.html" for p in templates) and any(p.name == "wizard.html" for p in templates)
    found = {str(p.relative_to(ROOT)): inline_code(p.read_text()) for p in templates}
    assert {path: bad for path, bad in found.items() if bad} == {}


def test_the_scan_finds_what_the_policy_refuses() -> None:
    assert inline_code("<form onsubmit=\"return confirm('x')\">") == ["<form onsubmit=…>"]
    assert inline_code("<script>alert(1)</script>") == ["<script>alert(1)</script>"]
    assert inline_code('<div style="color:red">') == ["<div style=…>"]
    assert inline_code('<a href="javascript:go()">') == ["<a href=javascript:go()>"]
    assert inline_code('<script src="/static/domus/live.js"></script><input name="on" value="1">') == []
    assert inline_code('<script id="d" type="application/json">{"a": 1}</script>') == []


@pytest.fixture
def site(db: None, user: Any) -> dict[str, Any]:
    host = Host.objects.create(
        name="h1", url="http://127.0.0.1:1", secret="x" * 32, state=Host.State.ONLINE, facts={}
    )
    domain = Domain.objects.create(
        name="web1", host=host, state=Domain.State.RUNNING, spec={"graphics": True}
    )
    token, _ = api_token_issue(user=user)
    client = Client()
    quiet_login(client, user)
    ids = {"host_id": host.pk, "domain_id": domain.pk, "token_id": token.pk, "pk": host.pk}
    return {"client": client, "ids": ids, "domain": domain}


def _page_urls(ids: dict[str, int]) -> list[str]:
    """Every named URL outside the JSON API, with the site's objects for its arguments."""
    urls = []

    def walk(patterns: list[Any]) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns)
            elif isinstance(p, URLPattern) and p.name and p.name not in NOT_WALKED:
                names = set(p.pattern.regex.groupindex)
                if "action" in names or not names <= ids.keys():
                    continue  # POST-only actions; the API's format suffixes
                url = reverse(p.name, kwargs={n: ids[n] for n in names})
                if not url.startswith("/api/") or p.name == "api-docs":
                    urls.append(url)

    walk(get_resolver().url_patterns)
    return sorted(set(urls))


@pytest.mark.django_db
def test_every_page_carries_the_policy_and_no_inline_code(site: dict[str, Any]) -> None:
    urls = _page_urls(site["ids"])
    assert {"/", "/login/", "/hosts/", "/domains/new/", "/api/v1/docs/", "/jobs/", "/teams/"} <= set(urls)
    domain_page = f"/domains/{site['domain'].pk}/"
    assert domain_page in urls
    pages = 0
    for url in urls:
        response = site["client"].get(url)
        directives = policy(response)
        assert directives["script-src"] == "'self'", url
        assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'", url
        assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'", url
        assert directives["connect-src"] == "'self' ws://testserver", url
        # Inline styles only where xterm.js needs them (it writes <style> elements).
        inline_styles = "'self' 'unsafe-inline'" if url == domain_page else "'self'"
        assert directives["style-src"] == inline_styles, url
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        if response.status_code == 200 and response["Content-Type"].startswith("text/html"):
            pages += 1
            assert inline_code(response.content.decode()) == [], url
    assert pages >= 12


def test_signed_out_pages_errors_and_static_files_carry_it_too(client: Client, db: None) -> None:
    for url in ["/login/", "/", "/no-such-page/", "/static/domus/domus.css", "/static/vendor/novnc/vnc.html"]:
        policy(client.get(url))
    # Over HTTPS the sockets are wss: on the page's own host (for Safari before 16, where 'self'
    # does not cover them), and never plaintext ws:.
    assert policy(client.get("/login/", secure=True))["connect-src"] == "'self' wss://testserver"


def test_api_docs_are_served_from_here_with_no_inline_script(site: dict[str, Any]) -> None:
    client = site["client"]
    page = client.get("/api/v1/docs/").content.decode()
    assert "cdn." not in page and "https://" not in page and inline_code(page) == []
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"]:
        url = f"/static/vendor/swagger-ui-dist/{asset}"
        assert url in page
        assert client.get(url).status_code == 200  # offline: from package.json, not a CDN
    assert '<script src="/api/v1/docs/?script="></script>' in page
    script = client.get("/api/v1/docs/?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle(" in script.content and b'"validatorUrl": null' in script.content
