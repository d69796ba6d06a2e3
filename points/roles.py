"""Staff roles of the admin (SPEC §11): the groups ``Rule editors`` and ``Finance`` and their permissions.

The groups are defined here and nowhere else. ``roles_sync`` gives each group exactly the permissions
listed below (anything added by hand is taken away again); it runs from the data migration that first
created the groups and after every ``migrate``/``flush`` (post_migrate), so a test database that was
flushed, or a group someone edited, is put back.

Superusers hold every permission implicitly; service clients, users and groups need them, so only
superusers manage those. Nobody edits ledger rows in admin (see ``points.admin``): the ledger grants
below are ``view`` only, and corrections go through the adjustment form (``points.adjust_account``).

Apps and models are named by label here, not imported: ``points`` never imports ``connect``.
"""

from dataclasses import dataclass

from django.db.models.signals import post_migrate
from django.dispatch import receiver

RULE_EDITORS = "Rule editors"
FINANCE = "Finance"


@dataclass(frozen=True)
class PermissionSpec:
    app_label: str
    model: str  # model_name (lower case)
    codename: str
    name: str


def _default(action: str, app_label: str, model: str, verbose_name: str) -> PermissionSpec:
    # Same codename and name as django.contrib.auth's default permissions, so none is made twice.
    return PermissionSpec(app_label, model, f"{action}_{model}", f"Can {action} {verbose_name}")


def _all(app_label: str, model: str, verbose_name: str) -> list[PermissionSpec]:
    return [_default(action, app_label, model, verbose_name) for action in ("add", "change", "delete", "view")]


# Permissions not declared on any model: created here (models of other apps stay untouched).
RETRY_REWARD_ACTION = PermissionSpec(
    "connect", "rewardaction", "retry_rewardaction", "Can retry a failed reward action"
)
CANCEL_REWARD_ACTION = PermissionSpec("connect", "rewardaction", "cancel_rewardaction", "Can cancel a reward action")
ADJUST_ACCOUNT = PermissionSpec("points", "account", "adjust_account", "Can post a manual adjustment to an account")

_OPERATIONS_VIEW = [
    _default("view", "connect", "economicevent", "economic event"),
    _default("view", "connect", "rewardaction", "reward action"),
    _default("view", "connect", "userprofile", "user profile"),
    RETRY_REWARD_ACTION,
]

ROLE_PERMISSIONS: dict[str, list[PermissionSpec]] = {
    RULE_EDITORS: [
        *_all("rules", "rule", "rule"),
        *_all("rules", "rewardline", "reward line"),
        _default("view", "rules", "ruleversion", "rule version"),
        _default("view", "rules", "historicalrule", "historical rule"),
        _default("view", "rules", "historicalrewardline", "historical reward line"),
        *_all("rules", "ruledraft", "rule draft"),
        _default("add", "connect", "backtestrun", "backtest run"),
        _default("view", "connect", "backtestrun", "backtest run"),
        *_OPERATIONS_VIEW,
    ],
    FINANCE: [
        _default("view", "points", "account", "account"),
        _default("view", "points", "transaction", "transaction"),
        _default("view", "points", "entry", "entry"),
        _default("view", "points", "hold", "hold"),
        _default("view", "points", "lot", "lot"),
        ADJUST_ACCOUNT,
        *_OPERATIONS_VIEW,
        CANCEL_REWARD_ACTION,
    ],
}


def roles_sync(*, apps=None, using: str = "default") -> None:
    """Create the role groups (and any permission they need that does not exist yet) and set their
    permissions to exactly ``ROLE_PERMISSIONS``. Idempotent.

    ``apps`` is a migration's historical app registry, or None for the current models.
    """
    if apps is None:
        from django.apps import apps
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")

    content_types: dict[tuple[str, str], object] = {}
    for role, specs in ROLE_PERMISSIONS.items():
        permissions = []
        for spec in specs:
            key = (spec.app_label, spec.model)
            if key not in content_types:
                content_types[key], _ = ContentType.objects.using(using).get_or_create(
                    app_label=spec.app_label, model=spec.model
                )
            permission, _ = Permission.objects.using(using).get_or_create(
                content_type=content_types[key], codename=spec.codename, defaults={"name": spec.name}
            )
            permissions.append(permission)
        group, _ = Group.objects.using(using).get_or_create(name=role)
        group.permissions.set(permissions)


@receiver(post_migrate, dispatch_uid="points.roles.roles_sync")
def _roles_sync_after_migrate(sender, using="default", **kwargs):
    """Put the groups back after every migrate, and after a flush (tests' transactional teardown)."""
    if getattr(sender, "name", None) != "points":
        return
    roles_sync(using=using)
