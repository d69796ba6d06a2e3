"""What every way in checks before an event reaches ``event_ingest``: the body's fields (``EventIn``)
and that its ``source_service`` is the caller and may post this type. The HTTP view and the RabbitMQ
consumer both go through here, so an event is refused or accepted the same way whichever path it took.
"""

from rest_framework.exceptions import PermissionDenied

from points.auth import ServicePrincipal

from . import serializers


def event_input_validated(body) -> dict:
    """The validated fields of an event body; ``rest_framework.exceptions.ValidationError`` otherwise."""
    serializer = serializers.EventIn(data=body)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def event_source_check(*, principal: ServicePrincipal, data: dict) -> None:
    """``PermissionDenied`` unless ``principal`` is the event's source and may write its type."""
    if data["source_service"] != principal.client_name:
        raise PermissionDenied("source_service must be the calling client's name.")
    if not principal.may_write_event_type(data["event_type"]):
        raise PermissionDenied(f"This key may not post events of type '{data['event_type']}'.")
