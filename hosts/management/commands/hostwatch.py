import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hosts.hostwatch import HostWatch


class Command(BaseCommand):
    help = "Follow every host's agent events and keep the database and browsers up to date."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shard", default="0/1", help="i/n: watch the hosts whose id %% n == i")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            index, count = (int(p) for p in options["shard"].split("/"))
        except ValueError as exc:
            raise CommandError("--shard must look like 0/2") from exc
        if not 0 <= index < count:
            raise CommandError("--shard i/n needs 0 <= i < n")
        try:
            asyncio.run(HostWatch(shard=index, shards=count).run())
        except KeyboardInterrupt:
            pass
