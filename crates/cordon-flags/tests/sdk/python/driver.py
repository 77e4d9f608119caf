"""Drives the official Unleash Python SDK (PyPI `UnleashClient`, pinned in
requirements.txt) for crates/cordon-flags/tests/sdk.rs, which speaks to it in JSON
lines: one command per line on stdin, exactly one answer per command on stdout. The
protocol is described in crates/cordon-flags/tests/sdk/README.md; it is the same as
the Node driver's. Everything the SDK logs goes to stderr, never to stdout.

    python driver.py --url http://127.0.0.1:PORT/api --token SECRET \
        [--mode polling|streaming] [--app-name NAME] [--instance-id ID] \
        [--refresh-ms 1000] [--metrics-ms 1000]

The SDK counts in whole seconds, so --refresh-ms and --metrics-ms are rounded up to
at least one second.
"""

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from importlib.metadata import version

from UnleashClient import UnleashClient
from UnleashClient.cache import FileCache
from UnleashClient.events import UnleashEventType
from UnleashClient.utils import InstanceAllowType


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--mode", choices=["polling", "streaming"], default="polling")
    p.add_argument("--app-name", default="cordon-sdk-test-python")
    p.add_argument("--instance-id", default=f"python-{os.getpid()}")
    p.add_argument("--refresh-ms", type=int, default=1000)
    p.add_argument("--metrics-ms", type=int, default=1000)
    return p.parse_args()


def seconds(ms):
    return max(1, math.ceil(ms / 1000))


def main():
    opts = parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="[unleash-python] %(levelname)s %(name)s: %(message)s",
    )
    out_lock = threading.Lock()

    def out(obj):
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    ready = threading.Event()
    started = time.monotonic()
    ready_after_ms = []

    def on_event(event):
        if event.event_type == UnleashEventType.READY and not ready.is_set():
            ready_after_ms.append(round((time.monotonic() - started) * 1000))
            ready.set()

    # A cache of our own: a feature file left by an earlier run must not answer for the server.
    cache_dir = tempfile.mkdtemp(prefix="cordon-sdk-python-")
    client = UnleashClient(
        url=opts.url,
        app_name=opts.app_name,
        instance_id=opts.instance_id,
        custom_headers={"Authorization": opts.token},
        refresh_interval=seconds(opts.refresh_ms),
        metrics_interval=seconds(opts.metrics_ms),
        cache=FileCache(opts.app_name, directory=cache_dir),
        event_callback=on_event,
        experimental_mode={"type": opts.mode},
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )

    # flush_metrics reports what the SDK's own send returned; the SDK keeps it to itself.
    send_results = []
    real_send = client._transport.send_metrics

    def recording_send(payload):
        ok = real_send(payload)
        send_results.append((ok, payload))
        return ok

    client._transport.send_metrics = recording_send

    out(
        {
            "event": "started",
            "sdk": f"unleash-python-sdk:{version('UnleashClient')}",
            "runtime": f"python {sys.version.split()[0]}",
        }
    )
    # Registers, then (polling) fetches once before returning; streaming connects in
    # a thread of its own.
    client.initialize_client()

    def context_of(cmd):
        return client._enricher.build(cmd.get("context") or {})

    def peek(flag, cmd):
        # What the SDK would answer, without counting it towards the metrics it reports.
        known = flag in client.feature_definitions()
        enabled = bool(client._engine.check_enabled(flag, context_of(cmd)).is_enabled)
        return {"known": known, "enabled": enabled}

    def variant_out(v):
        o = {
            "name": v.get("name"),
            "enabled": bool(v.get("enabled")),
            "feature_enabled": bool(v.get("feature_enabled")),
        }
        if v.get("payload"):
            o["payload"] = v["payload"]
        return o

    def handle(cmd):
        c = cmd.get("cmd")
        if c == "ready":
            timeout_ms = cmd.get("timeout_ms", 5000)
            if not ready.wait(timeout_ms / 1000):
                return {
                    "ok": False,
                    "error": f"the SDK did not become ready within {timeout_ms} ms",
                    "mode": opts.mode,
                }
            return {"ok": True, "after_ms": ready_after_ms[0], "mode": opts.mode}
        if c == "is_enabled":
            return {
                "ok": True,
                "enabled": client.is_enabled(cmd["flag"], cmd.get("context") or {}),
            }
        if c == "get_variant":
            v = client.get_variant(cmd["flag"], cmd.get("context") or {})
            return {"ok": True, "variant": variant_out(v)}
        if c == "peek":
            return {"ok": True, **peek(cmd["flag"], cmd)}
        if c == "wait":
            t0 = time.monotonic()
            deadline = t0 + cmd.get("timeout_ms", 5000) / 1000
            while True:
                now = peek(cmd["flag"], cmd)
                ok = ("enabled" not in cmd or now["enabled"] == cmd["enabled"]) and (
                    "known" not in cmd or now["known"] == cmd["known"]
                )
                ms = round((time.monotonic() - t0) * 1000)
                if ok or time.monotonic() >= deadline:
                    return {"ok": True, "seen": ok, "ms": ms, "mode": opts.mode, **now}
                time.sleep(0.005)
        if c == "flush_metrics":
            before = len(send_results)
            client._metrics.flush()
            if len(send_results) == before:
                return {"ok": True, "sent": False, "toggles": {}, "warnings": ["nothing to send"]}
            sent, payload = send_results[-1]
            toggles = (payload.get("bucket") or {}).get("toggles", {})
            return {"ok": True, "sent": sent, "toggles": toggles, "warnings": []}
        if c == "status":
            return {
                "ok": True,
                "mode": opts.mode,
                "synchronized": ready.is_set(),
                "initialized": client.is_initialized,
            }
        if c == "quit":
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {c!r}"}

    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
            except ValueError as e:
                out({"ok": False, "error": f"not JSON: {e}"})
                continue
            try:
                answer = handle(cmd)
            except Exception as e:  # noqa: BLE001 -- the test reads the message
                logging.exception("command %r failed", cmd)
                answer = {"ok": False, "error": repr(e)}
            if cmd.get("cmd") == "quit":
                client.destroy()
                out(answer)
                break
            out(answer)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    # Streaming keeps a daemon thread; do not wait for it.
    os._exit(0)


if __name__ == "__main__":
    main()
