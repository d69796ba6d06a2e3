import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from connect.bus import EventConsumer


class Command(BaseCommand):
    help = (
        "Consume events from RabbitMQ (EVENTS_BROKER_URL, queue EVENTS_QUEUE): each message is ingested as "
        "POST /api/v1/events ingests a body; refused ones go to <queue>.invalid. SIGTERM or SIGINT stops "
        "after the current message."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--queue", default=None, help=f"Queue to consume (default EVENTS_QUEUE, {settings.EVENTS_QUEUE})."
        )
        parser.add_argument("--broker", default=None, help="Broker URL (default EVENTS_BROKER_URL).")
        parser.add_argument(
            "--prefetch", type=int, default=None, help="Unacknowledged messages at most (default EVENTS_PREFETCH)."
        )

    def handle(self, *args, queue, broker, prefetch, **options):
        consumer = EventConsumer(broker_url=broker, queue_name=queue, prefetch=prefetch)

        def stop(signum, frame):
            consumer.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"Consuming {consumer.queue_name} (dead letters: {consumer.queue_name}.invalid)")
        self.stdout.flush()
        consumer.run()
        counts = ", ".join(f"{name} {count}" for name, count in consumer.counts.items())
        self.stdout.write(f"Stopped: {counts}.")
