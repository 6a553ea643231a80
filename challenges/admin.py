"""The audit in the Django admin, read-only (newest first, filter, search, never a secret),
and revocation: revoke tokens or block keys from the lists, each action recorded with
the operator who did it.

Also: the audit dashboard (:mod:`challenges.dashboard`, linked from the admin's index),
"Export CSV" on the attempts and tokens lists (the rows the list's filters and search
select, streamed: :mod:`challenges.exports`), an attempt's whole timeline on its page
(:mod:`challenges.admindetail`), and the workers' last reports.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from . import admindetail, dashboard, exports, reports
from .adminquery import CheckedChangeList
from .clients import storable_ip
from .errors import CLIENT_CODES, Code
from .models import (
    SUCCESS,
    BlockedKey,
    ChallengeAttempt,
    IssuedToken,
    RevocationEvent,
    RevokedToken,
    WorkerStatus,
)
from .revocation import UnknownToken, block_key, revoke_token, unblock_key

# The index links to the dashboard (a documented AdminSite attribute; the template extends
# the admin's own index).
admin.site.index_template = "admin/challenges/index.html"


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Audit rows are append-only: no add, no change, no delete from the admin. A list's
    filters that no database would take are an invalid lookup (:mod:`challenges.adminquery`)."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[CheckedChangeList]:
        return CheckedChangeList

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OutcomeFilter(admin.SimpleListFilter):
    """Outcomes from the code enumeration (the column itself has no choices)."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        codes = sorted(str(code) for code in Code if code not in CLIENT_CODES)
        any_failure = (reports.ANY_FAILURE, "any failure (not success)")
        return [(SUCCESS, SUCCESS), any_failure] + [(code, code) for code in codes]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == reports.ANY_FAILURE:
            return queryset.exclude(outcome=SUCCESS)
        return queryset.filter(outcome=value) if value else queryset


class InputFromFilter(admin.SimpleListFilter):
    """The rows whose input came from an address: the answer's when there was one, else
    the asker's (the dashboard's "top failing addresses" link here)."""

    title = "input from address"
    parameter_name = reports.INPUT_FROM

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        chosen = self.value()
        shown = [(chosen, chosen)] if chosen and chosen != reports.NO_ADDRESS else []
        return [*shown, (reports.NO_ADDRESS, "no address")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        if value == reports.NO_ADDRESS:
            return reports.from_address(queryset, None)
        address = storable_ip(value)
        if address is None:
            raise IncorrectLookupParameters(f"{value[:40]!r}: not an IP address")
        return reports.from_address(queryset, address)


class ExportCSV:
    """An "Export CSV" link on the list, for the rows its filters, search and order select."""

    export_columns: tuple[str, ...] = ()

    def get_export_urls(self) -> list[URLPattern]:
        model_admin: Any = self
        name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_export"
        return [path("export.csv", model_admin.admin_site.admin_view(self.export_view), name=name)]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        model_admin: Any = self
        name = f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_export"
        query = request.GET.copy()
        query.pop("p", None)  # every page
        url = reverse(name) + (f"?{query.urlencode()}" if query else "")
        return super().changelist_view(request, {**(extra_context or {}), "export_url": url})  # type: ignore[misc]

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        model_admin: Any = self
        if not model_admin.has_view_permission(request):
            raise PermissionDenied
        try:
            rows = model_admin.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("these filters do not apply to this list")
        name = f"{model_admin.opts.model_name}s-{timezone.now():%Y%m%dT%H%M%SZ}.csv"
        return exports.csv_response(request, rows, self.export_columns, name)


class RevocationActions:
    """Who may take tokens back: users allowed to add revoked tokens / blocked keys."""

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("challenges.add_revokedtoken"))

    def has_block_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("challenges.add_blockedkey"))

    @admin.action(description="Block the keys of the selected rows", permissions=["block"])
    def block_keys(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        keys = {key for key in queryset.values_list("public_key", flat=True) if key}
        done = sum(block_key(public_key=key, actor=_actor(request), reason="admin") for key in keys)
        messages.info(request, f"blocked {done} key(s); {len(keys) - done} were blocked already")


@admin.register(ChallengeAttempt)
class ChallengeAttemptAdmin(ExportCSV, RevocationActions, ReadOnlyAdmin):
    actions = ["block_keys"]
    export_columns = exports.ATTEMPT_COLUMNS
    change_list_template = "admin/challenges/change_list_export.html"
    readonly_fields = ("timeline", "token_standing", "refusals")
    fieldsets = (
        (None, {"fields": ("outcome", "detail", "public_key", "challenge_id", "refusals")}),
        ("Timeline", {"fields": ("timeline", "latency_ms")}),
        ("Token", {"fields": ("token_standing",)}),
        ("Client", {"fields": ("client_ip", "answer_ip", "origin", "user_agent", "transport", "api_key")}),
        ("Worker and upstream", {"fields": ("worker", "upstream", "upstream_status")}),
    )

    list_display = (
        "created_at",
        "outcome",
        "public_key",
        "client_ip",
        "origin",
        "transport",
        "worker",
        "upstream",
        "latency_ms",
    )
    list_filter = (OutcomeFilter, InputFromFilter, "created_at", "transport", "upstream")
    search_fields = ("public_key", "challenge_id", "token__jti", "client_ip", "answer_ip")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    show_full_result_count = False

    def get_urls(self) -> list[URLPattern]:
        dashboard_view = self.admin_site.admin_view(self.dashboard_view)
        return [
            path("dashboard/", dashboard_view, name="challenges_dashboard"),
            *self.get_export_urls(),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return dashboard.view(request, site_context=self.admin_site.each_context(request))

    @admin.display(description="timeline")
    def timeline(self, attempt: ChallengeAttempt) -> str:
        return admindetail.timeline(attempt)

    @admin.display(description="token")
    def token_standing(self, attempt: ChallengeAttempt) -> str:
        return admindetail.token(attempt, now=timezone.now())

    @admin.display(description="count")
    def refusals(self, attempt: ChallengeAttempt) -> str:
        return admindetail.refusals(attempt)


@admin.register(IssuedToken)
class IssuedTokenAdmin(ExportCSV, RevocationActions, ReadOnlyAdmin):
    actions = ["revoke_tokens", "block_keys"]
    export_columns = exports.TOKEN_COLUMNS
    change_list_template = "admin/challenges/change_list_export.html"

    def get_urls(self) -> list[URLPattern]:
        return [*self.get_export_urls(), *super().get_urls()]

    def get_queryset(self, request: HttpRequest) -> QuerySet[IssuedToken]:
        return reports.with_standing(super().get_queryset(request))

    @admin.display(description="standing")
    def standing(self, token: IssuedToken) -> str:
        return reports.standing(token, now=timezone.now())

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        jtis = list(queryset.values_list("jti", flat=True))
        done = gone = 0
        for jti in jtis:
            try:
                done += revoke_token(jti=jti, actor=_actor(request), reason="admin")
            except UnknownToken:  # pruned since the page was shown
                gone += 1
        note = f"; {gone} were pruned meanwhile" if gone else ""
        messages.info(
            request, f"revoked {done} token(s); {len(jtis) - done - gone} were revoked already{note}"
        )

    list_display = ("issued_at", "jti", "public_key", "audience", "expires_at", "standing")
    readonly_fields = ("standing",)
    list_filter = ("issued_at", "expires_at")
    search_fields = ("public_key", "jti", "token_sha256")
    date_hierarchy = "issued_at"
    ordering = ("-issued_at", "-id")
    show_full_result_count = False


@admin.register(BlockedKey)
class BlockedKeyAdmin(ReadOnlyAdmin):
    """Blocks are added from the audit lists; lifted here (recorded, never deleted silently)."""

    list_display = ("blocked_at", "public_key", "actor", "reason")
    search_fields = ("public_key", "actor")
    actions = ["unblock"]

    def has_unblock_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("challenges.delete_blockedkey"))

    @admin.action(description="Unblock the selected keys", permissions=["unblock"])
    def unblock(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        keys = list(queryset.values_list("public_key", flat=True))
        done = sum(unblock_key(public_key=key, actor=_actor(request), reason="admin") for key in keys)
        messages.info(request, f"unblocked {done} key(s)")


@admin.register(RevokedToken)
class RevokedTokenAdmin(ReadOnlyAdmin):
    list_display = ("revoked_at", "jti", "actor", "reason")
    search_fields = ("jti", "actor")


@admin.register(RevocationEvent)
class RevocationEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "action", "target", "actor", "reason")
    list_filter = ("action",)
    search_fields = ("target", "actor")


@admin.register(WorkerStatus)
class WorkerStatusAdmin(ReadOnlyAdmin):
    """What each worker last reported (the dashboard shows who is live)."""

    list_display = ("worker", "tag", "pending", "connections", "started_at", "last_seen")
    search_fields = ("worker", "tag")
    ordering = ("-last_seen",)


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"
