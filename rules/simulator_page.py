"""The simulator page: an event built in a form (event type from a list, context keys suggested
from recent events of that type) or pasted as JSON, and "simulate this event" / "test this rule".

The form is only a way to write the JSON: what it builds goes through the same ``SimulatorForm``
validation and the same ``simulate`` as the JSON box.
"""

import json
from collections import Counter

from django import forms
from django.contrib import messages

from config.api.fields import storable_text_problem
from config.api.jsonbody import JSONInputError, strict_json_loads

from .admin_sources import sources
from .forms import SIMULATOR_EXAMPLE, SimulatorForm
from .models import Rule

SUGGESTION_EVENTS = 20
EXTRA_CONTEXT_ROWS = 3
MAX_CONTEXT_ROWS = 50


def value_as_text(value) -> str:
    """A context value as the builder shows it: plain text for a string the builder would read back
    as the same string, JSON otherwise."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, ensure_ascii=False)


def text_as_value(text: str):
    """What the builder reads from a value box: JSON where it parses (10, true, null, "10", {...}),
    else the text as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def event_types() -> list[str]:
    known = set(Rule.objects.values_list("event_type", flat=True).distinct())
    known.update(sources.recent_event_types())
    return sorted(known)


def suggested_context(event_type: str) -> list[tuple[str, str]]:
    """Context keys of recent events of this type, most used first, each with its newest value."""
    counts: Counter = Counter()
    newest: dict[str, str] = {}
    for event in sources.recent_events(event_type, SUGGESTION_EVENTS):
        context = event.get("context") or {}
        for key, value in context.items():
            counts[key] += 1
            newest.setdefault(key, value_as_text(value))
    return [(key, newest[key]) for key, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


class EventBuilderForm(forms.Form):
    prefix = "b"

    event_type = forms.ChoiceField(help_text="Types of the rules and of recent events.")
    actor_user_id = forms.CharField(label="Actor user id", max_length=100)
    primary_subject_user_id = forms.CharField(label="Primary subject user id", max_length=100, required=False)
    occurred_at = forms.CharField(label="Occurred at", required=False, help_text="Optional, RFC 3339.")
    rows = forms.IntegerField(widget=forms.HiddenInput, min_value=0, max_value=MAX_CONTEXT_ROWS)

    def __init__(self, *args, types: list[str], context_rows: list[tuple[str, str, str]] = (), **kwargs):
        """``context_rows``: (key, value, example) per row shown (bound forms take their own count)."""
        super().__init__(*args, **kwargs)
        self.fields["event_type"].choices = [(t, t) for t in types]
        if self.is_bound:
            try:
                count = min(max(int(self.data.get(self.add_prefix("rows"), 0)), 0), MAX_CONTEXT_ROWS)
            except ValueError:
                count = 0
            rows = [("", "", "")] * count
        else:
            rows = [*context_rows, *[("", "", "")] * EXTRA_CONTEXT_ROWS][:MAX_CONTEXT_ROWS]
            self.initial["rows"] = len(rows)
        self.context_fields = []
        for index, (key, value, example) in enumerate(rows):
            key_name, value_name = f"key_{index}", f"value_{index}"
            self.fields[key_name] = forms.CharField(required=False, max_length=200, initial=key, label="Key")
            self.fields[value_name] = forms.CharField(
                required=False,
                initial=value,
                label="Value",
                widget=forms.TextInput(attrs={"placeholder": example or "", "class": "ctx-value"}),
            )
            self.context_fields.append((key_name, value_name))

    @property
    def context_rows(self):
        return [(self[key], self[value]) for key, value in self.context_fields]

    def event(self) -> dict:
        """The event as the simulator's JSON (call after ``is_valid``)."""
        data = self.cleaned_data
        context = {}
        for key_name, value_name in self.context_fields:
            key = (data.get(key_name) or "").strip()
            if key and data.get(value_name, "") != "":
                context[key] = text_as_value(data[value_name])
        return {
            "event_type": data["event_type"],
            "actor_user_id": data["actor_user_id"],
            "primary_subject_user_id": data.get("primary_subject_user_id") or None,
            "context": context,
            "occurred_at": data.get("occurred_at") or None,
        }


def _builder_for(payload: dict, types: list[str]) -> EventBuilderForm:
    event_type = payload.get("event_type") or (types[0] if types else "")
    if event_type and event_type not in types:
        types = sorted([*types, event_type])
    own = payload.get("context") if isinstance(payload.get("context"), dict) else {}
    suggested = dict(suggested_context(event_type)) if event_type else {}
    rows = [(key, value_as_text(value), suggested.get(key, "")) for key, value in own.items()]
    rows += [(key, "", example) for key, example in suggested.items() if key not in own]
    initial = {
        "event_type": event_type,
        "actor_user_id": payload.get("actor_user_id") or "",
        "primary_subject_user_id": payload.get("primary_subject_user_id") or "",
        "occurred_at": payload.get("occurred_at") or "",
    }
    return EventBuilderForm(initial=initial, types=types, context_rows=rows)


def _json_form(payload: dict) -> SimulatorForm:
    return SimulatorForm(data={"event": json.dumps(payload, indent=2, ensure_ascii=False)})


def simulator_page(request, *, simulate) -> dict:
    """The simulator page's context: ``form`` (JSON), ``builder``, ``result``, ``tested_rule``."""
    types = event_types()
    result = tested_rule = None
    run = None  # a bound SimulatorForm to run
    if request.method == "POST" and "simulate_form" in request.POST:
        builder = EventBuilderForm(request.POST, types=types)
        if builder.is_valid():
            run = form = _json_form(builder.event())
        else:
            form = SimulatorForm()
    elif request.method == "POST" and "suggest" in request.POST:
        payload = {key: request.POST.get(f"b-{key}", "") for key in ("event_type", "actor_user_id")}
        payload["primary_subject_user_id"] = request.POST.get("b-primary_subject_user_id") or None
        builder, form = _builder_for(payload, types), SimulatorForm()
    elif request.method == "POST":
        run = form = SimulatorForm(request.POST)
        # The builder is prefilled only from text the JSON form accepts (the same strict parser); a
        # refused paste shows its error there and an empty builder.
        try:
            pasted = strict_json_loads(request.POST.get("event", ""))
        except JSONInputError:
            pasted = None
        if not isinstance(pasted, dict) or storable_text_problem(pasted):
            pasted = {}
        builder = _builder_for(pasted, types)
    else:
        builder, form, payload = None, None, None
        if event_id := request.GET.get("event", "").strip():
            payload = sources.event_payload(event_id)
            if payload is None:
                messages.error(request, f"No event {event_id!r} to simulate.")
        elif code := request.GET.get("rule", "").strip():
            rule = Rule.objects.filter(code=code).first()
            if rule is None:
                messages.error(request, f"No rule {code!r}.")
            else:
                tested_rule = rule.code
                recent = sources.recent_events(rule.event_type, 1)
                if recent:
                    payload = recent[0]
                    messages.info(request, f"Testing {rule.code} on the latest {rule.event_type} event; edit it below.")
                else:
                    builder = _builder_for({"event_type": rule.event_type}, types)
                    example = {**SIMULATOR_EXAMPLE, "event_type": rule.event_type}
                    form = SimulatorForm(initial={"event": json.dumps(example, indent=2)})
        if payload is not None:
            run = form = _json_form(payload)
            builder = _builder_for(payload, types)
        if builder is None:
            builder = _builder_for({}, types)
        if form is None:
            form = SimulatorForm()
    if run is not None and run.is_valid():
        result = simulate(run.cleaned_data["event"])
    return {"form": form, "builder": builder, "result": result, "tested_rule": tested_rule}
