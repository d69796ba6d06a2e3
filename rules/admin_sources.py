"""What the rules admin reads from the app that stores events and reward actions.

``rules`` imports no app that depends on it, so that app registers its readers here (as it registers
the simulator's view of users in ``rules.admin``). Until one registers, the rules list shows no
activity and the simulator suggests nothing from history.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class RuleActivity:
    fired: int = 0  # events the rule made at least one action for
    points: int = 0  # points of its completed points actions


@dataclass
class RulesAdminSources:
    # (rule ids, since) → activity per rule id
    activity: Callable[[list[int], datetime], dict[int, RuleActivity]] = lambda rule_ids, since: {}
    # event types seen recently, newest first
    recent_event_types: Callable[[], list[str]] = lambda: []
    # (event type, limit) → the newest events of that type as simulator JSON (dicts), newest first
    recent_events: Callable[[str, int], list[dict]] = lambda event_type, limit: []
    # event id → that event as simulator JSON, or None
    event_payload: Callable[[str], dict | None] = lambda event_id: None
    registered: list[str] = field(default_factory=list)


sources = RulesAdminSources()


def rules_admin_sources_register(**readers) -> None:
    """Install readers by name (the fields of ``RulesAdminSources``); unknown names are an error."""
    for name, reader in readers.items():
        if not hasattr(sources, name) or name == "registered":
            raise TypeError(f"Unknown rules admin source {name!r}.")
        setattr(sources, name, reader)
        sources.registered.append(name)
