"""The demo's flooder: THREADS threads opening connections and sending GET as fast as they can.

Each attempt connects with a short timeout, sends one request and reads the status line. Prints one
JSON object: {"requests": N, "ok": N, "failed": N, "ok_in_last_second": N}.
Usage: flooder.py HOST PORT SECONDS THREADS
"""
import json
import socket
import sys
import threading
import time

host, port = sys.argv[1], int(sys.argv[2])
seconds, threads = float(sys.argv[3]), int(sys.argv[4])
request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
deadline = time.monotonic() + seconds
lock = threading.Lock()
counts = {"requests": 0, "ok": 0, "failed": 0, "ok_in_last_second": 0}


def flood():
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5) as conn:
                conn.settimeout(0.5)
                conn.sendall(request)
                good = conn.recv(16).split(b" ")[1:2] == [b"200"]
        except OSError:
            good = False
        with lock:
            counts["requests"] += 1
            counts["ok" if good else "failed"] += 1
            if good and deadline - time.monotonic() < 1.0:
                counts["ok_in_last_second"] += 1


workers = [threading.Thread(target=flood) for _ in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(json.dumps(counts))
