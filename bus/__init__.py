"""The message bus: the Bus seam, RabbitMQ and in-memory implementations, routing."""

from bus.amqp import AmqpBus
from bus.errors import BadMessage, BusError, BusUnavailable, CallTimeout, Undeliverable
from bus.memory import MemoryBroker, MemoryBus
from bus.protocol import Bus, DeadLetter, Delivery, Handler, Responder, Subscription
from bus.routing import HOST_KIND, Names, shard_of, topic_matches

__all__ = [
    "HOST_KIND",
    "AmqpBus",
    "BadMessage",
    "Bus",
    "BusError",
    "BusUnavailable",
    "CallTimeout",
    "DeadLetter",
    "Delivery",
    "Handler",
    "MemoryBroker",
    "MemoryBus",
    "Names",
    "Responder",
    "Subscription",
    "Undeliverable",
    "shard_of",
    "topic_matches",
]
