"""An unbounded flow: synthetic IoT readings in real time, 5-second averages per sensor.

Run: python examples/live_sensors.py   (stops after 12 s; Ctrl-C stops it cleanly too)
"""

from __future__ import annotations

import math
import sys

import rheon as rh


def reading(i: int) -> dict[str, object]:
    sensor = f"s{i % 4}"
    return {"sensor": sensor, "temp": round(20 + 5 * math.sin(i / 40) + (i % 4), 2)}


def main(duration: str = "12s") -> None:
    flow = rh.Flow("sensors")
    readings = flow.source(rh.io.Generator(reading, rate=40, timestamp="ts"), time="ts", max_delay="500ms")
    averages = readings.key_by("sensor").window(rh.tumbling("5s")).agg(n=rh.count(), avg=rh.mean("temp"))
    averages.sink(rh.io.Console(prefix="avg "))
    flow.run(duration=duration)
    print(flow.metrics(), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "12s")
