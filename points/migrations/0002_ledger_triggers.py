"""PostgreSQL enforces the ledger's promises itself, so no code path or admin slip can break the books:
entries can never be updated or deleted, transactions never deleted, and at commit every transaction
must have entries that sum to zero."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION points_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER points_entry_immutable
    BEFORE UPDATE OR DELETE ON points_entry
    FOR EACH ROW EXECUTE FUNCTION points_refuse_change();

CREATE TRIGGER points_transaction_undeletable
    BEFORE DELETE ON points_transaction
    FOR EACH ROW EXECUTE FUNCTION points_refuse_change();

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

CREATE CONSTRAINT TRIGGER points_entry_balanced
    AFTER INSERT ON points_entry DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION points_transaction_check_balanced();

CREATE CONSTRAINT TRIGGER points_transaction_has_entries
    AFTER INSERT ON points_transaction DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION points_transaction_check_balanced();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS points_transaction_has_entries ON points_transaction;
DROP TRIGGER IF EXISTS points_entry_balanced ON points_entry;
DROP TRIGGER IF EXISTS points_transaction_undeletable ON points_transaction;
DROP TRIGGER IF EXISTS points_entry_immutable ON points_entry;
DROP FUNCTION IF EXISTS points_transaction_check_balanced();
DROP FUNCTION IF EXISTS points_refuse_change();
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(sql)  # no parameters: several statements in one call

    return run


class Migration(migrations.Migration):
    dependencies = [("points", "0001_initial")]

    operations = [migrations.RunPython(_on_postgresql(FORWARD), _on_postgresql(BACKWARD))]
