"""The message bus: the Bus seam, RabbitMQ and in-memory implementations, routing."""
