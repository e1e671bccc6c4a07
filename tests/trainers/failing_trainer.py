"""A stand-in for a local trainer that fails: prints a little, then exits with code 3."""

from __future__ import annotations

import os
import sys

print("loading the dataset", flush=True)
token = os.environ.get("FLYWHEEL_TEST_TOKEN")
if token:
    print(f"using token {token}", flush=True)
print("RuntimeError: boom", file=sys.stderr, flush=True)
sys.exit(3)
