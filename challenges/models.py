"""Append-only audit of every challenge attempt and every issued token, and revocation.

Audit rows are written only by ``services`` (in group-committed batches) and
read through ``selectors`` and the read-only admin. No row ever holds a token:
only its ``jti`` and SHA-256. Refusals that belong to no flow are aggregated:
one row per address, code and minute, with a ``count``.

Revocation (a token by ``jti``, or every token of a public key) is written by
``services`` from the admin's actions and ``manage.py tokens``, each action
recorded with who did it.
"""

from __future__ import annotations

from django.db import models

#: The outcome of a flow that released a token; every other outcome is an error code
#: (``challenges.errors.Code``). The column has no database choices, so a new code
#: needs no migration.
SUCCESS = "success"


class ChallengeAttempt(models.Model):
    """One token flow, or one refused frame, and how it ended."""

    created_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField()
    outcome = models.CharField(max_length=32, db_index=True)
    detail = models.CharField(max_length=200, blank=True)
    public_key = models.CharField(max_length=128, blank=True, db_index=True)
    challenge_id = models.CharField(max_length=64, blank=True, db_index=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    origin = models.CharField(max_length=200, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)
    transport = models.CharField(max_length=8, default="ws")
    worker = models.CharField(max_length=100, blank=True)
    upstream = models.CharField(max_length=100, blank=True)
    upstream_status = models.CharField(max_length=40, blank=True)
    #: Challenge issued to outcome, in milliseconds (null when no challenge).
    latency_ms = models.FloatField(null=True, blank=True)
    #: When the challenge was sent, and when the answer arrived (null when there was none).
    challenged_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    #: Where the answer came from (null when there was none): a challenge may be answered on
    #: another connection than the one that asked for it (``client_ip``), even on another
    #: worker, so a stranger's answer to someone's challenge has the stranger's address here
    #: (the origin, user agent and transport stay the asker's).
    answer_ip = models.GenericIPAddressField(null=True, blank=True)
    #: The Hub API key of a gRPC or gRPC-Web call (the key, never its secret).
    api_key = models.CharField(max_length=64, blank=True, db_index=True)
    #: How many refusals this row stands for (aggregated per address, code and minute).
    count = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Covers the dashboard's reads (challenges.reports): a time range summed by
            # outcome, and its failures by key and by the address their input came from
            # (the answer's, else the asker's), read from the index alone.
            models.Index(
                fields=["created_at", "outcome", "count", "public_key", "client_ip", "answer_ip"],
                name="attempt_report2_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.outcome} {self.public_key[:16]} {self.created_at:%Y-%m-%d %H:%M:%S}"


class IssuedToken(models.Model):
    """A token released to a client: its identifiers, never its value."""

    attempt = models.OneToOneField(ChallengeAttempt, on_delete=models.PROTECT, related_name="token")
    jti = models.CharField(max_length=64, unique=True)
    token_sha256 = models.CharField(max_length=64, unique=True)
    public_key = models.CharField(max_length=128, db_index=True)
    issuer = models.CharField(max_length=128, blank=True)
    audience = models.CharField(max_length=200, blank=True)
    issued_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-issued_at", "-id"]

    def __str__(self) -> str:
        return f"{self.jti} for {self.public_key[:16]}"


class RevokedToken(models.Model):
    """A token that introspection reports inactive from now on, whatever its expiry."""

    jti = models.CharField(max_length=64, unique=True)
    revoked_at = models.DateTimeField()
    actor = models.CharField(max_length=150)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-revoked_at", "-id"]

    def __str__(self) -> str:
        return f"{self.jti} revoked by {self.actor}"


class BlockedKey(models.Model):
    """A public key whose live tokens are inactive and which may not start a flow."""

    public_key = models.CharField(max_length=128, unique=True)
    blocked_at = models.DateTimeField()
    actor = models.CharField(max_length=150)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-blocked_at", "-id"]

    def __str__(self) -> str:
        return f"{self.public_key[:16]} blocked by {self.actor}"


class RevocationEvent(models.Model):
    """Who revoked, blocked or unblocked what, and when (append-only)."""

    REVOKE, BLOCK, UNBLOCK = "revoke", "block", "unblock"
    ACTIONS = [(REVOKE, "revoke token"), (BLOCK, "block key"), (UNBLOCK, "unblock key")]

    at = models.DateTimeField(db_index=True)
    action = models.CharField(max_length=8, choices=ACTIONS)
    target = models.CharField(max_length=128)
    actor = models.CharField(max_length=150)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.target[:16]} by {self.actor}"


class WorkerStatus(models.Model):
    """What one worker process holds now, as it last reported it (every few seconds).

    One row per runtime (its routing ``tag``), upserted by the worker itself; a row whose
    ``last_seen`` is old is a worker that stopped or died. Read by the admin's dashboard.
    """

    tag = models.CharField(max_length=16, unique=True)
    worker = models.CharField(max_length=100)
    pending = models.PositiveIntegerField(default=0)
    connections = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["worker", "tag"]
        verbose_name_plural = "worker statuses"

    def __str__(self) -> str:
        return f"{self.worker} ({self.tag})"
