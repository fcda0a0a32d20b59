"""`python -m agent` / `domus-agent`: parse the command line and run the agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import cast

from agent import __version__
from agent.accel import AccelRequest
from agent.runtime import AgentConfig
from agent.server import serve

SECRET_ENV = "DOMUS_AGENT_SECRET"  # noqa: S105 -- a variable name, not a secret


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="domus-agent", description="Domus per-host agent")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--secret-file", help=f"file holding the shared secret (else ${SECRET_ENV})")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--pool-path", default="/var/lib/libvirt/images")
    parser.add_argument(
        "--probe-timeout", type=float, default=180.0, help="seconds allowed for the KVM probe"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--version", action="version", version=f"domus-agent {__version__}")
    return parser.parse_args(argv)


def read_secret(secret_file: str | None) -> str:
    if secret_file:
        with open(secret_file, encoding="utf-8") as handle:
            secret = handle.read().strip()
    else:
        secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise SystemExit(f"domus-agent: no secret (use --secret-file or ${SECRET_ENV})")
    return secret


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = AgentConfig(
        uri=args.uri,
        listen=args.listen,
        port=args.port,
        secret=read_secret(args.secret_file),
        accel=cast(AccelRequest, args.accel),
        pool_path=os.path.abspath(args.pool_path),
        probe_timeout_s=args.probe_timeout,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
