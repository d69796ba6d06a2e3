"""Rule writes: save one rule from its JSON form, import and export rule files, record versions.

The JSON form of a rule (SPEC §6) is the single source of truth for three things: the export file,
the import file and each ``RuleVersion.snapshot``. A rule's version changes exactly when that form
changes, so "unchanged" imports and no-op admin saves do not create versions.
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from django.core.exceptions import ValidationError
from django.db import transaction

from config.api.fields import storable_text_problem
from config.api.jsonbody import json_depth_problem

from .models import EVENT_TYPE_PATTERN, BudgetPolicy, Period, RewardLine, Rule, RuleVersion
from .selectors import rules_with_lines

RULE_KEYS = (
    "code",
    "name",
    "description",
    "event_type",
    "condition",
    "priority",
    "is_active",
    "stop_processing",
    "valid_from",
    "valid_until",
    "budget",
    "budget_period",
    "budget_policy",
    "rewards",
)
RULE_REQUIRED_KEYS = ("code", "name", "event_type", "rewards")
LINE_KEYS = (
    "target",
    "reward_type",
    "amount",
    "params",
    "lock_condition",
    "max_per_target",
    "max_per_target_per_period",
    "period",
)
LINE_REQUIRED_KEYS = ("target", "reward_type")
MAX_LINES_PER_RULE = 100

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


class ImportStatus(StrEnum):
    CREATED = "created"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


@dataclass
class ImportItem:
    index: int  # 1-based position of the rule in the file
    code: str
    status: ImportStatus
    reasons: list[str] = field(default_factory=list)
    version: int | None = None  # the rule's version after the import (or what it would be)


@dataclass
class ImportReport:
    items: list[ImportItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems with the file as a whole
    dry_run: bool = False
    written: bool = False

    def codes(self, status: ImportStatus) -> list[str]:
        return [item.code for item in self.items if item.status == status]

    @property
    def created(self) -> list[str]:
        return self.codes(ImportStatus.CREATED)

    @property
    def replaced(self) -> list[str]:
        return self.codes(ImportStatus.REPLACED)

    @property
    def unchanged(self) -> list[str]:
        return self.codes(ImportStatus.UNCHANGED)

    @property
    def refused(self) -> list[str]:
        return self.codes(ImportStatus.REFUSED)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.refused

    def lines(self) -> list[str]:
        """One human-readable line per rule (and per refusal reason), then a summary."""
        out = [f"error: {error}" for error in self.errors]
        for item in self.items:
            if item.status == ImportStatus.REFUSED:
                out.append(f"refused    {item.code}")
                out.extend(f"    {reason}" for reason in item.reasons)
            else:
                out.append(f"{item.status.value:<10} {item.code} (version {item.version})")
        summary = (
            f"{len(self.created)} created, {len(self.replaced)} replaced, "
            f"{len(self.unchanged)} unchanged, {len(self.refused)} refused"
        )
        if self.written:
            out.append(f"Imported {len(self.items)} rule(s): {summary}.")
        elif self.dry_run and self.ok:
            out.append(f"Dry run, nothing written: {summary}.")
        else:
            out.append(f"Nothing written: {summary}.")
        return out


class RulesImportError(Exception):
    """An import refused as a whole; nothing was written. ``report`` says why, rule by rule."""

    def __init__(self, report: ImportReport):
        self.report = report
        reasons = len(report.errors) + len(report.refused)
        super().__init__(f"Rules import refused ({reasons} problem(s)); nothing was written.")


class UnknownRuleCodes(LookupError):
    def __init__(self, codes: list[str]):
        self.codes = codes
        super().__init__(f"No rule with code(s): {', '.join(codes)}")


# --- the JSON form ---------------------------------------------------------------------------


def datetime_as_json(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z`` suffix (microseconds only when present)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def line_as_dict(line: RewardLine) -> dict:
    return {
        "target": line.target,
        "reward_type": line.reward_type,
        "amount": line.amount,
        "params": line.params,
        "lock_condition": line.lock_condition,
        "max_per_target": line.max_per_target,
        "max_per_target_per_period": line.max_per_target_per_period,
        "period": line.period or None,
    }


def rule_as_dict(rule: Rule, lines=None) -> dict:
    """A rule in the file schema of SPEC §6, keys in the spec's order.

    ``description`` is not in the spec's schema; it is written (after ``name``) only when the rule
    has one, so a description survives an export/import round trip.
    """
    if lines is None:
        lines = rule.rewards.all()  # ordered by position; uses a prefetch when there is one
    data = {"code": rule.code, "name": rule.name}
    if rule.description:
        data["description"] = rule.description
    data.update(
        {
            "event_type": rule.event_type,
            "condition": rule.condition,
            "priority": rule.priority,
            "is_active": rule.is_active,
            "stop_processing": rule.stop_processing,
            "valid_from": datetime_as_json(rule.valid_from),
            "valid_until": datetime_as_json(rule.valid_until),
            "budget": rule.budget,
            "budget_period": rule.budget_period or None,
            "budget_policy": rule.budget_policy,
            "rewards": [line_as_dict(line) for line in lines],
        }
    )
    return data


@dataclass
class _CleanRule:
    """A validated rule from a file: unsaved model instances plus its normalised JSON form."""

    rule: Rule
    lines: list[RewardLine]
    data: dict


def _messages(error: ValidationError, prefix: str) -> list[str]:
    if hasattr(error, "error_dict"):
        return [
            f"{prefix}{name}: {message}" if name != "__all__" else f"{prefix.rstrip('.') or 'rule'}: {message}"
            for name, messages in error.message_dict.items()
            for message in messages
        ]
    return [f"{prefix.rstrip('.') or 'rule'}: {message}" for message in error.messages]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_datetime(value, name: str, errors: list[str]) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.match(value):
        errors.append(f"{name}: must be null or an RFC 3339 date-time with an offset, e.g. 2025-01-31T00:00:00Z.")
        return None
    try:
        return datetime.fromisoformat(value.upper().replace(" ", "T"))
    except ValueError as exc:
        errors.append(f"{name}: {exc}.")
        return None


def _rule_clean(entry) -> tuple[_CleanRule | None, list[str]]:
    """Validate one rule of a file completely (shape, types, every field and expression)."""
    if not isinstance(entry, dict):
        return None, ["must be a JSON object."]
    errors: list[str] = []
    unknown = sorted(set(entry) - set(RULE_KEYS))
    if unknown:
        errors.append(f"unknown field(s): {', '.join(unknown)}.")
    errors += [f"{key}: required." for key in RULE_REQUIRED_KEYS if key not in entry]

    for key in ("code", "name", "description", "event_type", "condition"):
        if key in entry and not isinstance(entry[key], str):
            errors.append(f"{key}: must be a string.")
        elif key in entry and (problem := storable_text_problem(entry[key])):
            errors.append(f"{key}: {problem}")
    event_type = entry.get("event_type")
    if isinstance(event_type, str) and not re.fullmatch(EVENT_TYPE_PATTERN, event_type):
        # The model's RegexValidator ends in "$", which a trailing newline also satisfies.
        errors.append("event_type: dotted lower-case names of letters, digits and underscores, e.g. quest.completed.")
    if "priority" in entry and not _is_int(entry["priority"]):
        errors.append("priority: must be an integer.")
    elif _is_int(entry.get("priority")) and not -(2**31) <= entry["priority"] < 2**31:
        errors.append("priority: out of range.")
    for key in ("is_active", "stop_processing"):
        if key in entry and not isinstance(entry[key], bool):
            errors.append(f"{key}: must be true or false.")
    valid_from = _parse_datetime(entry.get("valid_from"), "valid_from", errors)
    valid_until = _parse_datetime(entry.get("valid_until"), "valid_until", errors)
    errors += _budget_errors(entry)

    rewards = entry.get("rewards")
    if "rewards" in entry:
        if not isinstance(rewards, list) or not rewards:
            errors.append("rewards: must be a non-empty list of reward lines.")
            rewards = []
        elif len(rewards) > MAX_LINES_PER_RULE:
            errors.append(f"rewards: at most {MAX_LINES_PER_RULE} lines.")
            rewards = []
    else:
        rewards = []
    if errors:
        return None, errors

    rule = Rule(
        code=entry["code"],
        name=entry["name"],
        description=entry.get("description", ""),
        event_type=entry["event_type"],
        condition=entry.get("condition", ""),
        priority=entry.get("priority", 100),
        is_active=entry.get("is_active", True),
        stop_processing=entry.get("stop_processing", False),
        valid_from=valid_from,
        valid_until=valid_until,
        budget=entry.get("budget"),
        budget_period=entry.get("budget_period"),
        budget_policy=entry.get("budget_policy", BudgetPolicy.PARTIAL),
    )
    try:
        rule.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        errors += _messages(exc, "")

    lines: list[RewardLine] = []
    for number, line_entry in enumerate(rewards, start=1):
        prefix = f"rewards[{number}]."
        if not isinstance(line_entry, dict):
            errors.append(f"rewards[{number}]: must be a JSON object.")
            continue
        line_errors = [f"{prefix}{key}: required." for key in LINE_REQUIRED_KEYS if key not in line_entry]
        unknown = sorted(set(line_entry) - set(LINE_KEYS))
        if unknown:
            line_errors.append(f"rewards[{number}]: unknown field(s): {', '.join(unknown)}.")
        for key in ("target", "reward_type", "amount", "lock_condition"):
            if key in line_entry and not isinstance(line_entry[key], str):
                line_errors.append(f"{prefix}{key}: must be a string.")
            elif key in line_entry and (problem := storable_text_problem(line_entry[key])):
                line_errors.append(f"{prefix}{key}: {problem}")
        if "params" in line_entry and not isinstance(line_entry["params"], dict):
            line_errors.append(f"{prefix}params: must be a JSON object.")
        elif "params" in line_entry and (
            problem := json_depth_problem(line_entry["params"]) or storable_text_problem(line_entry["params"])
        ):
            line_errors.append(f"{prefix}params: {problem}")
        max_per_target = line_entry.get("max_per_target")
        if max_per_target is not None and not _is_int(max_per_target):
            line_errors.append(f"{prefix}max_per_target: must be null or a positive integer.")
        elif max_per_target is not None and not 1 <= max_per_target < 2**31:
            line_errors.append(f"{prefix}max_per_target: must be null or a positive integer.")
        line_errors += _period_cap_errors(line_entry, prefix)
        if line_errors:
            errors += line_errors
            continue
        line = RewardLine(
            position=number,
            target=line_entry["target"],
            reward_type=line_entry["reward_type"],
            amount=line_entry.get("amount", ""),
            params=line_entry.get("params", {}),
            lock_condition=line_entry.get("lock_condition", ""),
            max_per_target=max_per_target,
            max_per_target_per_period=line_entry.get("max_per_target_per_period"),
            period=line_entry.get("period"),
        )
        try:
            line.full_clean(exclude=["rule"], validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            errors += _messages(exc, prefix)
        lines.append(line)

    if errors:
        return None, errors
    return _CleanRule(rule=rule, lines=lines, data=rule_as_dict(rule, lines)), []


def _budget_errors(entry: dict) -> list[str]:
    errors = []
    budget = entry.get("budget")
    if budget is not None and (not _is_int(budget) or not 1 <= budget < 2**63):
        errors.append("budget: must be null or a positive integer.")
    if entry.get("budget_period") is not None and entry["budget_period"] not in Period.values:
        errors.append(f"budget_period: must be null or one of {', '.join(Period.values)}.")
    if "budget_policy" in entry and entry["budget_policy"] not in BudgetPolicy.values:
        errors.append(f"budget_policy: must be one of {', '.join(BudgetPolicy.values)}.")
    return errors


def _period_cap_errors(line_entry: dict, prefix: str) -> list[str]:
    errors = []
    cap = line_entry.get("max_per_target_per_period")
    if cap is not None and (not _is_int(cap) or not 1 <= cap < 2**31):
        errors.append(f"{prefix}max_per_target_per_period: must be null or a positive integer.")
    if line_entry.get("period") is not None and line_entry["period"] not in Period.values:
        errors.append(f"{prefix}period: must be null or one of {', '.join(Period.values)}.")
    return errors


def rule_from_dict(*, data) -> tuple[Rule, list[RewardLine]]:
    """Validate a rule's JSON form and build it unsaved (rule, lines); writes and reads nothing.

    Raises ValidationError listing every problem. For trying a rule before saving it.
    """
    clean, errors = _rule_clean(data)
    if errors:
        raise ValidationError(errors)
    return clean.rule, clean.lines


def _entry_label(entry, index: int) -> str:
    code = entry.get("code") if isinstance(entry, dict) else None
    # A code that cannot be printed (a lone surrogate) is not used to name the rule in the report.
    printable = isinstance(code, str) and code and storable_text_problem(code) is None
    return code if printable else f"<rule {index}>"


# --- writes ----------------------------------------------------------------------------------


def _set_history_user(instance, user) -> None:
    if user is not None:
        instance._history_user = user


def _version_record(*, rule: Rule, lines, user) -> RuleVersion:
    return RuleVersion.objects.create(
        rule=rule, version=rule.version, snapshot=rule_as_dict(rule, lines), created_by=_user_or_none(user)
    )


def _user_or_none(user):
    return user if user is not None and getattr(user, "pk", None) is not None else None


def _next_version(rule: Rule) -> int:
    latest = rule.versions.order_by("-version").values_list("version", flat=True).first() or 0
    return max(rule.version, latest) + 1


def _existing_status(clean: _CleanRule, existing: Rule | None) -> ImportStatus:
    if existing is None:
        return ImportStatus.CREATED
    if rule_as_dict(existing) == clean.data:
        return ImportStatus.UNCHANGED
    return ImportStatus.REPLACED


def _rule_write(*, clean: _CleanRule, user) -> tuple[Rule, ImportStatus]:
    """Create, replace or leave one validated rule. Caller holds a transaction."""
    existing = Rule.objects.select_for_update().filter(code=clean.rule.code).first()
    if existing is None:
        rule = clean.rule
        rule.version = 1
        _set_history_user(rule, user)
        rule.save()
        for line in clean.lines:
            line.rule = rule
            _set_history_user(line, user)
            line.save()
        _version_record(rule=rule, lines=clean.lines, user=user)
        return rule, ImportStatus.CREATED

    current_lines = list(existing.rewards.order_by("position", "id"))
    if rule_as_dict(existing, current_lines) == clean.data:
        return existing, ImportStatus.UNCHANGED

    for name in (
        "name",
        "description",
        "event_type",
        "condition",
        "priority",
        "is_active",
        "stop_processing",
        "valid_from",
        "valid_until",
        "budget",
        "budget_period",
        "budget_policy",
    ):
        setattr(existing, name, getattr(clean.rule, name))
    existing.version = _next_version(existing)
    _set_history_user(existing, user)
    existing.save()

    # Lines are updated in place by position, so a line keeps its id (and with it the per-target
    # grant counts of max_per_target) when a rule is re-imported with the same shape.
    lines: list[RewardLine] = []
    for index, new_line in enumerate(clean.lines):
        line = current_lines[index] if index < len(current_lines) else RewardLine(rule=existing)
        fields = line_as_dict(new_line) | {"position": new_line.position}
        if line.pk is None or any(getattr(line, name) != value for name, value in fields.items()):
            for name, value in fields.items():
                setattr(line, name, value)
            _set_history_user(line, user)
            line.save()
        lines.append(line)
    for stale in current_lines[len(clean.lines) :]:
        _set_history_user(stale, user)
        stale.delete()

    _version_record(rule=existing, lines=lines, user=user)
    return existing, ImportStatus.REPLACED


def rule_save_from_dict(*, data: dict, user=None) -> tuple[Rule, str]:
    """Create or replace the rule ``data["code"]`` from its JSON form (SPEC §6).

    Returns the rule and "created", "replaced" or "unchanged". A change bumps the version and writes
    a RuleVersion. Raises ValidationError (nothing written) when anything in ``data`` is invalid.
    """
    clean, errors = _rule_clean(data)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        rule, status = _rule_write(clean=clean, user=user)
    return rule, status.value


class UnknownRuleVersion(LookupError):
    pass


def rule_version_restore(*, rule: Rule, version: int, user=None) -> tuple[Rule, str]:
    """Make ``rule`` (fields *and* reward lines) what it was at ``version``, as a new version.

    The stored snapshot is saved through ``rule_save_from_dict``, the path of every other rule write,
    so the version number only ever goes up and the new version's snapshot is what events cite.
    Returns the rule and "replaced", or "unchanged" when the rule already is that version.
    Raises UnknownRuleVersion, or ValidationError when the old version no longer validates.
    """
    record = RuleVersion.objects.filter(rule=rule, version=version).first()
    if record is None:
        raise UnknownRuleVersion(f"Rule {rule.code!r} has no version {version}.")
    data = dict(record.snapshot) | {"code": rule.code}
    return rule_save_from_dict(data=data, user=user)


def rules_import(*, payload, user=None, dry_run: bool = False) -> ImportReport:
    """Import a rules file ``{"rules": [...]}``: validate everything, then write all or nothing.

    Each rule is created, replaced (a new version) or left unchanged. Any problem — the file's shape,
    a field, an expression, a code present twice — refuses the whole import: RulesImportError is
    raised with the report and nothing is written. ``dry_run`` validates and reports only.
    """
    report = ImportReport(dry_run=dry_run)
    if not isinstance(payload, dict) or set(payload) != {"rules"} or not isinstance(payload["rules"], list):
        report.errors.append('The file must be a JSON object {"rules": [ ... ]} with no other keys.')
        raise RulesImportError(report)

    entries = payload["rules"]
    positions: dict[str, list[int]] = {}
    for index, entry in enumerate(entries, start=1):
        label = _entry_label(entry, index)
        if isinstance(entry, dict) and isinstance(entry.get("code"), str):
            positions.setdefault(label, []).append(index)

    cleaned: list[tuple[ImportItem, _CleanRule | None]] = []
    for index, entry in enumerate(entries, start=1):
        label = _entry_label(entry, index)
        clean, errors = _rule_clean(entry)
        seen_at = positions.get(label, [])
        if len(seen_at) > 1:
            errors.insert(0, f"code: duplicate in this file (rules {', '.join(map(str, seen_at))}).")
        status = ImportStatus.REFUSED if errors else ImportStatus.UNCHANGED  # settled below
        cleaned.append((ImportItem(index=index, code=label, status=status, reasons=errors), clean))

    if any(item.status == ImportStatus.REFUSED for item, _ in cleaned) or dry_run:
        existing = {rule.code: rule for rule in rules_with_lines(codes=[c.rule.code for _, c in cleaned if c])}
        for item, clean in cleaned:
            if item.status != ImportStatus.REFUSED:
                current = existing.get(clean.rule.code)
                item.status = _existing_status(clean, current)
                item.version = (
                    1
                    if current is None
                    else current.version
                    if item.status == ImportStatus.UNCHANGED
                    else _next_version(current)
                )
        report.items = [item for item, _ in cleaned]
        if not report.ok:
            raise RulesImportError(report)
        return report

    with transaction.atomic():
        for item, clean in cleaned:
            rule, item.status = _rule_write(clean=clean, user=user)
            item.version = rule.version
    report.items = [item for item, _ in cleaned]
    report.written = True
    return report


def rules_export(*, codes=None) -> dict:
    """All rules (or those with ``codes``) as a rules file ``{"rules": [...]}`` (SPEC §6 schema).

    Raises UnknownRuleCodes when a requested code does not exist.
    """
    rules = list(rules_with_lines(codes=codes))
    if codes is not None:
        missing = sorted(set(codes) - {rule.code for rule in rules})
        if missing:
            raise UnknownRuleCodes(missing)
    return {"rules": [rule_as_dict(rule) for rule in rules]}
