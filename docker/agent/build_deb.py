"""Build the agent's Debian package: domus-agent_<version>_amd64.deb, for Debian bookworm.

    .venv/bin/python docker/agent/build_deb.py [OUT_DIR]      (or docker/agent/build-deb.sh)

What goes in:
- /usr/lib/domus-agent/: the `agent` package, and the third-party Python packages it imports
  (docker/agent/requirements.txt: cp311 manylinux wheels installed with `pip --target`),
  stripped of what only builds them (C sources, Cython files, headers, scripts, man pages).
  libvirt-python is not among them: Depends: python3-libvirt, built against the host's libvirt;
- /usr/bin/domus-agent: runs /usr/bin/python3 with that directory first on sys.path;
- /lib/systemd/system/domus-agent.service, /etc/default/domus-agent (a conffile), the
  maintainer scripts in docker/agent/debian/.

The build checks itself: every third-party module the agent imports is vendored (or comes from
Debian), every vendored distribution is one the agent needs (directly or through another), and
each one's requirements are met. The same sources give the same .deb, byte for byte (file times
are the last commit's; owners root), which keeps the Docker layer that installs it cached.
Needs: dpkg-deb, strip (binutils), and this repository's venv (pip, packaging).
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from email.message import Message
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGE = "domus-agent"
LIB_DIR = Path("usr/lib/domus-agent")
REQUIREMENTS = HERE / "requirements.txt"
PYTHON = "3.11"  # Debian bookworm's python3
PYTHON_FULL = "3.11.2"
GLIBC_MINOR_MAX = 36  # bookworm's glibc 2.36: the newest manylinux wheels it runs
# Third-party modules the agent imports that come from Debian packages instead.
FROM_DEBIAN = {"libvirt", "libvirt_qemu", "libvirtaio"}  # python3-libvirt
# Declared by a vendored distribution, not needed at run time: cffi's C parser (cryptography
# loads only the compiled _cffi_backend).
NOT_SHIPPED = {"pycparser"}
BUILD_ONLY_SUFFIXES = (".pyx", ".pxd", ".pxi", ".c", ".h", ".cpp", ".pyi")
BUILD_ONLY_DIRS = ("bin", "share", "lxml/includes")  # target-level scripts, man pages; lxml's headers
DPKG_DEB_OPTIONS = "--root-owner-group -Zxz"
VENDOR_RECIPE = "1"  # bump when the vendoring steps change, to rebuild the cached tree
DEPENDS = [
    "python3 (>= 3.11)",
    "python3 (<< 3.12)",  # the vendored extension modules are built for CPython 3.11
    "python3-libvirt",
]
RECOMMENDS = [
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "qemu-system-x86",
    "qemu-utils",
    "dnsmasq-base",  # libvirt's NAT and isolated networks hand out addresses with it
]
SUGGESTS = ["libvirt-daemon-driver-xen"]
DESCRIPTION = """\
Domus agent: drives this host's libvirt for the Domus console
 The per-host daemon of Domus, a web console for Xen and KVM fleets: it owns
 the host's libvirt connection and serves the console an authenticated API
 (HTTPS and WebSocket, port 8901) for domains, consoles, storage and events.
 .
 After installing: look at /etc/default/domus-agent, run
 `domus-agent init --url https://<this host>:8901` (it prints the certificate's
 fingerprint and a pairing code), `systemctl enable --now domus-agent`, then
 add the host in the console (Hosts -> Add host) with that URL and code."""


class BuildError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"build-deb: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        output = f"{result.stderr}{result.stdout}".strip()
        raise BuildError(f"{' '.join(argv[:3])}... failed ({result.returncode}):\n{output}")


# --- version and time --------------------------------------------------------------------------


def agent_version() -> str:
    """agent/__init__.py's __version__, as a Debian version (0.2.0rc1 -> 0.2.0~rc1)."""
    tree = ast.parse((REPO / "agent" / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            version = Version(node.value.value)
            debian = ".".join(str(part) for part in version.release)
            if version.pre is not None:
                debian += f"~{version.pre[0]}{version.pre[1]}"
            if version.dev is not None:
                debian += f"~dev{version.dev}"
            if version.post is not None:
                debian += f"+post{version.post}"
            return debian
    raise BuildError("agent/__init__.py has no __version__ = '...'")


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH, else the last commit's time (the same for every clone of it)."""
    if value := os.environ.get("SOURCE_DATE_EPOCH"):
        return int(value)
    result = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=False
    )
    if result.returncode == 0 and result.stdout.strip():
        return int(result.stdout.strip())
    return int((REPO / "agent" / "__init__.py").stat().st_mtime)


def maintainer() -> str:
    """$DEBFULLNAME <$DEBEMAIL> (as dch reads them), else the last commit's author."""
    if os.environ.get("DEBFULLNAME") and os.environ.get("DEBEMAIL"):
        return f"{os.environ['DEBFULLNAME']} <{os.environ['DEBEMAIL']}>"
    result = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%an <%ae>"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "Domus maintainers <root@localhost>"


# --- the vendored tree -------------------------------------------------------------------------


def pip_options() -> list[str]:
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR_MAX, 16, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    options = ["--only-binary", ":all:", "--no-deps", "--no-compile", "--python-version", PYTHON]
    options += ["--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}", "--abi", "abi3"]
    options += ["--abi", "none", "--disable-pip-version-check", "--no-warn-script-location"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def vendor_tree(cache: Path) -> Path:
    """The third-party packages, installed and trimmed; cached per requirements and recipe."""
    key = hashlib.sha256(
        "\n".join([VENDOR_RECIPE, REQUIREMENTS.read_text(), *pip_options()]).encode()
    ).hexdigest()[:16]
    tree = cache / f"vendor-{key}"
    if tree.is_dir():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("vendor-*"):
        shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        log(f"installing {REQUIREMENTS.relative_to(REPO)} (pip --target, cp{PYTHON} wheels)")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(work / "tree")]
        run([*pip, *pip_options(), "--requirement", str(REQUIREMENTS)])
        trim(work / "tree")
        (work / "tree").rename(tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tree


def trim(tree: Path) -> None:
    for rel in BUILD_ONLY_DIRS:
        shutil.rmtree(tree / rel, ignore_errors=True)
    for path in sorted(tree.rglob("*")):
        if path.is_file() and path.name.endswith(BUILD_ONLY_SUFFIXES):
            path.unlink()
    for pycache in sorted(tree.rglob("__pycache__"), reverse=True):
        shutil.rmtree(pycache)
    # As dh_strip does: wheels often keep their debug symbols (megabytes per extension).
    libs = sorted(str(p) for p in tree.rglob("*.so"))
    if libs:
        run(["strip", "--strip-unneeded", *libs])


# --- checks ------------------------------------------------------------------------------------


def agent_imports() -> set[str]:
    """Top-level names of the third-party modules the agent package imports (stdlib excluded)."""
    names: set[str] = set()
    for path in sorted((REPO / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("agent", "__future__")}


def distributions(tree: Path) -> dict[str, tuple[dict[str, str], list[str], set[str]]]:
    """Each vendored distribution: canonical name -> (metadata fields, Requires-Dist, top-level
    module names it installs)."""
    found: dict[str, tuple[dict[str, str], list[str], set[str]]] = {}
    for info in sorted(tree.glob("*.dist-info")):
        meta = Parser().parsestr((info / "METADATA").read_text())
        tops: set[str] = set()
        for line in (info / "RECORD").read_text().splitlines():
            first = line.split(",", 1)[0].split("/", 1)[0]
            if first and not first.endswith((".dist-info", ".data")) and first not in ("..", "__pycache__"):
                tops.add(first.split(".", 1)[0])
        found[canonicalize_name(meta["Name"])] = (
            {"Name": meta["Name"], "Version": meta["Version"], "License": _license(meta)},
            meta.get_all("Requires-Dist") or [],
            tops,
        )
    return found


def _license(meta: Message) -> str:
    if expression := meta.get("License-Expression"):
        return str(expression)
    licence = str(meta.get("License") or "").strip()
    if licence and "\n" not in licence and len(licence) < 80:
        return licence
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or [] if "License ::" in c]
    return ", ".join(classifiers) or "see its licence file"


def check_vendored(tree: Path) -> dict[str, tuple[dict[str, str], list[str], set[str]]]:
    dists = distributions(tree)
    env = {  # marker values of bookworm's python3 on amd64
        "python_version": PYTHON,
        "python_full_version": PYTHON_FULL,
        "implementation_name": "cpython",
        "implementation_version": PYTHON_FULL,
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_release": "",
        "platform_version": "",
        "os_name": "posix",
        "extra": "",
    }
    problems: list[str] = []
    needs: dict[str, set[str]] = {}
    for name, (meta, requires, _tops) in dists.items():
        needs[name] = set()
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in NOT_SHIPPED:
                continue
            if dep not in dists:
                problems.append(f"{meta['Name']} needs {text}, which requirements.txt does not list")
            elif not req.specifier.contains(dists[dep][0]["Version"], prereleases=True):
                problems.append(f"{meta['Name']} needs {text}, got {dists[dep][0]['Version']}")
            else:
                needs[name].add(dep)
    # Whatever the agent imports is vendored or Debian's, and everything vendored is needed.
    module_owner = {top: name for name, (_m, _r, tops) in dists.items() for top in tops}
    wanted: list[str] = []
    for module in sorted(agent_imports()):
        if module in FROM_DEBIAN:
            continue
        if module not in module_owner:
            problems.append(f"the agent imports {module!r}: no vendored distribution provides it")
        else:
            wanted.append(module_owner[module])
    reached: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name not in reached:
            reached.add(name)
            wanted.extend(needs.get(name, ()))
    for name in sorted(set(dists) - reached):
        problems.append(f"{dists[name][0]['Name']} is vendored, but nothing the agent imports needs it")
    if problems:
        raise BuildError("vendored packages do not fit the agent:\n  " + "\n  ".join(problems))
    return dists


def min_glibc(tree: Path) -> str:
    """The glibc the vendored wheels need: the newest of each wheel's oldest manylinux tag."""
    legacy = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
    need = 17
    for wheel in tree.glob("*.dist-info/WHEEL"):
        minors = []
        for line in wheel.read_text().splitlines():
            if not line.startswith("Tag:") or line.strip().endswith("-any"):
                continue
            platform = line.rsplit("-", 1)[-1].strip()
            if match := re.fullmatch(r"manylinux_2_(\d+)_x86_64", platform):
                minors.append(int(match.group(1)))
            elif (base := platform.removesuffix("_x86_64")) in legacy:
                minors.append(legacy[base])
        if minors:
            need = max(need, min(minors))
    return f"2.{need}"


# --- the package -------------------------------------------------------------------------------


def agent_sources() -> Iterator[Path]:
    for path in sorted((REPO / "agent").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            yield path


def copy_tree(src: Path, dst: Path, files: Iterable[Path] | None = None) -> None:
    for path in files if files is not None else sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def control(version: str, installed_kib: int, glibc: str) -> str:
    fields = {
        "Package": PACKAGE,
        "Version": version,
        "Architecture": "amd64",
        "Maintainer": maintainer(),
        "Installed-Size": str(installed_kib),
        "Depends": ", ".join([*DEPENDS, f"libc6 (>= {glibc})"]),
        "Recommends": ", ".join(RECOMMENDS),
        "Suggests": ", ".join(SUGGESTS),
        "Section": "admin",
        "Priority": "optional",
        "Description": DESCRIPTION,
    }
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def copyright_text(dists: dict[str, tuple[dict[str, str], list[str], set[str]]]) -> str:
    lines = [
        "Domus agent, packaged from the Domus repository (agent/).",
        "",
        f"Vendored in /{LIB_DIR} (each one's licence texts are in its *.dist-info directory):",
    ]
    for _name, (meta, _r, _t) in sorted(dists.items()):
        lines.append(f"  {meta['Name']} {meta['Version']}: {meta['License']}")
    return "\n".join(lines) + "\n"


def stage(root: Path, tree: Path, version: str) -> None:
    dists = check_vendored(tree)
    lib = root / LIB_DIR
    copy_tree(tree, lib)
    copy_tree(REPO / "agent", lib / "agent", agent_sources())
    files = {
        "usr/bin/domus-agent": (HERE / "domus-agent.launcher", 0o755),
        "lib/systemd/system/domus-agent.service": (HERE / "domus-agent.service", 0o644),
        "etc/default/domus-agent": (HERE / "domus-agent.default", 0o644),
        "DEBIAN/conffiles": (HERE / "debian" / "conffiles", 0o644),
        "DEBIAN/postinst": (HERE / "debian" / "postinst", 0o755),
        "DEBIAN/prerm": (HERE / "debian" / "prerm", 0o755),
        "DEBIAN/postrm": (HERE / "debian" / "postrm", 0o755),
    }
    for rel, (src, _mode) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
    doc = root / "usr/share/doc" / PACKAGE
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text(dists))
    for path in [root, *sorted(root.rglob("*"))]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for rel, (_src, mode) in files.items():
        (root / rel).chmod(mode)
    payload = [p for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "DEBIAN"]
    # dpkg's format (dpkg --verify): MD5, not a security measure here.
    sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in payload)  # noqa: S324
    (root / "DEBIAN/md5sums").write_text(sums)
    (root / "DEBIAN/md5sums").chmod(0o644)
    installed_kib = sum((p.stat().st_size + 1023) // 1024 for p in payload)
    (root / "DEBIAN/control").write_text(control(version, installed_kib, min_glibc(tree)))
    (root / "DEBIAN/control").chmod(0o644)


def tree_digest(root: Path, epoch: int) -> str:
    """What dpkg-deb would pack: paths, modes and contents, and the file time."""
    digest = hashlib.sha256(f"{epoch} {DPKG_DEB_OPTIONS}\n".encode())
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        digest.update(f"{rel}\0{path.stat().st_mode:o}\0".encode())
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build(out_dir: Path, cache: Path) -> Path:
    version = agent_version()
    epoch = source_date_epoch()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # one build at a time per cache (make test, a second shell)
        fcntl.flock(lock, fcntl.LOCK_EX)
        tree = vendor_tree(cache)
        out_dir.mkdir(parents=True, exist_ok=True)
        deb = out_dir / f"{PACKAGE}_{version}_amd64.deb"
        stamp = deb.with_name(deb.name + ".inputs")
        with tempfile.TemporaryDirectory(prefix="domus-agent-deb-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            stage(root, tree, version)
            digest = tree_digest(root, epoch)
            # Compressing takes ~20 s of CPU: skip it when the same inputs made this .deb already.
            if deb.exists() and stamp.exists() and stamp.read_text().strip() == digest:
                log("unchanged since the last build")
                return deb
            for path in [root, *root.rglob("*")]:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
            partial = out_dir / f".{deb.name}.partial"
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
            run(["dpkg-deb", *DPKG_DEB_OPTIONS.split(), "--build", str(root), str(partial)], env=env)
            stamp.unlink(missing_ok=True)
            partial.replace(deb)
            stamp.write_text(digest + "\n")
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build domus-agent_<version>_amd64.deb")
    parser.add_argument("out_dir", nargs="?", default=str(REPO / ".cache/deb"), help="default .cache/deb/")
    parser.add_argument("--cache", default=str(REPO / ".cache/deb-vendor"), help="default .cache/deb-vendor/")
    args = parser.parse_args(argv)
    for tool in ("dpkg-deb", "strip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"build-deb: {tool} is missing (apt-get install dpkg binutils)")
    try:
        deb = build(Path(args.out_dir).resolve(), Path(args.cache).resolve())
    except BuildError as err:
        raise SystemExit(f"build-deb: {err}") from err
    log(f"{deb} ({deb.stat().st_size / 1e6:.1f} MB)")
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
