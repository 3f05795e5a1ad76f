"""Run inside a pod: GET each URL in turn, on a new connection each time, for ``--seconds``, and
print one JSON line: {"requests", "failures", "errors": [first few], "p50", "p99", "max"}
(seconds). The well-behaved neighbour of a hostile client: it shows whether the ztunnels it
goes through keep serving everyone while another pod attacks them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import urllib.parse


def get(url: str, timeout: float) -> None:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=timeout)
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
    finally:
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("urls", nargs="+")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.02)
    args = p.parse_args()
    latencies: list[float] = []
    errors: list[str] = []
    failures = 0
    deadline = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < deadline:
        url = args.urls[i % len(args.urls)]
        i += 1
        started = time.monotonic()
        try:
            get(url, args.timeout)
        except Exception as exc:
            failures += 1
            if len(errors) < 5:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
        else:
            latencies.append(time.monotonic() - started)
        time.sleep(args.interval)
    latencies.sort()

    def q(f: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(f * len(latencies)))], 4) \
            if latencies else None

    print(json.dumps({"requests": i, "failures": failures, "errors": errors, "p50": q(0.5),
                      "p99": q(0.99), "max": q(1.0)}), flush=True)


if __name__ == "__main__":
    main()
