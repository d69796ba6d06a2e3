"""Rule drafts (SPEC §15): a change kept aside until it is published, optionally after approval.

A draft holds the rule in its JSON form (SPEC §6). It never applies to events: the engine reads
only ``Rule`` rows, which a draft touches only when published — through ``rule_save_from_dict``,
the one write service of rules, which makes the new version. With ``RULES_REQUIRE_APPROVAL`` a draft
is published only once a rule editor other than its author approved it; the draft row keeps author,
approver, publisher and the version it became.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import Rule, RuleDraft
from .services import rule_as_dict, rule_from_dict, rule_save_from_dict


class DraftRefused(Exception):
    """The draft cannot be approved or published in its state, or by this user; nothing changed."""


def _validated(data) -> dict:
    rule_from_dict(data=data)  # raises ValidationError listing every problem
    return data


def draft_create(*, data: dict, author) -> RuleDraft:
    """Keep ``data`` (a rule's JSON form, validated as an import would) as a draft by ``author``."""
    _validated(data)
    base = Rule.objects.filter(code=data["code"]).values_list("version", flat=True).first()
    return RuleDraft.objects.create(code=data["code"], data=data, base_version=base, author=author)


def draft_from_rule(*, rule: Rule, author) -> RuleDraft:
    """A draft starting from the rule as it is now."""
    return draft_create(data=rule_as_dict(rule), author=author)


@transaction.atomic
def draft_update(*, draft_id: int, data: dict, user) -> RuleDraft:
    """Replace an open draft's content; any approval is withdrawn (it approved other content)."""
    draft = RuleDraft.objects.select_for_update().get(pk=draft_id)
    _open(draft)
    if data.get("code") != draft.code:
        raise ValidationError("A draft keeps the code of the rule it changes.")
    draft.data = _validated(data)
    draft.approved_by, draft.approved_at = None, None
    draft.save(update_fields=["data", "approved_by", "approved_at"])
    return draft


def _open(draft: RuleDraft) -> None:
    if draft.status != RuleDraft.Status.DRAFT:
        raise DraftRefused(f"This draft is {draft.status}; only an open draft can change.")


@transaction.atomic
def draft_approve(*, draft_id: int, user) -> RuleDraft:
    """Approve an open draft. Refused to its author: approval is a second rule editor's."""
    draft = RuleDraft.objects.select_for_update().get(pk=draft_id)
    _open(draft)
    if user is None or getattr(user, "pk", None) is None:
        raise DraftRefused("An approval needs a user.")
    if draft.author_id == user.pk:
        raise DraftRefused("The author of a draft cannot approve it; another rule editor must.")
    draft.approved_by, draft.approved_at = user, timezone.now()
    draft.save(update_fields=["approved_by", "approved_at"])
    return draft


@transaction.atomic
def draft_publish(*, draft_id: int, user) -> tuple[RuleDraft, Rule]:
    """Make the draft the rule's new version (created, or replaced, as an import would).

    With RULES_REQUIRE_APPROVAL, refused until another rule editor approved it. Raises
    ValidationError when the content no longer validates, DraftRefused otherwise; nothing changes.
    """
    draft = RuleDraft.objects.select_for_update().get(pk=draft_id)
    _open(draft)
    if settings.RULES_REQUIRE_APPROVAL and draft.approved_by_id is None:
        raise DraftRefused("Rules require approval: another rule editor must approve this draft first.")
    rule, _ = rule_save_from_dict(data=draft.data, user=user)
    draft.status = RuleDraft.Status.PUBLISHED
    draft.published_by, draft.published_at, draft.published_version = user, timezone.now(), rule.version
    draft.save(update_fields=["status", "published_by", "published_at", "published_version"])
    return draft, rule


@transaction.atomic
def draft_discard(*, draft_id: int, user) -> RuleDraft:
    draft = RuleDraft.objects.select_for_update().get(pk=draft_id)
    _open(draft)
    draft.status = RuleDraft.Status.DISCARDED
    draft.save(update_fields=["status"])
    return draft


def drafts_of_rule(*, code: str):
    """The rule's drafts, newest first, with who wrote, approved and published each."""
    return RuleDraft.objects.filter(code=code).select_related("author", "approved_by", "published_by")
