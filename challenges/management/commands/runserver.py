"""``manage.py runserver`` (``make run``): daphne's development server, with the browser
client's files served by the project's own view, as under ``make serve``.

With ``DEBUG`` on, daphne's ``runserver`` puts Django's static-files handler in
front of the application, and that handler answered ``/static/challenges/``
itself: without the headers :func:`challenges.views.client_asset` gives the
module (``Access-Control-Allow-Origin: *``, so an app on another origin, a
development server on another port included, may import it; ``Cache-Control:
no-cache``). Every other static file (the admin's) is still the handler's.

For this command to replace daphne's, ``challenges`` is listed before
``daphne`` in ``INSTALLED_APPS`` (the first app to define a command wins).
"""

from __future__ import annotations

from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler


class ClientFilesToTheApplication(ASGIStaticFilesHandler):
    """Django's static-files handler, leaving ``<STATIC_URL>challenges/`` to the application."""

    def _should_handle(self, path: str) -> bool:
        own = f"{self.base_url.path}challenges/"
        return bool(super()._should_handle(path)) and not path.startswith(own)


class Command(DaphneRunserver):  # type: ignore[misc]  # daphne has no types
    def get_application(self, options: dict[str, Any]) -> Any:
        application = super().get_application(options)
        if isinstance(application, ASGIStaticFilesHandler):
            return ClientFilesToTheApplication(application.application)
        return application
