"""A stand-in for a long training run: says it started, then sleeps until it is killed."""

from __future__ import annotations

import time

print("training for a long time", flush=True)
while True:
    time.sleep(3600)
