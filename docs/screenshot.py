"""Take the README's dashboard screenshot (docs/dashboard.png) of a running payments flow.

Run it from the repository root after ``pip install -e '.[dev]'`` (Playwright) with Chromium
installed (Debian: ``apt-get install chromium``)::

    python docs/screenshot.py                 # about a minute: the charts need history
    python docs/screenshot.py --seconds 20 --out /tmp/dashboard.png

The flow converts generated payments to USD (an unknown currency now and then is a dead letter),
archives them to files, sums them per card in 2 s windows (shown on the page with ``show()``)
and picks out big ones; it checkpoints every 2 s. The page is opened as the flow starts, so the
charts fill over ``--seconds`` of snapshots; the shot is taken once the checkpoints, the shown
table and chart and the dead letters have all arrived. The shown stream keeps 80 rows (40 s of
windows), so by then the partial window the run started in has left its chart.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rheon as rh

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
CARDS = ["card-1", "card-2", "card-3", "card-4"]
USD_PER = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}
TIMEOUT_S = 180.0  # generous: on a loaded machine the flow and the browser start slowly


def payment(i: int) -> dict[str, Any]:
    rnd = random.Random(i)
    currency = "XXX" if i % 20_000 == 19_999 else rnd.choice(list(USD_PER))
    return {"card": rnd.choice(CARDS), "amount": round(rnd.lognormvariate(3.5, 1.0)), "currency": currency}


def to_usd(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "usd": round(row["amount"] * USD_PER[row["currency"]])}  # KeyError: a dead letter


def build(archive: Path) -> rh.Flow:
    flow = rh.Flow("payments")
    payments = flow.source(
        rh.io.Generator(payment, rate=2_000, timestamp="ts"), time="ts", max_delay="500ms", name="payments"
    )
    usd = payments.map(to_usd, name="to_usd")
    usd.sink(rh.io.FileSink(archive), name="archive")
    per_card = usd.key_by("card").window(rh.tumbling("2s"), name="per_card").agg(total=rh.sum("usd"), n=rh.count())
    per_card.show("spend per card (USD, 2 s windows)", rows=80, name="spend")
    big = usd.filter(rh.col("usd") > 250, name="big").select("card", "usd", "ts", name="alert_fields")
    big.sink(lambda row: None, name="alerts")
    return flow


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            msg = f"timed out after {TIMEOUT_S:.0f} s waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("dashboard.png"))
    parser.add_argument("--seconds", type=int, default=50, help="snapshots of history in the charts (one a second)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as tmp:
        flow = build(Path(tmp) / "archive")
        run = threading.Thread(
            target=flow.run,
            kwargs={"ui": 0, "checkpoint_dir": Path(tmp) / "ckpt", "checkpoint_every": "2s", "handle_signals": False},
        )
        run.start()
        try:
            wait_for(lambda: flow.ui_url is not None, "the dashboard")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 900}, timezone_id="UTC", locale="en-US")
                page.goto(str(flow.ui_url))

                def count(selector: str) -> int:
                    return page.locator(selector).count()

                wait_for(lambda: int(page.evaluate("window.rheonSnapshots || 0")) >= args.seconds, "chart history")
                wait_for(lambda: count("#checkpoints tbody tr") >= 5, "checkpoints")
                wait_for(lambda: count("#dead-letters tbody tr") >= 1, "a dead letter")
                wait_for(lambda: count("#show-0 tbody tr") >= 8 and count("#show-0 canvas") == 1, "the shown stream")
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            flow.stop()
            run.join(TIMEOUT_S)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
