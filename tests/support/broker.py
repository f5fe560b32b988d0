"""Clean-up on the real broker, for tests and benchmarks alike."""

from __future__ import annotations

import asyncio

import aio_pika


async def delete_amqp_prefix(prefix: str, url: str) -> None:
    """Delete the queues and the two exchanges declared under ``prefix`` (the durable
    queues would otherwise pile up run after run, and a broker holding thousands of
    them takes many minutes to restart)."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "list_queues", "name",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    names = [n for n in out.decode().split() if n.startswith(prefix + ".")]
    if not names:
        return
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        for name in names:
            await channel.queue_delete(name)
        for exchange in (f"{prefix}.events", f"{prefix}.commands"):
            await channel.exchange_delete(exchange)
