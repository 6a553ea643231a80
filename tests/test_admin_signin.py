"""Sign-in attempts on the admin are limited per address, far below the request rate, in
real daphne and uvicorn processes: past the burst a ``POST`` to the login page is refused
429 ``too_many_sign_ins`` (with ``Retry-After``, audited under its own code) before Django
checks any password, while the page itself, other paths and other addresses are served as
before."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message

import pytest

from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]
BURST = 3
PASSWORD = "a long enough password for the test 8c1f"


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, tmp_path_factory) -> Iterator[servers.Server]:
    tmp = tmp_path_factory.mktemp(request.param)
    env = servers.base_env(
        tmp,
        ADMIN_LOGIN_PER_MINUTE="1",
        ADMIN_LOGIN_BURST=str(BURST),
        CLIENT_IP_HEADER="X-Forwarded-For",
        TRUSTED_PROXIES="1",
    )
    with servers.running(tmp, kind=request.param, env=env) as srv:
        subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--noinput",
             "--username", "op", "--email", "o@x.org"],
            cwd=servers.ROOT, env={**srv.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield srv
        log = srv.log()
    assert "Traceback" not in log, log
    assert PASSWORD not in log


class Browser:
    """One visitor: its cookies, and the address a proxy of ours says it comes from."""

    def __init__(self, server: servers.Server, address: str) -> None:
        self.server = server
        self.headers = {"X-Forwarded-For": address}
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def get(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.server.http + path, headers=self.headers)
        with self.opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()

    def sign_in(self, password: str) -> tuple[int, Message, str]:
        """Fetch the form (its CSRF token), post it; the status, headers and body."""
        status, page = self.get("/admin/login/")
        assert status == 200
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert csrf is not None
        form = urllib.parse.urlencode(
            {"username": "op", "password": password, "csrfmiddlewaretoken": csrf.group(1)}
        ).encode()
        request = urllib.request.Request(
            self.server.http + "/admin/login/?next=/admin/", data=form, headers=self.headers
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()


def test_sign_in_attempts_past_the_burst_are_refused_and_audited(server):
    guesser = Browser(server, "203.0.113.7")
    for _ in range(BURST):
        status, _, page = guesser.sign_in("wrong password")
        assert status == 200  # Django's form again, with its error
        assert "Please enter the correct username and password" in page
    status, headers, body = guesser.sign_in(PASSWORD)  # even the right one: not checked now
    assert status == 429
    refusal = json.loads(body)
    assert refusal["code"] == "too_many_sign_ins"
    assert "sign-in attempts" in refusal["value"]
    assert 1 <= int(headers.get("Retry-After", "0")) <= 60
    assert refusal["retry_after"] == int(headers.get("Retry-After", "0"))
    assert servers.refusals(server, "too_many_sign_ins") == 1
    assert servers.refusals(server, "rate_limited") == 0

    # The page itself, and the rest of the service, are still served to that address.
    assert guesser.get("/admin/login/")[0] == 200
    assert guesser.get("/api/health")[0] == 200

    # Another address signs in.
    status, _, page = Browser(server, "198.51.100.20").sign_in(PASSWORD)
    assert status == 200
    assert "Log out" in page or "logout" in page
    assert servers.refusals(server, "too_many_sign_ins") == 1
