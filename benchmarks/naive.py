"""Pipeline ``naive-aiokafka-file``: the floor any exporter is compared to.

A plain aiokafka consumer loop in this process appends each record's value (plus a newline) to
a file; offsets are auto-committed in the background, so a crash can lose records that were
committed but not yet written (at-most-once). No Temporal, no durability, no retries. The file
is flushed after every fetched batch, which is when its lines become visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from benchmarks.common import (
    CpuMeter,
    Measurement,
    PipelineError,
    count_lines,
    cpu_between,
    timeout_for,
    wait_for_lines,
)
from courier_devtools.stack.settings import StackSettings

STOP_TIMEOUT_S = 30.0


async def consume_to_file(consumer: AIOKafkaConsumer, out: Path, stop: asyncio.Event) -> None:
    """The whole exporter: poll, append values, flush; until ``stop`` is set."""
    with out.open("ab") as fh:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for msg in batch:
                    fh.write(msg.value + b"\n")
            fh.flush()


async def run(
    settings: StackSettings, tmp: Path, topic: str, unique: str, records: int
) -> Measurement:
    """Consume ``topic`` into a file until it holds ``records`` lines."""
    out = tmp / "naive-out.txt"
    meter = CpuMeter(settings)
    start = meter.snapshot()
    t0 = time.time()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"bench-naive-{unique}",
        enable_auto_commit=True,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(consume_to_file(consumer, out, stop))
    try:

        def alive() -> None:
            if loop.done():
                loop.result()
                raise PipelineError("the consumer loop stopped early")

        times = await wait_for_lines(
            out,
            records,
            timeout=timeout_for(records, 1_000.0, floor=60.0),
            alive=alive,
            what="naive aiokafka consumer",
        )
        end = meter.snapshot()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(loop, STOP_TIMEOUT_S)
        except TimeoutError:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await consumer.stop()
    lines = count_lines(out)
    notes = ["auto-commit (at-most-once); flush per fetched batch, no fsync"]
    if lines != records:
        notes.append(f"file has {lines} lines for {records} records")
    return Measurement(
        pipeline="naive-aiokafka-file",
        records=records,
        seconds=times.last - t0,
        startup_s=times.first - t0,
        running_s=times.last - times.first,
        cpu=cpu_between(start, end),
        notes=notes,
    )
