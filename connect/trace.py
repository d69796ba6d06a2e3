"""The decision trace stored with each event (SPEC §15): the engine's own trace, as JSON.

The engine builds the same ``RuleTrace``/``LineTrace`` for the simulator; ingestion stores it here
with what the event did to profiles and which locked actions it released.
"""

from collections.abc import Sequence

from rules.engine import RuleTrace


def trace_document(
    *,
    rules: Sequence[RuleTrace],
    profile_changes: Sequence[dict] = (),
    released_actions: Sequence[str] = (),
) -> dict:
    """``{"rules": [...], "profile_changes": [...], "released_actions": [...]}``.

    Each rule: ``rule``, ``version``, ``result`` (a §15 reason code), ``detail`` (for people) and
    ``lines``; each line: ``position``, ``reward_type``, ``target``, ``amount``, ``result``, ``detail``.
    """
    return {
        "rules": [
            {
                "rule": rule.rule_code,
                "version": rule.rule_version,
                "result": rule.code,
                "detail": rule.reason,
                "lines": [
                    {
                        "position": line.position,
                        "reward_type": line.reward_type,
                        "target": line.target,
                        "amount": line.amount,
                        "result": line.code,
                        "detail": line.reason,
                    }
                    for line in rule.lines
                ],
            }
            for rule in rules
        ],
        "profile_changes": list(profile_changes),
        "released_actions": [str(pk) for pk in released_actions],
    }


def trace_summary(trace: dict) -> str:
    """One line for people: what the rules did and what the event changed."""
    rules = trace.get("rules") or []
    matched = [rule["rule"] for rule in rules if rule.get("result") == "matched"]
    parts = [f"{len(matched)} of {len(rules)} rule(s) matched"]
    changes = trace.get("profile_changes") or []
    if changes:
        parts.append(", ".join(f"{c['user_id']}.{c['field']} → {c['to']}" for c in changes))
    released = trace.get("released_actions") or []
    if released:
        parts.append(f"released {len(released)} locked action(s)")
    return "; ".join(parts)


def _result_badge(code: str) -> str:
    """A reason code as a badge coloured by what it means: paid, not applicable, held back, or broken."""
    from django.utils.html import format_html

    head = code.split(":", 1)[0]
    tone = _RESULT_TONES.get(head, "ignored")
    return format_html('<span class="badge badge-{} trace-code">{}</span>', tone, code)


# Colours of the theme's badges: fired/matched as completed, limits as pending, locks as locked.
_RESULT_TONES = {
    "matched": "completed",
    "fired": "completed",
    "cap_reached": "pending",
    "period_cap_reached": "pending",
    "budget_exhausted": "pending",
    "budget_partial": "pending",
    "locked": "locked",
    "error": "failed",
}


def trace_html(trace: dict) -> str:
    """The trace as an HTML table for the event's admin page (escaped): each rule with its result,
    each of its lines with target (linked to the user page), amount and result."""
    from django.urls import reverse
    from django.utils.html import format_html, format_html_join

    from config.admin_base import breakable, user_link

    if not trace:
        return format_html("<p>{}</p>", "No decision trace was stored for this event.")
    rows = []
    for rule in trace.get("rules") or []:
        rows.append(
            format_html(
                '<tr class="rule-trace"><td><b>{}</b> v{}</td><td>{}</td><td colspan="2">{}</td></tr>',
                breakable(rule["rule"]),
                rule["version"],
                _result_badge(rule["result"]),
                rule["detail"],
            )
        )
        for line in rule.get("lines") or []:
            rows.append(
                format_html(
                    '<tr class="line-trace"><td class="trace-line">line {} ({})</td><td>{}</td><td>{}{}</td><td>{}</td></tr>',
                    line["position"],
                    line["reward_type"],
                    _result_badge(line["result"]),
                    user_link(line["target"]),
                    "" if line["amount"] is None else format_html(": {}", line["amount"]),
                    line["detail"],
                )
            )
    changes = format_html_join(
        "",
        "<li>{}: {} {} → {}</li>",
        ((user_link(c["user_id"]), c["field"], c["from"], c["to"]) for c in trace.get("profile_changes") or []),
    )
    released = format_html_join(
        "",
        '<li><a href="{}"><code>{}</code></a></li>',
        ((reverse("admin:connect_rewardaction_change", args=[pk]), pk) for pk in trace.get("released_actions") or []),
    )
    return format_html(
        '<div class="trace-block"><p class="trace-summary">{}</p><table class="data trace"><thead><tr><th>Rule / line</th>'
        "<th>Result</th><th>Target: amount</th><th>Why</th></tr></thead><tbody>{}</tbody></table>{}{}</div>",
        trace_summary(trace),
        format_html_join("", "{}", ((row,) for row in rows)),
        format_html('<p>Profile changes:</p><ul class="trace-changes">{}</ul>', changes) if changes else "",
        format_html('<p>Released locked actions:</p><ul class="trace-released">{}</ul>', released) if released else "",
    )
