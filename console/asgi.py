import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from console.access.websocket import ApiTokenWebSocketMiddleware  # noqa: E402
from console.realtime.consumers import EventsConsumer  # noqa: E402
from console.realtime.origin import BrowserOriginValidator  # noqa: E402
from domains.consumers import ConsoleConsumer  # noqa: E402

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi()),
    path("ws/console/", ConsoleConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(ApiTokenWebSocketMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# Everything loaded so far (Django, the apps, the URL conf) lives as long as the process: keep it
# out of the garbage collector's scans, which otherwise paused event delivery 50-80 ms every few
# seconds under load (bench/hostwatch_bench.py).
gc.freeze()
