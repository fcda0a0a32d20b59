"""`hostwatch --shard i/n`: every host is watched by exactly one shard."""

from __future__ import annotations

import asyncio

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from hosts.hostwatch import HostWatch
from hosts.models import Host

pytestmark = pytest.mark.django_db(transaction=True)


def test_shards_split_the_hosts_without_overlap() -> None:
    for i in range(7):
        Host.objects.create(name=f"h{i}", url=f"http://127.0.0.1:{9 + i}", secret="s" * 32)

    async def watched(shard: int, shards: int) -> set[str]:
        watch = HostWatch(shard=shard, shards=shards)
        await watch.rescan()
        names = {key.name for key in watch.watchers}
        for task in watch.watchers.values():
            task.cancel()
        await asyncio.gather(*watch.watchers.values(), return_exceptions=True)
        return names

    parts = [asyncio.run(watched(i, 3)) for i in range(3)]
    assert all(parts) and sum(len(p) for p in parts) == 7
    assert set().union(*parts) == {f"h{i}" for i in range(7)}


@pytest.mark.parametrize("shard", ["3/3", "x", "1/0", "-1/2"])
def test_bad_shard_is_refused(shard: str) -> None:
    with pytest.raises(CommandError):
        call_command("hostwatch", shard=shard)
