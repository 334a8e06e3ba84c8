"""An unbounded flow: synthetic IoT readings in real time, 5-second averages per sensor.

Run it either way (Ctrl-C stops it cleanly):

    python examples/live_sensors.py 12s
    rheon run examples/live_sensors.py --duration 12s

``rheon run`` finds the module-level ``flow``; ``python`` runs ``main()``.
"""

from __future__ import annotations

import math
import sys

import rheon as rh


def reading(i: int) -> dict[str, object]:
    sensor = f"s{i % 4}"
    return {"sensor": sensor, "temp": round(20 + 5 * math.sin(i / 40) + (i % 4), 2)}


def build() -> rh.Flow:
    flow = rh.Flow("sensors")
    readings = flow.source(rh.io.Generator(reading, rate=40, timestamp="ts"), time="ts", max_delay="500ms")
    averages = readings.key_by("sensor").window(rh.tumbling("5s")).agg(n=rh.count(), avg=rh.mean("temp"))
    averages.sink(rh.io.Console(prefix="avg "))
    return flow


flow = build()


def main(duration: str = "12s") -> None:
    flow.run(duration=duration)
    print(flow.metrics(), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "12s")
