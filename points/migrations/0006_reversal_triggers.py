"""PostgreSQL enforces the reversal promises itself, as it does balanced entries (0002):
- at commit, the reversals of an original add up to at most its amount and to its reversed_amount counter;
- a reversal that took nothing (allow_partial with nothing available) is the one transaction that may
  have no entries."""

from django.db import migrations

BALANCED_WITH_EMPTY_REVERSAL = """
CREATE OR REPLACE FUNCTION points_transaction_check_balanced() RETURNS trigger AS $$
DECLARE
    txn uuid;
    total numeric;
    legs integer;
BEGIN
    IF TG_TABLE_NAME = 'points_entry' THEN
        txn := NEW.transaction_id;
    ELSE
        txn := NEW.id;
    END IF;
    SELECT COALESCE(SUM(amount), 0), COUNT(*) INTO total, legs FROM points_entry WHERE transaction_id = txn;
    IF legs = 0 THEN
        IF EXISTS (SELECT 1 FROM points_transaction WHERE id = txn AND kind = 'reversal' AND amount = 0) THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'ledger transaction % has no entries', txn
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced by %', txn, total
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

BALANCED_AS_BEFORE = """
CREATE OR REPLACE FUNCTION points_transaction_check_balanced() RETURNS trigger AS $$
DECLARE
    txn uuid;
    total numeric;
    legs integer;
BEGIN
    IF TG_TABLE_NAME = 'points_entry' THEN
        txn := NEW.transaction_id;
    ELSE
        txn := NEW.id;
    END IF;
    SELECT COALESCE(SUM(amount), 0), COUNT(*) INTO total, legs FROM points_entry WHERE transaction_id = txn;
    IF legs = 0 THEN
        RAISE EXCEPTION 'ledger transaction % has no entries', txn
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced by %', txn, total
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

REVERSALS_WITHIN_ORIGINAL = """
CREATE OR REPLACE FUNCTION points_reversals_check_within_original() RETURNS trigger AS $$
DECLARE
    original uuid;
    original_amount bigint;
    counted bigint;
    reversed numeric;
BEGIN
    original := COALESCE(NEW.reverses_id, NEW.id);
    SELECT amount, reversed_amount INTO original_amount, counted FROM points_transaction WHERE id = original;
    SELECT COALESCE(SUM(amount), 0) INTO reversed FROM points_transaction WHERE reverses_id = original;
    IF reversed > original_amount THEN
        RAISE EXCEPTION 'reversals of ledger transaction % add up to %, beyond its amount %',
            original, reversed, original_amount USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF reversed <> counted THEN
        RAISE EXCEPTION 'reversals of ledger transaction % add up to %, its counter says %',
            original, reversed, counted USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER points_reversal_within_original
    AFTER INSERT ON points_transaction DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.reverses_id IS NOT NULL)
    EXECUTE FUNCTION points_reversals_check_within_original();

CREATE CONSTRAINT TRIGGER points_reversal_counts_within_original
    AFTER UPDATE OF amount, reversed_amount ON points_transaction DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION points_reversals_check_within_original();
"""

DROP_REVERSALS_WITHIN_ORIGINAL = """
DROP TRIGGER IF EXISTS points_reversal_counts_within_original ON points_transaction;
DROP TRIGGER IF EXISTS points_reversal_within_original ON points_transaction;
DROP FUNCTION IF EXISTS points_reversals_check_within_original();
"""


def _on_postgresql(*statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql)  # no parameters: several statements in one call

    return run


class Migration(migrations.Migration):
    dependencies = [("points", "0005_lots_and_reversals")]

    operations = [
        migrations.RunPython(
            _on_postgresql(BALANCED_WITH_EMPTY_REVERSAL, REVERSALS_WITHIN_ORIGINAL),
            _on_postgresql(DROP_REVERSALS_WITHIN_ORIGINAL, BALANCED_AS_BEFORE),
        )
    ]
