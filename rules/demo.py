"""The demo rules of SPEC §10, shipped as a rules file (loaded by the embedded default and import_rules)."""

from pathlib import Path

DEMO_RULES_PATH = Path(__file__).resolve().parent / "demo_rules.json"
