"""The staff roles of SPEC §11: groups ``Rule editors`` and ``Finance`` with exactly their permissions.

The definition lives in ``points.roles`` (also applied after every migrate and flush); this migration
makes the groups exist as soon as the schema does.
"""

from django.db import migrations


def roles_create(apps, schema_editor):
    from points.roles import roles_sync

    roles_sync(apps=apps, using=schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [
        ("points", "0002_ledger_triggers"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(roles_create, migrations.RunPython.noop),
    ]
