"""The reconnection guide's test client: call the demo node's functions once, or every 10 s.

    python examples/test_reconnect_client.py                 # asks: 1) single test 2) continuous test
    python examples/test_reconnect_client.py 2 --interval 3 --rounds 20 --gateway 10.0.0.5:8080

Run it against examples/improved_reconnect_demo.py, restart the gateway during the continuous
test, and watch calls fail while it is down and succeed once the node is back. Defaults also
come from EASYREMOTE_GATEWAY, EASYREMOTE_INTERVAL and EASYREMOTE_TIMEOUT.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import datetime

from easyremote import Client, EasyRemoteError

# What the demo node serves, and what each call must answer.
CHECKS = [
    ("add(2, 3)", lambda c: c.execute("add", 2, 3), 5),
    ("slow_square(4)", lambda c: c.execute("slow_square", 4), 16),
    ("countdown(3)", lambda c: list(c.stream("countdown", 3)), [3, 2, 1]),
]


def run_round(client: Client, label: str) -> bool:
    """Call every function once and print one line per call; True when all were right."""
    passed = True
    for name, call, expected in CHECKS:
        try:
            result = call(client)
            verdict = f"= {result!r} " + ("OK" if result == expected else f"WRONG, not {expected!r}")
        except EasyRemoteError as exc:  # gateway down, node reconnecting, call timed out ...
            result, verdict = None, f"FAILED: {type(exc).__name__}: {exc}"
        passed = passed and result == expected
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        print(f"[{stamp}] {label} {name} {verdict}", flush=True)
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("option", nargs="?", choices=["1", "2"], help="1: single test, 2: continuous test")
    parser.add_argument("--gateway", default=os.environ.get("EASYREMOTE_GATEWAY", "localhost:8080"))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("EASYREMOTE_INTERVAL", 10)))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("EASYREMOTE_TIMEOUT", 5)),
                        help="seconds one call may wait, riding out a reconnection (default 5)")
    parser.add_argument("--rounds", type=int, default=0, help="stop the continuous test after N rounds")
    options = parser.parse_args()
    option = options.option or input("1) single test  2) continuous test\nChoose 1 or 2: ").strip()
    if option not in ("1", "2"):
        parser.error(f"choose 1 or 2, not {option!r}")

    with Client(options.gateway, timeout=options.timeout) as client:
        if option == "1":
            passed = run_round(client, "single test")
            print("Single test passed" if passed else "Single test FAILED", flush=True)
            return 0 if passed else 1
        print(f"Continuous test: calling every {options.interval:g} s, Ctrl+C to stop", flush=True)
        rounds = good = 0
        try:
            while True:
                rounds += 1
                good += run_round(client, f"round {rounds}")
                if rounds == options.rounds:
                    break
                time.sleep(options.interval)
        except KeyboardInterrupt:
            pass
        print(f"Continuous test stopped: {good}/{rounds} rounds fully successful", flush=True)
        return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
