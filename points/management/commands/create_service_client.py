from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from points.models import SCOPES, ServiceClient, ServiceClientKey
from points.namespaces import client_name_problem


def validate_scope(scope: str) -> str:
    if scope in SCOPES or (scope.startswith("events:write:") and len(scope) > len("events:write:")):
        return scope
    raise CommandError(f"Unknown scope {scope!r}. Known: {', '.join(SCOPES)}, events:write:<prefix>.")


class Command(BaseCommand):
    help = "Create a service client with the given scopes and print its API key (shown only once) last."

    def add_arguments(self, parser):
        parser.add_argument("name", help="The client's name; also the source_service it posts events as.")
        parser.add_argument("--scopes", nargs="+", required=True, metavar="SCOPE")
        parser.add_argument(
            "--new-key",
            action="store_true",
            help="The client exists: issue an additional key (key rotation) and update its scopes.",
        )

    @transaction.atomic
    def handle(self, *args, name, scopes, new_key, **options):
        problem = client_name_problem(name)
        if problem:
            raise CommandError(f"NAME: {problem}")
        scopes = sorted({validate_scope(scope) for scope in scopes})
        client = ServiceClient.objects.filter(name=name).first()
        if client and not new_key:
            raise CommandError(f"Service client {name!r} exists; pass --new-key to issue another key.")
        if client:
            client.scopes = scopes
            client.save(update_fields=["scopes"])
        else:
            client = ServiceClient.objects.create(name=name, scopes=scopes)
        _, key = ServiceClientKey.objects.create_key(client=client, name=f"{name} key")
        self.stdout.write(f"Service client {client.name!r} with scopes: {' '.join(scopes)}")
        self.stdout.write("The API key below is shown once; store it now. Send it as 'Authorization: Api-Key <key>'.")
        self.stdout.write(key)
