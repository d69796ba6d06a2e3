"""Backtest (SPEC §15): replaying stored events against rules reproduces production, writes nothing."""

import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from connect.backtest import BacktestInvalid, backtest_run, report_lines
from connect.models import EconomicEvent, RewardAction, RewardGrant, UserProfile
from connect.services import event_ingest
from rules.models import BudgetCounter, PeriodGrant, Rule, RuleVersion
from rules.services import rule_save_from_dict, rules_export

pytestmark = pytest.mark.django_db


def _post(source, external_id, event_type, actor, subject=None, **context):
    data = {"external_id": external_id, "event_type": event_type, "actor_user_id": actor,
            "primary_subject_user_id": subject, "context": context}  # fmt: skip
    return event_ingest(client_name=source, data=data)


def _seed_workflows(prefix: str, round_: int) -> None:
    """The seven seed workflows of SPEC §10, with users shared across rounds (caps, uplines, locks)."""
    _post("referral_service", f"{prefix}-j1", "referral.joined", f"tenant{round_}", "sponsor1", level=1)
    _post("referral_service", f"{prefix}-j2", "referral.joined", "sponsor1", "sponsor2", level=1)
    _post("referral_service", f"{prefix}-s1", "referral.subjoined", f"sub{round_}", "sponsor2", level=2)
    _post("quest_service", f"{prefix}-q1", "quest.completed", "player", "author", base_reward_points=40,
          total_quests_completed=9 + round_)  # fmt: skip
    _post("quest_service", f"{prefix}-q2", "quest.completed", "player", "author", base_reward_points=15,
          total_quests_completed=10 + round_)  # fmt: skip
    _post("voucher_service", f"{prefix}-v1", "voucher.premium_purchased", "buyer", None, amount=1000,
          rf_partner_id="partner", pro_promoter_id="promoter")  # fmt: skip
    _post("rielt_service", f"{prefix}-b1", "rielt.booking_paid", f"tenant{round_}", None, amount=25000,
          host_user_id="host")  # fmt: skip
    _post("rf_service", f"{prefix}-r1", "rf_partner.review_created", "reviewer", None, pro_curator_id="curator")
    _post("shop_service", f"{prefix}-p1", "shop.bought", "buyer", None, amount=40)
    _post("shop_service", f"{prefix}-p2", "shop.bought", "buyer", None, amount=40)
    if round_ == 1:
        _post("user_service", f"{prefix}-u1", "user.upgraded_to_vip", "sponsor2")


@pytest.fixture
def history(demo_rules, make_rule):
    """Production: two rounds of the workflows before ``since`` and two after; returns since."""
    make_rule("shop_budget", "shop.bought", [
        {"target": "actor", "reward_type": "points", "amount": "context.amount"},
        {"target": "actor", "reward_type": "points", "amount": "1", "max_per_target_per_period": 3, "period": "month"},
    ], budget=250)  # fmt: skip
    _seed_workflows("a", 0)
    _seed_workflows("b", 1)
    since = timezone.now()
    _seed_workflows("c", 2)
    _seed_workflows("d", 3)
    return since


def _report(since, payload=None, **kwargs):
    return backtest_run(payload=payload or rules_export(), since=since, until=timezone.now() + timedelta(seconds=1),
                        **kwargs)  # fmt: skip


def test_the_current_rules_reproduce_production_s_actions_exactly(history):
    report = _report(history)

    assert report["events"] == EconomicEvent.objects.filter(received_at__gte=history).count() == 20
    assert report["events_differing"] == 0, report["differences"]
    assert report["actions"]["backtest"] == report["actions"]["production"] > 20
    assert all(row["difference"] == {"actions": 0, "points": 0} for row in report["rules"])
    assert report["by_reward_type"]["points"]["backtest"] == report["by_reward_type"]["points"]["production"]
    shop = next(row for row in report["rules"] if row["rule"] == "shop_budget")
    assert shop["points"] == 250 - 2 * 40 - 2 * 40 - 3  # what the budget had left at since, spent
    assert any(hit["reason"] == "period_cap_reached" for hit in report["caps_hit"])
    assert report["budgets"][0]["rule"] == "shop_budget" and report["budgets"][0]["lines_limited"] >= 1
    assert report["top_targets"][0]["points"] > 0


def test_a_changed_amount_differs_exactly_by_the_change(history):
    payload = rules_export()
    quest = next(rule for rule in payload["rules"] if rule["code"] == "quest_completed_rewards")
    quest["rewards"][0]["amount"] = "context.base_reward_points + 7"

    report = _report(history, payload)

    rows = {row["rule"]: row for row in report["rules"]}
    quests_in_period = 4
    assert rows["quest_completed_rewards"]["difference"] == {"actions": 0, "points": 7 * quests_in_period}
    assert all(row["difference"] == {"actions": 0, "points": 0} for code, row in rows.items()
               if code != "quest_completed_rewards")  # fmt: skip
    assert report["events_differing"] == quests_in_period


def test_a_draft_rule_runs_alongside_production_s_other_rules_or_alone(history):
    draft = {"code": "new_review_bonus", "name": "n", "event_type": "rf_partner.review_created",
             "rewards": [{"target": "actor", "reward_type": "points", "amount": "3"}]}  # fmt: skip

    together = {row["rule"]: row for row in _report(history, {"rules": [draft]})["rules"]}
    alone = {row["rule"]: row for row in _report(history, {"rules": [draft]}, only=True)["rules"]}

    assert (
        together["new_review_bonus"]["points"] == 6
        and together["rf_partner_review_created"]["difference"]["points"] == 0
    )
    assert alone["new_review_bonus"]["points"] == 6 and alone["rf_partner_review_created"]["points"] == 0


def test_a_backtest_writes_nothing(history):
    tables = (EconomicEvent, RewardAction, RewardGrant, UserProfile, BudgetCounter, PeriodGrant, Rule, RuleVersion)
    before = [model.objects.count() for model in tables]

    with CaptureQueriesContext(connection) as captured:
        _report(history)

    assert [model.objects.count() for model in tables] == before
    writes = [q["sql"] for q in captured.captured_queries if q["sql"].split()[0] in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []


def test_invalid_rules_or_period_are_refused(history):
    with pytest.raises(BacktestInvalid):
        _report(history, {"rules": [{"code": "x"}]})
    with pytest.raises(BacktestInvalid):
        backtest_run(payload=rules_export(), since=history, until=history)


def test_the_command_prints_json_or_a_table_on_stdout_and_progress_on_stderr(history, tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules_export()))
    until = (timezone.now() + timedelta(seconds=1)).isoformat()
    out, err = io.StringIO(), io.StringIO()

    call_command("backtest_rules", str(path), "--since", history.isoformat(), "--until", until, "--format", "json",
                 stdout=out, stderr=err)  # fmt: skip

    report = json.loads(out.getvalue())
    assert report["events"] == 20 and report["events_differing"] == 0
    assert "20/20 events" in err.getvalue()
    table = io.StringIO()
    call_command("backtest_rules", str(path), "--since", history.isoformat(), "--until", until, stdout=table,
                 stderr=io.StringIO())  # fmt: skip
    assert "quest_completed_rewards" in table.getvalue() and "0 differ from production" in table.getvalue()


def test_an_edited_budget_in_a_file_is_replayed_with_production_s_spending_before_since(history):
    rule_save_from_dict(data=rules_export(codes=["shop_budget"])["rules"][0] | {"budget": 400})
    payload = rules_export(codes=["shop_budget"])
    payload["rules"][0]["budget"] = 170  # 163 spent before since: 7 left

    shop = {row["rule"]: row for row in _report(history, payload)["rules"]}["shop_budget"]

    assert shop["points"] == 7


def test_an_editor_backtests_a_draft_in_admin_with_a_progress_bar(history, client, django_capture_on_commit_callbacks):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from connect.models import BacktestRun
    from rules.drafts import draft_create

    editor = get_user_model().objects.create_user("ed", password="x", is_staff=True)
    editor.groups.add(Group.objects.get(name="Rule editors"))
    quest = next(r for r in rules_export()["rules"] if r["code"] == "quest_completed_rewards")
    draft = draft_create(data=quest | {"rewards": [quest["rewards"][0] | {"amount": "1"}]}, author=editor)
    client.force_login(editor)
    form = client.get(f"/admin/connect/backtestrun/add/?draft={draft.pk}")
    assert form.status_code == 200 and "Start the backtest" in form.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        started = client.post("/admin/connect/backtestrun/add/", {
            "draft": draft.pk, "rules_file": "", "since": history.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "until": (timezone.now() + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f"),
        })  # fmt: skip

    run = BacktestRun.objects.get()
    assert started.status_code == 302 and started["Location"].endswith(f"/{run.pk}/change/")
    assert (run.status, run.processed, run.total, run.percent) == ("done", 20, 20, 100)
    rows = {row["rule"]: row for row in run.report["rules"]}
    assert rows["quest_completed_rewards"]["difference"]["actions"] == -4  # the second line is gone
    page = client.get(started["Location"]).content.decode()
    assert 'class="backtest-progress" value="100"' in page and "quest_completed_rewards" in page


def test_the_admin_keeps_the_last_reports_only(history, settings, django_capture_on_commit_callbacks):
    from connect.backtest_runs import backtest_start
    from connect.models import BacktestRun

    settings.BACKTEST_KEEP_REPORTS = 2
    until = timezone.now() + timedelta(seconds=1)
    with django_capture_on_commit_callbacks(execute=True):
        runs = [backtest_start(since=history, until=until, user=None, payload=rules_export()) for _ in range(3)]

    assert set(BacktestRun.objects.values_list("pk", flat=True)) == {runs[1].pk, runs[2].pk}
    assert set(BacktestRun.objects.values_list("status", flat=True)) == {"done"}


def test_refunds_leave_the_comparison_equal_with_their_reversal_actions_left_out(history):
    """A voucher refunded in part after its rewards were paid (reversal actions) and a booking cancelled
    before they were (its actions reduced in place to nothing): unchanged rules still equal production."""
    voucher = EconomicEvent.objects.get(external_id="c-v1")
    RewardAction.objects.filter(event=voucher).update(status=RewardAction.Status.COMPLETED, attempts=1)
    partial = {"external_id": "c-v1-refund", "event_type": "voucher.refunded", "actor_user_id": "buyer",
               "reverses_external_id": "c-v1", "reversal_fraction": Decimal("0.5")}  # fmt: skip
    event_ingest(client_name="voucher_service", data=partial)
    cancelled = {"external_id": "d-b1-cancel", "event_type": "rielt.booking_cancelled", "actor_user_id": "tenant3",
                 "reverses_external_id": "d-b1"}  # fmt: skip
    event_ingest(client_name="rielt_service", data=cancelled)
    booking = RewardAction.objects.filter(event__external_id="d-b1")
    assert booking.exists() and not booking.exclude(status=RewardAction.Status.CANCELLED).exists()
    assert RewardAction.objects.filter(reverses__isnull=False).count() == 3

    report = _report(history)

    assert report["events_differing"] == 0, report["differences"]
    assert report["actions"]["backtest"] == report["actions"]["production"]
    assert all(row["difference"] == {"actions": 0, "points": 0} for row in report["rules"])
    assert report["reversal_actions_left_out"] == 3 and report["reversals_replayed"] == 2
    assert "Refunds: 2 reversal event(s) counted back in the replay; 3 reversal action(s) left out" in "\n".join(
        report_lines(report)
    )


def test_production_s_actions_are_read_with_a_fixed_number_of_statements_whatever_the_period_s_size(history):
    earlier = EconomicEvent.objects.order_by("received_at").first().received_at

    with CaptureQueriesContext(connection) as short:
        assert _report(history)["events"] == 20
    with CaptureQueriesContext(connection) as long:
        assert _report(earlier)["events"] == 41

    assert len(long.captured_queries) == len(short.captured_queries)


def test_events_received_at_the_same_moment_each_get_their_own_production_actions(history):
    from connect.backtest import _Production, _profile_types

    moment = timezone.now()
    EconomicEvent.objects.filter(received_at__gte=history).update(received_at=moment)
    types = set(EconomicEvent.objects.values_list("event_type", flat=True)) | _profile_types()
    production = _Production(history, moment + timedelta(seconds=1), types)

    events = EconomicEvent.objects.filter(received_at=moment).order_by("received_at", "id")
    for event in events:
        stored = RewardAction.objects.filter(event=event).values_list("rule_code", "target_user_id", "reward_type",
                                                                      "amount")  # fmt: skip
        assert sorted(production.of(event.received_at, event.id)) == sorted(stored)
    assert production.head is None
    assert sum(1 for _ in events) == 20 and RewardAction.objects.filter(event__in=events).count() > 20
