"""Uploading an ISO: 1 GiB through Domus (tus-js-client in Chromium -> console -> agent -> pool),
side by side, in one run and into the same directory, with

- `dd` writing the same bytes there (the disk's limit; conv=fsync, as the agent syncs at the end),
- `curl -T` to a plain static file server (nginx with WebDAV PUT, which spools the body to a
  temporary file in the same directory and renames it: what Domus does, minus the console),
- `curl -T` through Domus's API (the same path as the browser, without the browser).

Goal (issue 19): the browser upload at >= 0.7x the plain file server's rate, the console's web
process within 50 MB of its idle resident memory for the whole upload, and an upload cut
part-way losing less than one chunk (256 MiB, what the page sends per PATCH) when resumed.

Needs: a libvirt daemon on qemu:///system (as `make test` starts it), Debian's chromium, and
nginx (`apt-get install nginx-light`). Run: `.venv/bin/python bench/upload_bench.py [--size-mib N]`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.console_stack import ConsoleStack, free_port, login_sessions  # noqa: E402
from bench.output import log, table  # noqa: E402
from bench.procstats import cpu_seconds, memory  # noqa: E402

CHUNK = 256 << 20  # the page's tus chunk (console/static/domus/upload.js)
CACHE = ROOT / ".cache" / "bench"


def payload(size: int) -> Path:
    """A file of `size` bytes of random data (made once, kept in .cache/bench)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"upload-{size >> 20}MiB.bin"
    if not path.exists() or path.stat().st_size != size:
        log(f"making {path} ({size >> 20} MiB of random bytes)")
        with path.open("wb") as out:
            left = size
            while left:
                piece = os.urandom(min(left, 8 << 20))
                out.write(piece)
                left -= len(piece)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while piece := src.read(8 << 20):
            digest.update(piece)
    return digest.hexdigest()


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-c", "qemu:///system", *args], check=True, capture_output=True)


class Sampler:
    """The resident memory of one process every 50 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = memory(self.pid)
            if now is not None:
                self.peak_kib = max(self.peak_kib, int(now.rss_mib * 1024))
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}"
        )
    return time.monotonic() - started


def nginx_put(source: Path, directory: Path, work: Path) -> tuple[float, float]:
    """Seconds for the PUT, and until what it wrote is on disk."""
    port = free_port()
    (directory / ".nginx-tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off; user root; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{}}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{ root {directory}; dav_methods PUT; client_body_temp_path {directory}/.nginx-tmp; }}
  }}
}}
"""
    )
    server = subprocess.Popen(
        ["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("HEAD", "/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        put = timed(
            ["curl", "-sS", "--fail-with-body", "-T", str(source), f"http://127.0.0.1:{port}/nginx.bin"]
        )
        # nginx does not sync what it wrote; Domus's agent does, before it names the volume.
        return put, put + timed(["sync", str(directory / "nginx.bin")])
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory / ".nginx-tmp", ignore_errors=True)


def create_upload(stack: ConsoleStack, token: str, host_id: int, pool: str, name: str, size: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    body = json.dumps({"host": host_id, "pool": pool, "name": name, "length": size})
    conn.request(
        "POST",
        "/api/v1/uploads/",
        body,
        {"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    answer = conn.getresponse()
    text = answer.read()
    assert answer.status == 201, text
    return str(answer.getheader("Location"))


def tus_headers(token: str, offset: int) -> list[str]:
    return [
        *("-H", f"Authorization: Token {token}", "-H", f"Upload-Offset: {offset}"),
        *("-H", "Tus-Resumable: 1.0.0", "-H", "Content-Type: application/offset+octet-stream"),
    ]


def head_offset(stack: ConsoleStack, token: str, location: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    conn.request("HEAD", location, headers={"Authorization": f"Token {token}", "Tus-Resumable": "1.0.0"})
    answer = conn.getresponse()
    answer.read()
    return int(answer.getheader("Upload-Offset") or -1)


def cut_and_resume(
    stack: ConsoleStack, token: str, host_id: int, pool: str, source: Path, size: int
) -> dict[str, int]:
    """Send the first ~45 % in one PATCH and drop the connection; ask where the host is; send the
    rest from there. What was sent but not kept is what a cut loses."""
    location = create_upload(stack, token, host_id, pool, "cut.bin", size)
    cut_at = (size * 45 // 100) // 65536 * 65536 + 12345
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    conn.putrequest("PATCH", location)
    for header in ("Authorization", "Upload-Offset", "Tus-Resumable", "Content-Type", "Content-Length"):
        value = {
            "Authorization": f"Token {token}",
            "Upload-Offset": "0",
            "Tus-Resumable": "1.0.0",
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(size),
        }[header]
        conn.putheader(header, value)
    conn.endheaders()
    with source.open("rb") as src:
        left = cut_at
        while left:
            piece = src.read(min(left, 1 << 20))
            conn.send(piece)
            left -= len(piece)
    conn.sock.close()  # the network goes away mid-body
    time.sleep(1.0)
    offset = head_offset(stack, token, location)
    rest = 'from=$1; src=$2; shift 2; tail -c +"$from" "$src" | curl -sS -f -X PATCH -T - "$@"'
    resume = [*tus_headers(token, offset), stack.url + location.rstrip("/")]
    subprocess.run(
        ["sh", "-c", rest, "sh", str(offset + 1), str(source), *resume], check=True, capture_output=True
    )
    return {"sent_before_cut": cut_at, "kept": offset, "lost": cut_at - offset}


def browser_upload(
    stack: ConsoleStack, session: str, host_id: int, pool: str, source: Path, chunk: int
) -> tuple[float, str]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ],
        )
        context = browser.new_context()
        context.add_cookies([{"name": "sessionid", "value": session, "url": stack.url}])
        page = context.new_page()
        page.goto(f"{stack.url}/hosts/{host_id}/pools/{pool}/")
        page.click("#upload summary")
        page.set_input_files("#upload [data-upload-file]", str(source))
        page.fill("#upload [data-upload-name]", "browser.bin")
        page.evaluate(
            "(chunk) => { document.querySelector('#upload form').dataset.chunk = chunk; }", str(chunk)
        )
        started = time.monotonic()
        page.click("#upload button[type=submit]")
        page.locator('#upload [data-upload-status][data-state="done"]').wait_for(timeout=1_800_000)
        took = time.monotonic() - started
        said = page.inner_text("#upload [data-upload-text]")
        browser.close()
    return took, said


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument(
        "--chunk-mib", type=int, default=CHUNK >> 20, help="the page's tus chunk (default 64)"
    )
    args = parser.parse_args()
    size = args.size_mib << 20
    for tool in ("nginx", "curl", "dd", "virsh"):
        if shutil.which(tool) is None:
            log(f"{tool} is missing (nginx: apt-get install nginx-light)")
            return 2
    source = payload(size)
    digest = sha256_of(source)
    work = Path(tempfile.mkdtemp(prefix="domus-upload-bench-"))
    # A pool of its own beside the images (where libvirt's guests' files usually are).
    pool_dir = Path(tempfile.mkdtemp(prefix="domus-upload-bench-pool-", dir="/var/lib/libvirt"))
    pool = f"bench-upload-{os.getpid()}"
    stack = ConsoleStack(work / "stack")
    agent = None
    results: dict[str, Any] = {"size_bytes": size}
    try:
        virsh("pool-define-as", pool, "dir", "--target", str(pool_dir))
        virsh("pool-start", pool)
        from tests.agent.conftest import launch_agent, stop_agent

        stack.prepare()
        agent = launch_agent(
            uri="qemu:///system",
            pool_dir=pool_dir,
            log_path=work / "agent.log",
            accel="tcg",
            ready_timeout=60,
        )
        stack.start()
        from django.contrib.auth import get_user_model

        from console.access.services import api_token_issue
        from hosts.agent import run_agent
        from hosts.models import Host
        from hosts.services import host_observe

        user = get_user_model().objects.create_superuser("bench-admin", password=None)
        token = api_token_issue(user=user)[1]
        host = Host.objects.create(name="bench", url=agent.url, secret=agent.secret, state=Host.State.ONLINE)
        facts = run_agent(host, lambda client: client.host())
        host_observe(host_id=host.pk, state=Host.State.ONLINE, facts=facts.model_dump(mode="json"))
        session = login_sessions(user, 1)[0]

        log("dd (conv=fsync) into the pool's directory")
        subprocess.run(["sync"], check=True)
        results["dd_s"] = timed(["dd", f"if={source}", f"of={pool_dir}/dd.bin", "bs=4M", "conv=fsync"])
        (pool_dir / "dd.bin").unlink()
        log("curl -T to nginx (WebDAV PUT) into the same directory")
        results["nginx_s"], results["nginx_synced_s"] = nginx_put(source, pool_dir, work)
        (pool_dir / "nginx.bin").unlink()

        web = stack.pid("web")
        idle = memory(web)
        results["web_idle_rss_kib"] = int(idle.rss_mib * 1024) if idle else None
        log("curl -T through Domus (POST, then one PATCH)")
        location = create_upload(stack, token, host.pk, pool, "curl.bin", size)
        cpu_before = {"web": cpu_seconds(web) or 0.0, "agent": cpu_seconds(agent.proc.pid) or 0.0}
        with Sampler(web) as sampled:
            results["domus_curl_s"] = timed(
                [
                    "curl",
                    "-sS",
                    "--fail-with-body",
                    "-X",
                    "PATCH",
                    "-T",
                    str(source),
                    *tus_headers(token, 0),
                    stack.url + location.rstrip("/"),  # else curl -T appends the file's name
                ]
            )
        results["domus_curl_peak_rss_kib"] = sampled.peak_kib
        results["domus_curl_cpu_s"] = {
            "web": (cpu_seconds(web) or 0.0) - cpu_before["web"],
            "agent": (cpu_seconds(agent.proc.pid) or 0.0) - cpu_before["agent"],
        }
        assert sha256_of(pool_dir / "curl.bin") == digest
        (pool_dir / "curl.bin").unlink()

        log("tus-js-client in Chromium, from the pool's page")
        cpu_before = {"web": cpu_seconds(web) or 0.0, "agent": cpu_seconds(agent.proc.pid) or 0.0}
        with Sampler(web) as sampled:
            took, said = browser_upload(stack, session, host.pk, pool, source, args.chunk_mib << 20)
        results["browser_s"] = took
        results["browser_peak_rss_kib"] = sampled.peak_kib
        results["browser_cpu_s"] = {
            "web": (cpu_seconds(web) or 0.0) - cpu_before["web"],
            "agent": (cpu_seconds(agent.proc.pid) or 0.0) - cpu_before["agent"],
        }
        assert digest in said, said
        (pool_dir / "browser.bin").unlink()

        log("a PATCH cut at 45 %, resumed from what the host kept")
        results["resume"] = cut_and_resume(stack, token, host.pk, pool, source, size)
        assert sha256_of(pool_dir / "cut.bin") == digest
        (pool_dir / "cut.bin").unlink()
    finally:
        stack.stop()
        if agent is not None:
            stop_agent(agent)
        for verb in ("pool-destroy", "pool-undefine"):
            subprocess.run(["virsh", "-c", "qemu:///system", verb, pool], capture_output=True)
        shutil.rmtree(pool_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    mib = size / (1 << 20)

    def rate(seconds: float) -> str:
        return f"{mib / seconds:.0f} MiB/s"

    nginx = results["nginx_s"]
    rows = [
        ["path", "time", "rate", "vs nginx"],
        [
            "dd conv=fsync (the disk)",
            f"{results['dd_s']:.2f} s",
            rate(results["dd_s"]),
            f"{nginx / results['dd_s']:.2f}x",
        ],
        ["curl -T -> nginx PUT", f"{nginx:.2f} s", rate(nginx), "1.00x"],
        [
            "  the same, then sync",
            f"{results['nginx_synced_s']:.2f} s",
            rate(results["nginx_synced_s"]),
            f"{nginx / results['nginx_synced_s']:.2f}x",
        ],
        [
            "curl -T -> Domus",
            f"{results['domus_curl_s']:.2f} s",
            rate(results["domus_curl_s"]),
            f"{nginx / results['domus_curl_s']:.2f}x",
        ],
        [
            "Chromium tus -> Domus",
            f"{results['browser_s']:.2f} s",
            rate(results["browser_s"]),
            f"{nginx / results['browser_s']:.2f}x",
        ],
    ]
    print("\n".join(table(rows)))
    idle_kib = results["web_idle_rss_kib"] or 0
    print(
        f"web process: idle {idle_kib / 1024:.1f} MiB; peak during curl upload "
        f"+{(results['domus_curl_peak_rss_kib'] - idle_kib) / 1024:.1f} MiB, during browser upload "
        f"+{(results['browser_peak_rss_kib'] - idle_kib) / 1024:.1f} MiB"
    )
    for run in ("domus_curl", "browser"):
        used = results[f"{run}_cpu_s"]
        print(f"CPU seconds during {run}: web {used['web']:.2f}, agent {used['agent']:.2f}")
    cut = results["resume"]
    print(
        f"cut at {cut['sent_before_cut']} bytes: the host kept {cut['kept']}, lost {cut['lost']} bytes "
        f"({cut['lost'] / CHUNK:.4f} of a {CHUNK >> 20} MiB chunk)"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"upload-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
