"""The demo's polite client: one HTTP GET every INTERVAL seconds for SECONDS seconds.

Prints one JSON object: {"requests": N, "ok": N, "failures": ["...", ...]}.
Usage: polite.py URL SECONDS INTERVAL
"""
import json
import sys
import time
import urllib.request

url, seconds, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
requests, ok, failures = 0, 0, []
while time.monotonic() < deadline:
    started = time.monotonic()
    requests += 1
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            answer.read()
            if answer.status == 200:
                ok += 1
            else:
                failures.append(f"HTTP {answer.status}")
    except Exception as err:  # a timeout or refusal is what the demo must report
        failures.append(type(err).__name__)
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
print(json.dumps({"requests": requests, "ok": ok, "failures": failures}))
