"""Network installs: fetch an installer tree's kernel and initrd into the default pool.

The files go to `<default pool>/.domus-install/<uuid>/`, inside a pool so the usual path checks
accept them, and are removed with the domain. A fetch is idempotent: a retried define reuses
complete files (written to a temporary name and renamed only once whole).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from agent.errors import InvalidSpec
from agent.protocol import DomainSpec, NetworkInstall

INSTALL_DIR = ".domus-install"
MAX_BYTES = 1024**3  # an installer's initrd is tens to hundreds of MiB
TIMEOUT = aiohttp.ClientTimeout(total=30 * 60, sock_connect=20, sock_read=120)


def installer_dir(default_dir: str, spec: DomainSpec) -> Path:
    return Path(default_dir) / INSTALL_DIR / str(spec.uuid)


def installer_paths(default_dir: str, spec: DomainSpec) -> tuple[str, str]:
    where = installer_dir(default_dir, spec)
    return str(where / "vmlinuz"), str(where / "initrd.img")


def remove_installer(default_dir: str, domain_uuid: str) -> None:
    shutil.rmtree(Path(default_dir) / INSTALL_DIR / domain_uuid, ignore_errors=True)


async def _fetch(session: aiohttp.ClientSession, field: str, url: str, dest: str) -> None:
    if os.path.isfile(dest):
        return
    partial = dest + ".part"
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise InvalidSpec(f"{field}: {url} answered HTTP {response.status}")
            size = 0
            with open(partial, "wb") as out:
                async for chunk in response.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise InvalidSpec(f"{field}: {url} is larger than {MAX_BYTES // 1024**2} MiB")
                    out.write(chunk)
        if size == 0:
            raise InvalidSpec(f"{field}: {url} is empty")
        os.replace(partial, dest)
    except aiohttp.ClientError as err:
        raise InvalidSpec(f"{field}: cannot fetch {url}: {err}") from err
    except TimeoutError as err:
        raise InvalidSpec(f"{field}: fetching {url} timed out") from err
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


async def fetch_installer(spec: DomainSpec, default_dir: str) -> tuple[str, str]:
    """Download the kernel and initrd of `spec`'s network install; returns their paths."""
    boot = spec.boot
    if not isinstance(boot, NetworkInstall):
        raise ValueError("not a network install")
    kernel, initrd = installer_paths(default_dir, spec)
    os.makedirs(os.path.dirname(kernel), mode=0o755, exist_ok=True)
    base = boot.url if boot.url.endswith("/") else boot.url + "/"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        await _fetch(session, "boot.kernel", urljoin(base, boot.kernel), kernel)
        await _fetch(session, "boot.initrd", urljoin(base, boot.initrd), initrd)
    return kernel, initrd
