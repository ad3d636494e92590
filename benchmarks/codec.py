"""Cost of payload encryption: one encode + decode round trip of the AES-256-GCM codec.

    python -m benchmarks.codec

Prints, per payload size, microseconds per round trip (min/median/max of 5 runs) and the bytes
encryption adds to a payload. CPU only: no Temporal involved.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from temporalio.api.common.v1 import Payload

from courier.core.codec import AesGcmCodec

SIZES = (1024, 65_536, 1_000_000)
RUNS = 5


async def round_trips(codec: AesGcmCodec, payload: Payload, n: int) -> float:
    """Microseconds per encode + decode of ``payload``, over ``n`` round trips."""
    start = time.perf_counter()
    for _ in range(n):
        [sealed] = await codec.encode([payload])
        await codec.decode([sealed])
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    """Measure and print one line per payload size."""
    codec = AesGcmCodec({"k1": os.urandom(32)}, "k1")
    for size in SIZES:
        payload = Payload(metadata={"encoding": b"json/plain"}, data=os.urandom(size))
        n = 2000 if size < 100_000 else 100
        runs = [await round_trips(codec, payload, n) for _ in range(RUNS)]
        [sealed] = await codec.encode([payload])
        print(
            f"{size:>9,} B: {min(runs):8.1f} / {statistics.median(runs):8.1f} / "
            f"{max(runs):8.1f} µs per round trip (min/median/max of {RUNS}); "
            f"+{sealed.ByteSize() - payload.ByteSize()} B"
        )


if __name__ == "__main__":
    asyncio.run(main())
