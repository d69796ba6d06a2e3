"""Admin forms of the rule editor. Expression errors come from the model's field validators and
``clean()``, so the admin shows each one at its field."""

import json
import re

from django import forms
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from config.api.fields import storable_text_problem, user_id_problem
from config.api.jsonbody import JSONInputError, StrictJSONFormField, strict_json_loads

from .engine import EventInput
from .models import EVENT_TYPE_PATTERN, BudgetPolicy, RewardLine, Rule
from .services import rule_as_dict, rule_from_dict

MAX_IMPORT_FILE_BYTES = 5 * 1024 * 1024

_CODE_ATTRS = {"style": "font-family: monospace", "spellcheck": "false", "autocomplete": "off"}


EXPRESSION_HELP = {
    "condition": "Empty means always. e.g. context.level == 1 · context.total_quests_completed >= 10 · "
    "actor_profile.is_vip · context.amount > 0 and not subject_profile.is_pro",
    "target": "Gives a user id; empty or null skips the line. e.g. actor · primary_subject · "
    "context.rf_partner_id · upline(actor, 1)",
    "amount": "Gives an integer (fractions round down; 0 or less skips the line; nft is always 1). "
    "e.g. 100 · context.base_reward_points · floor(context.amount * 5 / 100) · min(context.points, 500)",
}


class RuleAdminForm(forms.ModelForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "event_type" in self.fields:
            self.fields["event_type"].strip = False  # refused as typed, never silently altered
        if "budget_policy" in self.fields:
            # Optional as in a rules file (SPEC §6): a form that leaves it out gets the default.
            self.fields["budget_policy"].required = False

    def clean_event_type(self):
        event_type = self.cleaned_data["event_type"]
        # The model's RegexValidator ends in "$", which a trailing newline also satisfies.
        if not re.fullmatch(EVENT_TYPE_PATTERN, event_type):
            raise ValidationError(
                "Use dotted lower-case names of letters, digits and underscores, e.g. quest.completed."
            )
        return event_type

    class Meta:
        model = Rule
        fields = (
            "code",
            "name",
            "description",
            "event_type",
            "condition",
            "priority",
            "stop_processing",
            "is_active",
            "valid_from",
            "valid_until",
            "budget",
            "budget_period",
            "budget_policy",
        )
        widgets = {
            "condition": forms.Textarea(attrs={"rows": 2, "cols": 80, **_CODE_ATTRS}),
            "description": forms.Textarea(attrs={"rows": 3, "cols": 80}),
        }
        help_texts = {"condition": EXPRESSION_HELP["condition"]}

    def clean_budget_policy(self):
        return self.cleaned_data.get("budget_policy") or BudgetPolicy.PARTIAL


class RewardLineForm(forms.ModelForm):
    class Meta:
        model = RewardLine
        field_classes = {"params": StrictJSONFormField}
        fields = (
            "position",
            "target",
            "reward_type",
            "amount",
            "params",
            "lock_condition",
            "max_per_target",
            "max_per_target_per_period",
            "period",
        )
        widgets = {
            "position": forms.NumberInput(attrs={"style": "width: 4em"}),
            "target": forms.TextInput(attrs={"size": 28, **_CODE_ATTRS}),
            "amount": forms.TextInput(attrs={"size": 36, **_CODE_ATTRS}),
            "params": forms.Textarea(attrs={"rows": 1, "cols": 28, **_CODE_ATTRS}),
            "max_per_target": forms.NumberInput(attrs={"style": "width: 5em"}),
            "max_per_target_per_period": forms.NumberInput(attrs={"style": "width: 5em"}),
        }
        help_texts = {"target": EXPRESSION_HELP["target"], "amount": EXPRESSION_HELP["amount"]}


class RewardLineInlineFormSet(BaseInlineFormSet):
    """At least one line per rule; a new line left at position 0 goes after the existing ones.

    The formset sees the rule as the main form made it, so it validates the whole rule (its JSON form,
    as the service will save it) and keeps that in ``rule_data`` for the admin's save.
    """

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        kept = [
            form
            for form in self.forms
            if form.cleaned_data
            and not form.cleaned_data.get("DELETE")
            and (form.instance.pk is not None or form.has_changed())
        ]
        if not kept:
            raise ValidationError("A rule needs at least one reward line.")
        last = max((form.cleaned_data.get("position") or 0 for form in kept), default=0)
        for form in kept:
            if form.instance.pk is None and not form.cleaned_data.get("position"):
                last += 1
                form.cleaned_data["position"] = last
                form.instance.position = last
        lines = [form.instance for form in sorted(kept, key=lambda form: form.instance.position)]
        data = rule_as_dict(self.instance, lines)
        try:
            rule_from_dict(data=data)
        except ValidationError as exc:
            raise ValidationError(exc.messages) from None
        self.rule_data = data


class RulesImportForm(forms.Form):
    file = forms.FileField(help_text='A JSON rules file {"rules": [...]}, as written by "Export".')
    dry_run = forms.BooleanField(
        required=False,
        initial=True,
        label="Preview first",
        help_text="Validate and show what would change, then confirm. Unticked, a valid file is imported at once.",
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_IMPORT_FILE_BYTES:
            raise ValidationError(f"The file is larger than {MAX_IMPORT_FILE_BYTES // (1024 * 1024)} MiB.")
        try:
            self.cleaned_data["payload"] = strict_json_loads(upload.read())
        except JSONInputError as exc:
            raise ValidationError(f"Not a valid rules file: {exc}") from None
        return upload


class ImportConfirmForm(forms.Form):
    """The previewed file, signed, so what is confirmed is exactly what was previewed."""

    confirm = forms.CharField(widget=forms.HiddenInput)


SIMULATOR_EXAMPLE = {
    "event_type": "quest.completed",
    "actor_user_id": "user_1",
    "primary_subject_user_id": "user_2",
    "context": {"base_reward_points": 40, "total_quests_completed": 10},
    "occurred_at": None,
}
SIMULATOR_KEYS = {"event_type", "actor_user_id", "primary_subject_user_id", "context", "occurred_at"}
# Keys of a real event body that the simulator accepts and ignores, so a stored payload can be pasted.
SIMULATOR_IGNORED_KEYS = {"external_id", "source_service", "id", "status", "received_at"}


class SimulatorForm(forms.Form):
    event = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 14, "cols": 90, **_CODE_ATTRS}),
        initial=json.dumps(SIMULATOR_EXAMPLE, indent=2),
        help_text="An event as JSON: event_type, actor_user_id, primary_subject_user_id (optional), "
        "context (an object), occurred_at (optional, RFC 3339).",
    )

    def clean_event(self) -> EventInput:
        try:
            data = strict_json_loads(self.cleaned_data["event"])
        except JSONInputError as exc:
            raise ValidationError(str(exc)) from None
        if not isinstance(data, dict):
            raise ValidationError("The event must be a JSON object.")
        problem = storable_text_problem(data)
        if problem:
            raise ValidationError(problem)
        problems = []
        unknown = sorted(set(data) - SIMULATOR_KEYS - SIMULATOR_IGNORED_KEYS)
        if unknown:
            problems.append(f"unknown field(s): {', '.join(unknown)}")
        event_type = data.get("event_type")
        if not isinstance(event_type, str) or not re.fullmatch(EVENT_TYPE_PATTERN, event_type):
            problems.append("event_type: required, dotted lower-case, e.g. quest.completed")
        actor = data.get("actor_user_id")
        if user_id_problem(actor):
            problems.append(f"actor_user_id: required. {user_id_problem(actor)}")
        subject = data.get("primary_subject_user_id")
        if subject is not None and user_id_problem(subject):
            problems.append(f"primary_subject_user_id: null or a user id. {user_id_problem(subject)}")
        context = data.get("context", {})
        if context is None:
            context = {}
        if not isinstance(context, dict):
            problems.append("context: must be a JSON object")
        occurred_at = data.get("occurred_at")
        if occurred_at is not None:
            try:
                parsed = parse_datetime(occurred_at) if isinstance(occurred_at, str) else None
            except ValueError:
                parsed = None
            if parsed is None or parsed.tzinfo is None:
                problems.append("occurred_at: null or an RFC 3339 date-time with an offset")
            occurred_at = parsed
        if problems:
            raise ValidationError(problems)
        return EventInput(
            event_type=event_type,
            actor_user_id=actor,
            primary_subject_user_id=subject,
            context=context,
            occurred_at=occurred_at,
            received_at=timezone.now(),
        )
