"""`python -m agent` / `domus-agent`: parse the command line and run the agent.

domus-agent init [--url URL]     make the key and certificate (once), print a pairing code
domus-agent [serve] [options]    run the agent
domus-agent forget-consoles      every paired console's secret stops working
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import cast

from agent import __version__, netinstall
from agent.accel import AccelRequest
from agent.identity import DEFAULT_STATE_DIR, PAIRING_TTL_SECONDS, AgentIdentity
from agent.protocol import format_fingerprint
from agent.runtime import AgentConfig
from agent.server import serve
from agent.uploads import DEFAULT_EXPIRY_S

SECRET_ENV = "DOMUS_AGENT_SECRET"  # noqa: S105 -- a variable name, not a secret
NETINSTALL_DENY_ENV = "DOMUS_AGENT_NETINSTALL_DENY"
NETINSTALL_ALLOW_ENV = "DOMUS_AGENT_NETINSTALL_ALLOW"
COMMANDS = ("serve", "init", "forget-consoles")


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"key, certificate and paired consoles (default {DEFAULT_STATE_DIR})",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args.insert(0, "serve")  # `domus-agent --port ...` means serve
    parser = argparse.ArgumentParser(prog="domus-agent", description="Domus per-host agent")
    parser.add_argument("--version", action="version", version=f"domus-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the agent (the default)")
    run.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    run.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    run.add_argument("--port", type=int, default=8901)
    run.add_argument(
        "--secret-file",
        help=f"a fixed console secret (else ${SECRET_ENV}); for consoles on this machine only",
    )
    _state_dir_arg(run)
    run.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    run.add_argument("--pool-path", default="/var/lib/libvirt/images")
    run.add_argument("--probe-timeout", type=float, default=180.0, help="seconds allowed for the KVM probe")
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--upload-expiry",
        type=_positive,
        default=DEFAULT_EXPIRY_S,
        metavar="SECONDS",
        help="an upload or fetch into a pool untouched this long is removed: an unfinished one's bytes, "
        f"a finished one's record (never its volume) (default {DEFAULT_EXPIRY_S:g})",
    )
    _netinstall_args(run)

    init = commands.add_parser("init", help="create the agent's certificate; print a pairing code")
    _state_dir_arg(init)
    init.add_argument("--url", help="the URL consoles will use (default https://<hostname>:8901)")

    forget = commands.add_parser("forget-consoles", help="unpair every console")
    _state_dir_arg(forget)
    return parser.parse_args(args)


def _network(value: str) -> netinstall.IPNetwork:
    try:
        return netinstall.parse_network(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from err
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not above zero")
    return number


def _netinstall_args(parser: argparse.ArgumentParser) -> None:
    """Where network installs may fetch from: see `agent.netinstall.NetinstallPolicy`."""
    default = netinstall.NetinstallPolicy()
    parser.add_argument(
        "--netinstall-deny",
        metavar="CIDR",
        action="append",
        type=_network,
        default=[],
        help="also refuse installer trees in this range, e.g. the management network (repeatable; "
        f"added to ${NETINSTALL_DENY_ENV}, comma-separated). Always refused: loopback, link-local, "
        "multicast, reserved and this host's own addresses",
    )
    parser.add_argument(
        "--netinstall-allow",
        metavar="CIDR",
        action="append",
        type=_network,
        default=[],
        help="fetch from this range even if refused otherwise, e.g. a lab mirror's address "
        f"(repeatable; added to ${NETINSTALL_ALLOW_ENV}). Name the mirror, not a range holding services",
    )
    for kind, cap in (("kernel", default.kernel_max_bytes), ("initrd", default.initrd_max_bytes)):
        parser.add_argument(
            f"--netinstall-{kind}-max-mib",
            metavar="MIB",
            type=_positive,
            default=cap // netinstall.MIB,
            help=f"largest {kind} a network install may fetch (default {cap // netinstall.MIB})",
        )
    parser.add_argument(
        "--netinstall-timeout",
        type=_positive,
        default=default.timeout_s,
        metavar="SECONDS",
        help=f"time a network install's whole fetch may take (default {default.timeout_s:g})",
    )


def netinstall_policy(args: argparse.Namespace, environ: Mapping[str, str]) -> netinstall.NetinstallPolicy:
    """The network-install policy from the options and the environment (both count)."""
    ranges: dict[str, tuple[netinstall.IPNetwork, ...]] = {}
    for name, env in (("deny", NETINSTALL_DENY_ENV), ("allow", NETINSTALL_ALLOW_ENV)):
        try:
            from_env = netinstall.parse_networks([environ.get(env, "")])
        except ValueError as err:
            raise SystemExit(f"domus-agent: ${env}: {err}") from err
        ranges[name] = from_env + tuple(getattr(args, f"netinstall_{name}"))
    return netinstall.NetinstallPolicy(
        deny=ranges["deny"],
        allow=ranges["allow"],
        kernel_max_bytes=int(args.netinstall_kernel_max_mib * netinstall.MIB),
        initrd_max_bytes=int(args.netinstall_initrd_max_mib * netinstall.MIB),
        timeout_s=args.netinstall_timeout,
    )


def read_secret(secret_file: str | None) -> str:
    if secret_file:
        with open(secret_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ.get(SECRET_ENV, "").strip()


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def run_init(args: argparse.Namespace) -> None:
    identity = AgentIdentity(args.state_dir)
    url = args.url or f"https://{socket.getfqdn()}:8901"
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    cert = identity.ensure_certificate(names=[host])
    code, expires = identity.new_pairing_code()
    until = time.strftime("%H:%M:%S %Z", time.localtime(expires))
    made = "created" if cert.created else "kept (made earlier)"
    print(f"Certificate {made}: {cert.cert_path}")
    print()
    print(f"  URL:          {url}")
    print(f"  Fingerprint:  {format_fingerprint(cert.fingerprint)}")
    minutes = PAIRING_TTL_SECONDS // 60
    print(f"  Pairing code: {code}   (single use, expires at {until}, in {minutes} minutes)")
    print()
    print("In the Domus console: Hosts -> Add host, and enter the URL and the pairing code.")
    print("Check that the fingerprint the console shows is the one above.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "init":
        run_init(args)
        return
    if args.command == "forget-consoles":
        count = AgentIdentity(args.state_dir).forget_all()
        print(f"{count} console(s) forgotten; restart not needed.")
        return
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    identity = AgentIdentity(args.state_dir)
    secret = read_secret(args.secret_file)
    if not identity.has_certificate() and not _is_loopback(args.listen):
        raise SystemExit(
            f"domus-agent: no certificate in {args.state_dir}, and only loopback may skip TLS: "
            "run `domus-agent init` first (or --listen 127.0.0.1)"
        )
    if not secret and not identity.has_certificate():
        raise SystemExit(
            f"domus-agent: no way for a console to authenticate: run `domus-agent init` to pair "
            f"consoles, or give a fixed secret (--secret-file or ${SECRET_ENV})"
        )
    netinstall.configure(netinstall_policy(args, os.environ))
    config = AgentConfig(
        uri=args.uri,
        listen=args.listen,
        port=args.port,
        secret=secret,
        state_dir=args.state_dir,
        accel=cast(AccelRequest, args.accel),
        pool_path=os.path.abspath(args.pool_path),
        probe_timeout_s=args.probe_timeout,
        upload_expiry_s=args.upload_expiry,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
