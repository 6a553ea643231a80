"""The audit in the Django admin: newest first, filters, search, read-only, no secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from challenges import tokens
from challenges.identity import PrivateKey
from challenges.models import ChallengeAttempt, IssuedToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def audit(authority_signer):
    user = PrivateKey.generate()
    now = datetime.now(UTC)
    old = ChallengeAttempt.objects.create(
        created_at=now - timedelta(hours=1), finished_at=now, outcome="bad_signature", public_key="bbaa-old"
    )
    new = ChallengeAttempt.objects.create(
        created_at=now, finished_at=now, outcome="success", public_key=str(user.public), challenge_id="c" * 24
    )
    minted = tokens.mint_token(signer=authority_signer, subject=user.public, ttl=60)
    IssuedToken.objects.create(
        attempt=new, jti=minted.jti, token_sha256=minted.sha256, public_key=minted.subject,
        issuer=minted.issuer, issued_at=minted.issued_at, expires_at=minted.expires_at,
    )  # fmt: skip
    return {"old": old, "new": new, "token": minted, "user": user}


def test_attempts_newest_first_with_filters(admin_client, audit):
    url = reverse("admin:challenges_challengeattempt_changelist")
    page = admin_client.get(url).content.decode()
    assert page.index(str(audit["user"].public)) < page.index("bbaa-old")
    assert "By outcome" in page
    assert "By created at" in page
    filtered = admin_client.get(url, {"outcome": "bad_signature"}).content.decode()
    assert "bbaa-old" in filtered
    assert str(audit["user"].public) not in filtered


def test_search_by_public_key_and_jti(admin_client, audit):
    url = reverse("admin:challenges_challengeattempt_changelist")
    found = admin_client.get(url, {"q": audit["token"].jti}).content.decode()
    assert str(audit["user"].public) in found
    assert "bbaa-old" not in found
    tokens = reverse("admin:challenges_issuedtoken_changelist")
    assert audit["token"].jti in admin_client.get(tokens, {"q": str(audit["user"].public)}).content.decode()
    assert audit["token"].jti not in admin_client.get(tokens, {"q": "nobody"}).content.decode()


def test_read_only_and_no_add(admin_client, audit):
    for model in ("challengeattempt", "issuedtoken"):
        changelist = admin_client.get(reverse(f"admin:challenges_{model}_changelist")).content.decode()
        assert f"/admin/challenges/{model}/add/" not in changelist
        assert admin_client.get(reverse(f"admin:challenges_{model}_add")).status_code == 403
    change = reverse("admin:challenges_challengeattempt_change", args=[audit["new"].pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client.post(change, {"outcome": "x"}).status_code == 403
    delete = reverse("admin:challenges_challengeattempt_delete", args=[audit["new"].pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert ChallengeAttempt.objects.count() == 2


def test_no_token_or_authority_key_on_any_admin_page(admin_client, audit, authority_signer):
    pages = [
        reverse("admin:challenges_challengeattempt_changelist"),
        reverse("admin:challenges_issuedtoken_changelist"),
        reverse("admin:challenges_issuedtoken_change", args=[IssuedToken.objects.get().pk]),
        reverse("admin:challenges_challengeattempt_change", args=[audit["new"].pk]),
    ]
    for url in pages:
        body = admin_client.get(url).content.decode()
        assert audit["token"].token not in body
        assert audit["token"].token.split(".")[2] not in body
        assert str(authority_signer) not in body


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("admin:challenges_challengeattempt_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
