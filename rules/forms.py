"""Admin forms of the rule editor. Expression errors come from the model's field validators and
``clean()``, so the admin shows each one at its field."""

import json

from django import forms
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from .models import RewardLine, Rule

MAX_IMPORT_FILE_BYTES = 5 * 1024 * 1024

_CODE_ATTRS = {"style": "font-family: monospace", "spellcheck": "false", "autocomplete": "off"}


class RuleAdminForm(forms.ModelForm):
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
        )
        widgets = {
            "condition": forms.Textarea(attrs={"rows": 2, "cols": 80, **_CODE_ATTRS}),
            "description": forms.Textarea(attrs={"rows": 3, "cols": 80}),
        }


class RewardLineForm(forms.ModelForm):
    class Meta:
        model = RewardLine
        fields = ("position", "target", "reward_type", "amount", "params", "lock_condition", "max_per_target")
        widgets = {
            "position": forms.NumberInput(attrs={"style": "width: 4em"}),
            "target": forms.TextInput(attrs={"size": 28, **_CODE_ATTRS}),
            "amount": forms.TextInput(attrs={"size": 36, **_CODE_ATTRS}),
            "params": forms.Textarea(attrs={"rows": 1, "cols": 28, **_CODE_ATTRS}),
            "max_per_target": forms.NumberInput(attrs={"style": "width: 5em"}),
        }


class RewardLineInlineFormSet(BaseInlineFormSet):
    """At least one line per rule; a new line left at position 0 goes after the existing ones."""

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


class RulesImportForm(forms.Form):
    file = forms.FileField(help_text='A JSON rules file {"rules": [...]}, as written by "Export".')
    dry_run = forms.BooleanField(required=False, help_text="Only validate and show what would change.")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_IMPORT_FILE_BYTES:
            raise ValidationError(f"The file is larger than {MAX_IMPORT_FILE_BYTES // (1024 * 1024)} MiB.")
        try:
            self.cleaned_data["payload"] = json.loads(upload.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError(f"Not a valid JSON file: {exc}") from exc
        return upload
