"""The domain list, API and overview page: sorted, filtered and paged by the database, restricted
to what the user may see, in a number of queries that does not grow with the number of domains."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from agent.protocol import NicAddress, NicAddresses
from console.access.models import Membership, Team
from console.access.services import api_token_issue
from domains.addresses import recorded
from domains.models import Domain
from domains.selectors import ORDERING_CHOICES
from hosts.models import Host
from tests.conftest import builtin_role, grant

pytestmark = pytest.mark.django_db

STATES = [Domain.State.RUNNING, Domain.State.SHUTOFF, Domain.State.PAUSED, Domain.State.CRASHED]


def _host(name: str) -> Host:
    return Host.objects.create(
        name=name,
        url=f"http://127.0.0.1:{1000 + Host.objects.count()}",
        secret="x" * 32,
        state=Host.State.ONLINE,
        # What hostwatch stores: large documents the list must not drag along per row.
        facts={"cpus": 16, "memory_mib": 65536, "notes": "x" * 500},
        stats={"free_memory_mib": 1024},
    )


@pytest.fixture
def fleet(db: None) -> dict[str, Any]:
    """Three hosts, two teams, 24 domains with repeating states, sizes and names in mixed case."""
    hosts = [_host(name) for name in ("hb", "ha", "hc")]
    teams = [Team.objects.create(name="red"), Team.objects.create(name="blue")]
    for i in range(24):
        Domain.objects.create(
            name=f"{'Web' if i % 3 == 0 else 'db'}-{i % 8:02d}",
            host=hosts[i % 3],
            team=teams[i % 2] if i % 4 != 3 else None,
            state=STATES[i % 4],
            vcpus=1 + i % 3,
            memory_mib=256 * (1 + i % 5),
            # a third without an address; the rest in an order numeric sorting and text differ on
            **(recorded([_card(f"10.0.{i % 3}.{i * 7 % 20}")]) if i % 3 else {}),
        )
    return {"hosts": hosts, "teams": teams}


def _card(address: str) -> NicAddresses:
    return NicAddresses(
        mac="52:54:00:00:00:01",
        addresses=[NicAddress(address=address, prefix=24, family="ipv4", source="lease")],
    )


def _client_for(user: Any) -> APIClient:
    _, key = api_token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def _names(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["name"] for row in response.json()["results"]]


def _ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def _expected(ordering: str) -> list[int]:
    """The order the API promises, computed in Python from every row."""
    keys: dict[str, Callable[[Domain], tuple[Any, ...]]] = {
        "name": lambda d: (d.name, d.pk),
        "state": lambda d: (d.state, d.name, d.pk),
        "host": lambda d: (d.host.name, d.name, d.pk),
        "memory_mib": lambda d: (d.memory_mib, d.name, d.pk),
        "vcpus": lambda d: (d.vcpus, d.name, d.pk),
        "created_at": lambda d: (d.created_at, d.pk),
        "address": lambda d: (
            tuple(int(p) for p in d.address_text.split(".")) if d.address_text else (),
            d.name,
            d.pk,
        ),
    }
    rows = sorted(
        Domain.objects.select_related("host"),
        key=keys[ordering.removeprefix("-")],
        reverse=ordering.startswith("-"),
    )
    return [d.pk for d in rows]


# -- API: ordering ---------------------------------------------------------------------------


@pytest.mark.parametrize("ordering", ORDERING_CHOICES)
def test_api_sorts_by_every_key_both_ways(api: APIClient, fleet: dict[str, Any], ordering: str) -> None:
    response = api.get("/api/v1/domains/", {"ordering": ordering, "limit": 500})
    assert _ids(response) == _expected(ordering)


def test_api_default_order_is_by_name(api: APIClient, fleet: dict[str, Any]) -> None:
    names = _names(api.get("/api/v1/domains/"))
    assert names == sorted(names) and len(names) == 24


def test_api_rows_carry_the_host_name(api: APIClient, fleet: dict[str, Any]) -> None:
    rows = api.get("/api/v1/domains/", {"ordering": "host"}).json()["results"]
    hosts = {h.pk: h.name for h in fleet["hosts"]}
    assert [r["host_name"] for r in rows] == sorted(hosts[r["host"]] for r in rows)
    assert rows[0]["host_name"] == "ha"


# -- API: filters ----------------------------------------------------------------------------


def test_api_filters_by_host_state_team_and_name(api: APIClient, fleet: dict[str, Any]) -> None:
    host, team = fleet["hosts"][0], fleet["teams"][1]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"host": host.pk}, Domain.objects.filter(host=host)),
        ({"state": "paused"}, Domain.objects.filter(state="paused")),
        ({"team": team.pk}, Domain.objects.filter(team=team)),
        ({"q": "WEB"}, Domain.objects.filter(name__startswith="Web")),  # any case
        ({"q": "b-0"}, Domain.objects.filter(name__contains="b-0")),  # anywhere in the name
        (
            {"host": host.pk, "state": "running", "q": "web"},
            Domain.objects.filter(host=host, state="running", name__startswith="Web"),
        ),
    ]
    for params, expected in cases:
        response = api.get("/api/v1/domains/", params)
        body = response.json()
        assert response.status_code == 200, (params, body)
        want = sorted(expected.values_list("pk", flat=True))
        assert sorted(r["id"] for r in body["results"]) == want, params
        assert body["count"] == len(want) and want, params


def test_api_filter_by_an_unknown_host_is_empty_not_an_error(api: APIClient, fleet: dict[str, Any]) -> None:
    body = api.get("/api/v1/domains/", {"host": 99999}).json()
    assert body["count"] == 0 and body["results"] == []


# -- API: pagination -------------------------------------------------------------------------


def test_api_pages_cover_every_domain_once_even_with_ties(api: APIClient, fleet: dict[str, Any]) -> None:
    seen: list[int] = []
    for offset in range(0, 24, 5):
        body = api.get("/api/v1/domains/", {"ordering": "-state", "limit": 5, "offset": offset}).json()
        assert body["count"] == 24
        seen += [r["id"] for r in body["results"]]
    assert seen == _expected("-state")


def test_api_limit_defaults_to_100_and_is_capped_at_500(api: APIClient, host: Host) -> None:
    Domain.objects.bulk_create(Domain(name=f"d{i:04d}", host=host) for i in range(501))
    assert len(_ids(api.get("/api/v1/domains/"))) == 100
    body = api.get("/api/v1/domains/", {"limit": 1000}).json()
    assert body["count"] == 501 and len(body["results"]) == 500 and "offset=500" in body["next"]
    assert _names(api.get("/api/v1/domains/", {"offset": 500})) == ["d0500"]


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"ordering": "uuid"}, "ordering", "'uuid'"),
        ({"ordering": "name,-state"}, "ordering", "one of name, -name, state"),
        ({"ordering": "spec"}, "ordering", "created_at"),
        ({"host": "h1"}, "host", "'h1'"),
        ({"host": "-1"}, "host", "a number"),
        ({"team": "red"}, "team", "'red'"),
        ({"state": "on"}, "state", "running"),
        ({"q": "x" * 64}, "q", "63"),
        ({"limit": "ten"}, "limit", "'ten'"),
        ({"limit": "0"}, "limit", "from 1"),
        ({"offset": "-5"}, "offset", "from 0"),
        ({"offset": "1.5"}, "offset", "'1.5'"),
    ],
)
def test_api_bad_parameters_are_a_400_naming_the_field(
    api: APIClient, fleet: dict[str, Any], params: dict[str, str], field: str, says: str
) -> None:
    response = api.get("/api/v1/domains/", params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid" and list(body["fields"]) == [field]
    assert says in body["fields"][field][0]
    assert field in body["detail"]


def test_api_names_every_bad_parameter_at_once(api: APIClient, fleet: dict[str, Any]) -> None:
    body = api.get("/api/v1/domains/", {"ordering": "nope", "state": "nope", "host": "x"}).json()
    assert set(body["fields"]) == {"ordering", "state", "host"}


def test_list_parameters_do_not_reach_other_actions(api: APIClient, fleet: dict[str, Any]) -> None:
    domain = Domain.objects.first()
    assert domain is not None
    response = api.get(f"/api/v1/domains/{domain.pk}/", {"ordering": "bogus", "state": "x"})
    assert response.status_code == 200 and response.json()["id"] == domain.pk


# -- restriction -----------------------------------------------------------------------------


def test_api_shows_and_counts_only_what_the_user_may_see(
    fleet: dict[str, Any], django_user_model: Any
) -> None:
    red, blue = fleet["teams"]
    member = django_user_model.objects.create_user("rita")
    Membership.objects.create(user=member, team=red, role=builtin_role("Viewer"))
    other_host = fleet["hosts"][2]
    grant(member, "Viewer", other_host)  # and everything on one host, whoever owns it
    visible = set(Domain.objects.filter(team=red).values_list("pk", flat=True)) | set(
        Domain.objects.filter(host=other_host).values_list("pk", flat=True)
    )
    assert 0 < len(visible) < Domain.objects.count()
    client = _client_for(member)

    body = client.get("/api/v1/domains/", {"limit": 500}).json()
    assert {r["id"] for r in body["results"]} == visible and body["count"] == len(visible)
    # Filters narrow what may be seen; they never widen it.
    body = client.get("/api/v1/domains/", {"team": blue.pk}).json()
    expected = set(Domain.objects.filter(team=blue, host=other_host).values_list("pk", flat=True))
    assert {r["id"] for r in body["results"]} == expected and body["count"] == len(expected)
    body = client.get("/api/v1/domains/", {"host": fleet["hosts"][0].pk}).json()
    expected = set(Domain.objects.filter(team=red, host=fleet["hosts"][0]).values_list("pk", flat=True))
    assert {r["id"] for r in body["results"]} == expected and body["count"] == len(expected)


def test_api_without_any_grant_lists_nothing(fleet: dict[str, Any], django_user_model: Any) -> None:
    nobody = django_user_model.objects.create_user("nobody")
    body = _client_for(nobody).get("/api/v1/domains/").json()
    assert body["count"] == 0 and body["results"] == []


def test_page_shows_and_counts_only_what_the_user_may_see(
    client: Any, fleet: dict[str, Any], django_user_model: Any
) -> None:
    red = fleet["teams"][0]
    member = django_user_model.objects.create_user("rita")
    Membership.objects.create(user=member, team=red, role=builtin_role("Viewer"))
    client.force_login(member)
    page = client.get("/").content.decode()
    shown = {int(pk) for pk in re.findall(r'data-domain-row="(\d+)"', page)}
    visible = set(Domain.objects.filter(team=red).values_list("pk", flat=True))
    assert shown == visible
    assert f'id="domains-count">{len(visible)}<' in page
    newest = max(visible)
    assert f'data-newest="{newest}"' in page  # not a hidden domain's id


# -- queries per request ---------------------------------------------------------------------


def _add_domains(count: int) -> None:
    """`count` more domains over new hosts (each with its facts) and both teams."""
    teams = list(Team.objects.all()) or [Team.objects.create(name="red")]
    hosts = [_host(f"q{Host.objects.count():03d}") for _ in range(max(1, count // 20))]
    start = Domain.objects.count()
    Domain.objects.bulk_create(
        Domain(
            name=f"n{start + i:05d}",
            host=hosts[i % len(hosts)],
            team=teams[(i // 4) % len(teams)],  # every state in every team
            state=STATES[i % 4],
            spec={"name": f"n{start + i:05d}", "boot": {"iso": "/x.iso"}},
        )
        for i in range(count)
    )


def _queries(get: Callable[[], Any]) -> tuple[list[str], Any]:
    with CaptureQueriesContext(connection) as ctx:
        response = get()
    assert response.status_code == 200, response.content
    return [q["sql"] for q in ctx.captured_queries], response


@pytest.fixture
def member(django_user_model: Any) -> Any:
    """Not a superuser, not site-wide: the access filter does its real work."""
    user = django_user_model.objects.create_user("rita")
    red = Team.objects.create(name="red")
    Team.objects.create(name="blue")
    Membership.objects.create(user=user, team=red, role=builtin_role("Viewer"))
    return user


@pytest.mark.parametrize("who", ["site", "team"])
@pytest.mark.parametrize(
    "params",
    [{}, {"ordering": "-host", "limit": 500}, {"state": "running", "q": "n0"}, {"offset": 2}],
)
def test_api_queries_per_request_do_not_grow_with_domains(
    user: Any, member: Any, who: str, params: dict[str, Any]
) -> None:
    client = _client_for(user if who == "site" else member)
    _add_domains(10)
    small, response = _queries(lambda: client.get("/api/v1/domains/", params))
    assert response.json()["results"]  # rows on the page, not the shortcut of an empty one
    _add_domains(190)
    large, response = _queries(lambda: client.get("/api/v1/domains/", params))
    assert len(response.json()["results"]) > 10
    assert len(large) == len(small), "\n".join(large)
    assert len(large) <= 6  # the token, its last use, two for the access reach, count, page


@pytest.mark.parametrize("who", ["site", "team"])
@pytest.mark.parametrize("params", [{}, {"ordering": "-memory_mib", "page": "2"}, {"state": "running"}])
def test_page_queries_per_request_do_not_grow_with_domains(
    client: Any, user: Any, member: Any, who: str, params: dict[str, str]
) -> None:
    client.force_login(user if who == "site" else member)
    _add_domains(10)
    small, response = _queries(lambda: client.get("/", params))
    assert "data-domain-row=" in response.content.decode()
    _add_domains(190)
    large, response = _queries(lambda: client.get("/", params))
    assert response.content.decode().count("data-domain-row=") > 10
    assert len(large) == len(small), "\n".join(large)


# -- the overview page -----------------------------------------------------------------------


@pytest.fixture
def browser(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def _page_ids(response: Any) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-domain-row="(\d+)"', response.content.decode())]


def test_page_shows_50_domains_a_page_with_links(browser: Any, host: Host) -> None:
    Domain.objects.bulk_create(Domain(name=f"d{i:03d}", host=host) for i in range(120))
    ordered = list(Domain.objects.order_by("name", "id").values_list("pk", flat=True))
    first = browser.get("/")
    assert _page_ids(first) == ordered[:50]
    text = first.content.decode()
    assert 'href="?page=2"' in text and 'href="?page=3"' in text and "1\u201350 of 120" in text
    assert _page_ids(browser.get("/", {"page": "3"})) == ordered[100:]
    assert _page_ids(browser.get("/", {"page": "99"})) == ordered[100:]  # past the end: the last


def test_page_sorts_by_clicked_column_and_reverses_on_second_click(
    browser: Any, fleet: dict[str, Any]
) -> None:
    response = browser.get("/", {"ordering": "memory_mib"})
    assert _page_ids(response) == _expected("memory_mib")
    text = response.content.decode()
    assert 'aria-sort="ascending"' in text and 'href="?ordering=-memory_mib"' in text
    response = browser.get("/", {"ordering": "-memory_mib"})
    assert _page_ids(response) == _expected("-memory_mib")
    assert 'aria-sort="descending"' in response.content.decode()


def test_page_filters_and_keeps_filters_in_sort_and_page_links(browser: Any, fleet: dict[str, Any]) -> None:
    host = fleet["hosts"][1]
    response = browser.get("/", {"host": host.pk, "state": "running", "q": "WEB"})
    expected = Domain.objects.filter(host=host, state="running", name__icontains="web")
    assert sorted(_page_ids(response)) == sorted(expected.values_list("pk", flat=True))
    text = response.content.decode()
    assert f'href="?ordering=host&amp;host={host.pk}&amp;state=running&amp;q=WEB"' in text
    assert f'<option value="{host.pk}" selected>' in text and '<option value="running" selected>' in text
    assert f'data-query="host={host.pk}&amp;state=running&amp;q=WEB&amp;limit=50&amp;offset=0"' in text


def test_page_bad_parameters_are_a_400_naming_them_with_the_unfiltered_list(
    browser: Any, fleet: dict[str, Any]
) -> None:
    response = browser.get("/", {"ordering": "uuid", "state": "on", "page": "two"})
    assert response.status_code == 400
    text = response.content.decode()
    errors = text[text.index('id="domain-filter-errors"') :]
    errors = errors[: errors.index("</div>")]
    assert (
        "<code>ordering</code>" in errors and "<code>state</code>" in errors and "<code>page</code>" in errors
    )
    assert "&#x27;uuid&#x27;" in errors
    assert _page_ids(response) == _expected("name")


def test_page_says_when_nothing_matches(browser: Any, fleet: dict[str, Any]) -> None:
    text = browser.get("/", {"q": "zzz"}).content.decode()
    assert "No domains match." in text and _page_ids(browser.get("/", {"q": "zzz"})) == []


def test_page_tells_the_live_script_the_newest_matching_id(browser: Any, fleet: dict[str, Any]) -> None:
    host = fleet["hosts"][0]
    newest = Domain.objects.filter(host=host).order_by("-pk").values_list("pk", flat=True)[0]
    assert newest != Domain.objects.order_by("-pk").values_list("pk", flat=True)[0]
    text = browser.get("/", {"host": host.pk}).content.decode()
    assert f'data-newest="{newest}"' in text and f'data-host="{host.pk}"' in text
