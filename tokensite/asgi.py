"""ASGI entry point: Django's HTTP app behind the metrics endpoint (challenges.metricsview) and
the HTTP guard (challenges.httpguard, and its share inside daphne), then the WebSocket route,
inside the lifecycle that starts and stops the token flow with the server (challenges.lifecycle)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokensite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from challenges import daphneguard  # noqa: E402
from challenges.config import RuntimeConfig  # noqa: E402
from challenges.consumers import TokenConsumer  # noqa: E402
from challenges.httpguard import HttpGuard  # noqa: E402
from challenges.lifecycle import LifecycleApp, install_reactor_hooks  # noqa: E402
from challenges.metricsview import MetricsEndpoint  # noqa: E402

install_reactor_hooks()
daphneguard.install(RuntimeConfig.from_settings().http, access_records=settings.LOG_FORMAT == "json")
application = LifecycleApp(
    ProtocolTypeRouter(
        {
            "http": HttpGuard(MetricsEndpoint(django_asgi_app)),
            "websocket": URLRouter([path("ws/token", TokenConsumer.as_asgi())]),
        }
    )
)
