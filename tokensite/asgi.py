"""ASGI entry point: Django's HTTP app behind the metrics endpoint (challenges.metricsview)
and the HTTP guard (challenges.httpguard, and its share inside daphne), then the WebSocket
routes, inside the lifecycle that starts and stops the token flow with the server
(challenges.lifecycle).

WebSockets: ``/ws/token`` (the tutorial's JSON protocol), ``GetToken`` over gRPC-Web
for the Hub's JavaScript client (any path ending in ``/threads.pb.API/GetToken`` or
``/threads.net.pb.API/GetToken``), and every other path refused at the handshake."""

import os
from typing import Any, cast

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokensite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from challenges import daphneguard, grpcweb_consumer  # noqa: E402
from challenges.config import RuntimeConfig  # noqa: E402
from challenges.consumers import TokenConsumer  # noqa: E402
from challenges.httpguard import HttpGuard  # noqa: E402
from challenges.lifecycle import LifecycleApp, freeze_startup_heap, install_reactor_hooks  # noqa: E402
from challenges.metricsview import MetricsEndpoint  # noqa: E402

install_reactor_hooks()
daphneguard.install(RuntimeConfig.from_settings().http, access_records=settings.LOG_FORMAT == "json")
application = LifecycleApp(
    ProtocolTypeRouter(
        {
            "http": HttpGuard(MetricsEndpoint(django_asgi_app)),
            "websocket": URLRouter(
                [
                    path("ws/token", TokenConsumer.as_asgi()),
                    re_path(grpcweb_consumer.PATH, cast(Any, grpcweb_consumer.GetTokenSocket())),
                    re_path(r"", cast(Any, grpcweb_consumer.refuse_handshake)),
                ]
            ),
        }
    )
)
# Last: everything imported and built so far lives as long as the process.
freeze_startup_heap()
