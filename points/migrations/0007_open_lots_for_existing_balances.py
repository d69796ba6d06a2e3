"""Every balance that existed before lots gets one never-expiring lot of its size, so the upgrade
loses and invents nothing: afterwards each user's open lots add up to the balance."""

from django.db import migrations
from django.utils import timezone

BATCH = 1000


def open_lots(apps, schema_editor):
    Account = apps.get_model("points", "Account")
    Lot = apps.get_model("points", "Lot")
    db = schema_editor.connection.alias
    now = timezone.now()
    accounts = (
        Account.objects.using(db)
        .filter(kind="user", balance__gt=0, lots__isnull=True)
        .order_by("pk")
        .values_list("pk", "balance")
    )
    batch = []
    for account_id, balance in accounts.iterator(chunk_size=BATCH):
        batch.append(Lot(account_id=account_id, amount=balance, remaining=balance, expires_at=None, created_at=now))
        if len(batch) == BATCH:
            Lot.objects.using(db).bulk_create(batch)
            batch = []
    Lot.objects.using(db).bulk_create(batch)


def close_opened_lots(apps, schema_editor):
    Lot = apps.get_model("points", "Lot")
    LotUse = apps.get_model("points", "LotUse")
    db = schema_editor.connection.alias
    LotUse.objects.using(db).filter(lot__transaction__isnull=True).delete()
    Lot.objects.using(db).filter(transaction__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("points", "0006_reversal_triggers")]

    operations = [migrations.RunPython(open_lots, close_opened_lots)]
