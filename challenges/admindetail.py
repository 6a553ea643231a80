"""An attempt's page in the admin: its whole timeline, the token it released and where that
token stands, and, for an aggregated refusal, how many it stands for. Read-only HTML,
every value escaped (client input is shown as text, never markup)."""

from __future__ import annotations

from datetime import datetime

from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import reports
from .models import BlockedKey, ChallengeAttempt, IssuedToken, RevokedToken


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC" if at else "-"


def timeline(attempt: ChallengeAttempt) -> SafeString:
    steps = reports.timeline(attempt)
    rows = format_html_join(
        "",
        '<tr data-step="{}"><th scope="row">{}</th><td>{}</td><td>+{} ms</td></tr>',
        ((s.name, s.name, _when(s.at), f"{s.after_ms:,.1f}") for s in steps),
    )
    return format_html(
        '<table class="timeline"><thead><tr><th scope="col">step</th><th scope="col">at</th>'
        '<th scope="col">since asked</th></tr></thead><tbody>{}</tbody></table>'
        "<p>asked = the request arrived; challenged = the challenge was sent; answered = the"
        " signature arrived; the last line is the outcome, when the flow ended.</p>",
        rows,
    )


def token(attempt: ChallengeAttempt, *, now: datetime) -> SafeString:
    found = reports.with_standing(IssuedToken.objects.filter(attempt=attempt)).first()
    if found is None:
        return format_html("{}", "no token (this attempt released none)")
    standing = reports.standing(found, now=now)
    revoked = RevokedToken.objects.filter(jti=found.jti).first()
    blocked = BlockedKey.objects.filter(public_key=found.public_key).first()
    return format_html(
        '<dl class="token"><dt>jti</dt><dd><a href="{}">{}</a></dd>'
        "<dt>issued</dt><dd>{}</dd><dt>expires</dt><dd>{}</dd>"
        '<dt>standing</dt><dd data-standing="{}">{}</dd>'
        "<dt>revoked</dt><dd>{}</dd><dt>key blocked</dt><dd>{}</dd></dl>",
        reverse("admin:challenges_issuedtoken_change", args=[found.pk]),
        found.jti,
        _when(found.issued_at),
        _when(found.expires_at) if found.expires_at else "never (no expiry)",
        standing,
        standing,
        _who(revoked.revoked_at, revoked.actor, revoked.reason) if revoked else "no",
        _who(blocked.blocked_at, blocked.actor, blocked.reason) if blocked else "no",
    )


def _who(at: datetime, actor: str, reason: str) -> str:
    return f"yes, {_when(at)} by {actor}" + (f" ({reason})" if reason else "")


def refusals(attempt: ChallengeAttempt) -> SafeString:
    if attempt.count <= 1:
        return format_html("{}", "1")
    return format_html(
        '<span data-count="{}">{} refusals</span> (aggregated per address, code and minute):'
        " first seen {}, last seen {}",
        attempt.count,
        f"{attempt.count:,}",
        _when(attempt.created_at),
        _when(attempt.finished_at),
    )
