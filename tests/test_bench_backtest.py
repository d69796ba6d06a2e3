"""Smoke test of the bench's backtest phase on a few events (the full phase runs under make bench)."""

import json

import pytest

from bench.backtest import backtest_measure
from bench.run import _targets
from rules.demo import DEMO_RULES_PATH
from rules.services import rules_import


@pytest.fixture
def demo_rules(db):
    rules_import(payload=json.loads(DEMO_RULES_PATH.read_text()))


@pytest.mark.django_db
def test_the_backtest_phase_measures_a_rate_and_finds_no_difference_with_what_it_stored(demo_rules):
    result = backtest_measure(events=300)

    assert result["events"] == 300 and result["events_differing"] == 0
    assert result["actions"] > 300 and result["events_per_s"] > 0
    [target] = _targets({"backtest": result})
    assert target["under"] == 60 and target["measured"] == pytest.approx(100_000 / result["events_per_s"])
