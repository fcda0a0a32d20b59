import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.signals import request_finished  # noqa: E402
from django.db import connections  # noqa: E402
from django.urls import path  # noqa: E402

from console.access.websocket import ApiTokenWebSocketMiddleware  # noqa: E402
from console.realtime.consumers import EventsConsumer  # noqa: E402
from console.realtime.origin import BrowserOriginValidator  # noqa: E402
from domains.consumers import ConsoleConsumer  # noqa: E402
from hosts.tus import UploadPatch  # noqa: E402


def close_request_connections(sender: Any, **kwargs: Any) -> None:
    """Close the database connections of an HTTP request that has finished.

    Django runs each ASGI request's sync code on a thread of its own (asgiref's
    ThreadSensitiveContext), which ends with the request, so a connection kept for reuse
    (CONN_MAX_AGE, for the long-lived threads of event sockets, hostwatch and the worker) can
    never be reused: left open, it waited for the garbage collector (a connection is a reference
    cycle), two or three file descriptors each and a PostgreSQL backend meanwhile, 125
    descriptors in the web process a few soak waves in (bench/soak_bench.py). The signal runs
    on the request's own thread, as connections must be closed."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


request_finished.connect(close_request_connections, sender=ASGIHandler, dispatch_uid="domus-close-request-db")

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi()),
    path("ws/console/", ConsoleConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        # An upload's bytes stream past Django, which would buffer a request's whole body.
        "http": UploadPatch(django_asgi_app),
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(ApiTokenWebSocketMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# Everything loaded so far (Django, the apps, the URL conf) lives as long as the process: keep it
# out of the garbage collector's scans, which otherwise paused event delivery 50-80 ms every few
# seconds under load (bench/hostwatch_bench.py).
gc.freeze()
