"""Virtual networks on a real host, end to end: made, used by a real guest, changed and removed
through the API, and the wizard starting an inactive network in a real browser.

Every network lives on a namespaced host of the project's own (tests/fleet/isolated.py): its
bridge, dnsmasq, firewall rules and the guest's traffic stay inside a network namespace this test
made. Nothing here touches this machine's own libvirt networks.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, GUEST_DIR, Stack, sign_in
from tests.e2e.test_fleet import FleetHost, enrol, host_json, wait_for
from tests.fleet.isolated import start_isolated_host

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.libvirt,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]
BOX_INDEX = 20  # 10.231.20.0/24; tests/fleet and test_fleet use 1-3
LAB = {"ipv4": "192.168.150.1/24", "dhcp_start": "192.168.150.100", "dhcp_end": "192.168.150.200"}


@pytest.fixture(scope="module")
def netbox(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetHost]:
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.img"
    if not (kernel.exists() and initrd.exists()):
        pytest.skip(f"no test guest in {GUEST_DIR}: run tests/guest/build.sh (make test does)")
    workdir = tmp_path_factory.mktemp("networks")
    with start_isolated_host("nw", BOX_INDEX, workdir) as box:
        for src in (kernel, initrd):
            Path(box.pool_dir, src.name).write_bytes(src.read_bytes())
        host = FleetHost(box=box, state_dir=box.state_dir / "agent", log=workdir / "nw-agent.log")
        host.init()
        host.start()
        try:
            enrol(stack, host)
            wait_for("nw online", lambda: host_json(stack, host.host_id)["state"] == "online", timeout=60)
            yield host
        finally:
            host.kill()
            if host.host_id:
                stack.api("DELETE", f"/api/v1/hosts/{host.host_id}/?force=1")


def networks(stack: Stack, host: FleetHost) -> dict[str, dict[str, Any]]:
    listed = stack.api("GET", f"/api/v1/hosts/{host.host_id}/networks/")
    assert listed.status_code == 200, listed.text
    return {n["name"]: n for n in listed.json()}


def run_job(stack: Stack, response: Any) -> dict[str, Any]:
    assert response.status_code == 202, (response.request.method, response.url, response.text[:500])
    job = response.json()["job"]
    job = stack.wait_job(
        job if isinstance(job, dict) else {"id": job, "kind": "?", "status": "queued", "log": ""}
    )
    assert job["status"] == "succeeded", job
    return job


def leases(host: FleetHost, network: str) -> dict[str, str]:
    """MAC -> IPv4 address, as the network's dnsmasq leased them (libvirt's own view)."""
    out = host.box.virsh("net-dhcp-leases", network)
    found = {}
    for line in out.splitlines():
        match = re.search(r"([0-9a-f]{2}(?::[0-9a-f]{2}){5})\s+ipv4\s+([0-9.]+)/", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def pings(host: FleetHost, address: str) -> bool:
    done = host.box.run(["busybox", "ping", "-c", "1", "-W", "2", address], capture_output=True, text=True)
    return done.returncode == 0


def domain_nics(stack: Stack, domain_id: int) -> list[dict[str, Any]]:
    return list(stack.api("GET", f"/api/v1/domains/{domain_id}/").json()["nics"])


def addresses(stack: Stack, domain_id: int) -> dict[str, tuple[str, str]]:
    """address -> (source, mac), as the console shows the domain's."""
    domain = stack.api("GET", f"/api/v1/domains/{domain_id}/").json()
    return {a["address"]: (a["source"], nic["mac"]) for nic in domain["addresses"] for a in nic["addresses"]}


def test_a_nat_network_made_used_changed_and_removed(stack: Stack, netbox: FleetHost, browser: Any) -> None:
    hid = netbox.host_id
    # Made through the API: started, its bridge carrying the host's address inside the namespace.
    body = {"name": "lab", "mode": "nat", **LAB}
    run_job(stack, stack.api("POST", f"/api/v1/hosts/{hid}/networks/", json=body))
    lab = wait_for(
        "lab listed active", lambda: (n := networks(stack, netbox).get("lab")) and n["active"] and n
    )
    assert (lab["mode"], lab["ipv4"], lab["dhcp_start"], lab["autostart"]) == (
        "nat",
        LAB["ipv4"],
        LAB["dhcp_start"],
        True,
    )
    on_bridge = netbox.box.run(["ip", "-br", "addr", "show", lab["bridge"]], capture_output=True, text=True)
    assert "192.168.150.1/24" in on_bridge.stdout, on_bridge.stdout
    # The same name again is refused before any job.
    again = stack.api("POST", f"/api/v1/hosts/{hid}/networks/", json=body)
    assert again.status_code == 409 and "already has" in again.text

    # A real guest on it asks for an address by DHCP and gets one from the range.
    name = f"netguest-{uuid.uuid4().hex[:6]}"
    guest = {
        "name": name,
        "host": hid,
        "memory_mib": 96,
        "boot": {
            "kernel": f"{netbox.box.pool_dir}/vmlinuz",
            "initrd": f"{netbox.box.pool_dir}/initrd.img",
            "cmdline": "console=ttyS0",
        },
        "nics": [{"source": "network", "name": "lab", "model": "virtio"}],
        "start": True,
    }
    created = stack.api("POST", "/api/v1/domains/", json=guest)
    assert created.status_code == 202, created.text
    domain_id = created.json()["domain"]["id"]
    assert stack.wait_job(created.json()["job"])["status"] == "succeeded"
    stack.wait_state(domain_id, "running")
    nics = wait_for(
        "the guest's card reported",
        lambda: stack.api("GET", f"/api/v1/domains/{domain_id}/").json()["nics"],
    )
    assert [(n["source"], n["name"], n["model"]) for n in nics] == [("network", "lab", "virtio")], nics
    mac = nics[0]["mac"]
    leased = wait_for("a DHCP lease", lambda: leases(netbox, "lab").get(mac), timeout=90)
    seen_at = time.monotonic()
    assert leased.startswith("192.168.150.") and 100 <= int(leased.rsplit(".", 1)[1]) <= 200, leased
    # ... and the console shows it, from the agent's own event (nobody polls the domain), with
    # where it came from; the list finds the guest by it.
    shown = wait_for("the address in the API", lambda: addresses(stack, domain_id).get(leased), timeout=20)
    print(f"lease in libvirt -> address in the API: {time.monotonic() - seen_at:.1f} s")
    assert shown == ("lease", mac)
    found = stack.api("GET", f"/api/v1/domains/?q={leased}").json()["results"]
    assert [d["name"] for d in found] == [name]
    page = browser.new_page()
    sign_in(page, stack)
    page.goto(f"{stack.url}/?q={leased}")
    row = page.locator(f'tr[data-domain-row="{domain_id}"] [data-field="addresses"]')
    assert leased in row.inner_text()
    page.goto(f"{stack.url}/domains/{domain_id}/")
    cell = page.locator(f'[data-nic-addresses="{domain_id}"][data-mac="{mac}"]')
    assert leased in cell.inner_text() and "lease" in cell.inner_text()
    page.screenshot(path=str(ARTIFACTS / "domain-addresses.png"), full_page=True)

    # A second card, added from the page to the running guest: hot-plugged (the guest asks for
    # an address on it, which only a guest that has the card can), its link set down and up,
    # then unplugged.
    page.locator("details.nic-new summary").click()
    page.locator("details.nic-new select[name=connect]").select_option("network:lab")
    page.locator("details.nic-new button", has_text="Add card").click()
    page.locator("tr[data-nic]").nth(1).wait_for(timeout=60_000)
    cards = wait_for("two cards reported", lambda: (n := domain_nics(stack, domain_id)) and len(n) == 2 and n)
    second = next(n["mac"] for n in cards if n["mac"] != mac)
    assert next(n for n in cards if n["mac"] == second)["pending"] is None  # live, not "next boot"
    assert second in netbox.box.virsh("domiflist", name)
    second_ip = wait_for(
        "a lease for the hot-plugged card", lambda: leases(netbox, "lab").get(second), timeout=90
    )
    assert wait_for("ping on the hot-plugged card", lambda: pings(netbox, second_ip), timeout=30)
    row = page.locator(f'tr[data-nic="{second}"]')
    row.locator("button", has_text="Link down").click()
    wait_for("link down", lambda: "down" in netbox.box.virsh("domif-getlink", name, second))
    page.locator(f'tr[data-nic="{second}"] button', has_text="Link up").wait_for(timeout=30_000)
    run_job(stack, stack.api("PATCH", f"/api/v1/domains/{domain_id}/nics/{second}/", json={"link": "up"}))
    assert "up" in netbox.box.virsh("domif-getlink", name, second)
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator(f'tr[data-nic="{second}"] button', has_text="Detach").click()
    page.locator(f'tr[data-nic="{second}"]').wait_for(state="detached", timeout=60_000)
    wait_for("the card gone", lambda: second not in netbox.box.virsh("domiflist", name))
    assert [n["mac"] for n in domain_nics(stack, domain_id)] == [mac]
    page.screenshot(path=str(ARTIFACTS / "domain-nics.png"), full_page=True)
    assert wait_for("the guest answering ping", lambda: pings(netbox, leased), timeout=30)
    assert name in networks(stack, netbox)["lab"]["attached"]

    # Stop and delete are refused while it runs, naming it.
    for refused in (
        stack.api("POST", f"/api/v1/hosts/{hid}/networks/lab/stop/"),
        stack.api("DELETE", f"/api/v1/hosts/{hid}/networks/lab/"),
    ):
        assert refused.status_code == 409 and name in refused.text, refused.text

    # A static host entry gives it a chosen address, live, from its next lease.
    dhcp = {
        **{k: LAB[k] for k in ("dhcp_start", "dhcp_end")},
        "hosts": [{"mac": mac, "ip": "192.168.150.20", "name": "web1"}],
    }
    bad = stack.api("PUT", f"/api/v1/hosts/{hid}/networks/lab/dhcp/", json={**dhcp, "dhcp_start": "10.0.0.5"})
    assert bad.status_code == 400 and "dhcp_start" in bad.json()["fields"], bad.text
    run_job(stack, stack.api("PUT", f"/api/v1/hosts/{hid}/networks/lab/dhcp/", json=dhcp))
    assert "192.168.150.20" in netbox.box.virsh("net-dumpxml", "lab")  # live, not only the definition
    assert "192.168.150.20" in netbox.box.virsh("net-dumpxml", "--inactive", "lab")
    run_job(stack, stack.api("POST", f"/api/v1/domains/{domain_id}/force-off/"))
    run_job(stack, stack.api("POST", f"/api/v1/domains/{domain_id}/start/"))
    assert wait_for(
        "the chosen address", lambda: leases(netbox, "lab").get(mac) == "192.168.150.20", timeout=90
    )
    assert wait_for("ping at the chosen address", lambda: pings(netbox, "192.168.150.20"), timeout=30)
    # The page open on the domain follows: the old address went with the stop, the chosen one
    # comes, live.
    cell.locator("code", has_text="192.168.150.20").wait_for(timeout=30_000)
    assert leased not in cell.inner_text()
    page.close()

    # Once the guest is gone, the network stops and goes.
    run_job(stack, stack.api("POST", f"/api/v1/domains/{domain_id}/force-off/"))
    run_job(stack, stack.api("DELETE", f"/api/v1/domains/{domain_id}/", json={"delete_disks": True}))
    run_job(stack, stack.api("DELETE", f"/api/v1/hosts/{hid}/networks/lab/"))
    wait_for("lab gone", lambda: "lab" not in networks(stack, netbox))
    assert "lab" not in netbox.box.virsh("net-list", "--all", "--name").split()


def test_the_wizard_starts_an_inactive_network(stack: Stack, netbox: FleetHost, browser: Any) -> None:
    """The host's `default` network is defined but not running: the wizard offers it, says so,
    and starts it from the network step."""
    listed = networks(stack, netbox)
    assert "default" in listed and not listed["default"]["active"], listed
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, stack)
    page.goto(stack.url + "/domains/new/")
    page.select_option("select[name=host]", str(netbox.host_id))
    page.fill("input[name=name]", f"wiz-{uuid.uuid4().hex[:6]}")
    for step in range(1, 6):  # to the network step, each checked by the server on the way
        if step == 3:
            page.check("input[name=boot_kind][value=pxe]")
        if step == 4:
            page.select_option("select[name=os_family]", "other")
            page.select_option("select[name=os]", "generic")
        page.click("#next")
        page.wait_for_selector(f'section[data-step="{step + 1}"]:not([hidden])')
    card = page.locator(".nic-row").first
    assert card.locator("select[name=n_source]").input_value() == "network:default"
    note = card.locator(".nic-inactive")
    note.wait_for(state="visible")
    assert "not running" in note.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "wizard-network-inactive.png"))
    card.locator("[data-start-network]").click()
    note.wait_for(state="hidden", timeout=60_000)
    assert "inactive" not in card.locator("select[name=n_source] option:checked").inner_text()
    assert "default" in netbox.box.virsh("net-list", "--name").split()  # running now
    wait_for("default shown active", lambda: networks(stack, netbox)["default"]["active"])
    page.screenshot(path=str(ARTIFACTS / "wizard-network-started.png"))
    # The host page lists it as active, with its address and DHCP range.
    page.goto(f"{stack.url}/hosts/{netbox.host_id}/")
    row = page.locator('tr[data-network="default"]')
    assert "active" in row.inner_text() and "192.168.122.1/24" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "host-networks.png"), full_page=True)
    page.close()
