import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand

from console.jobs.periodic import run_forever


class Command(BaseCommand):
    help = "Run the periodic housekeeping: job recovery and relay, retention, expired sessions and tickets."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        run_forever(stop)
