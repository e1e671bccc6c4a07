"""A stand-in for a local trainer that succeeds: reads the generated config (JSON is YAML), prints
two metrics lines the way a transformers Trainer does, writes a "model" into ``output_dir``.

``--wait-for PATH`` holds it between the two lines until PATH exists, so a test can poll while
it runs without sleeping for a guessed time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--wait-for")
args, _ = parser.parse_known_args()  # other arguments are only recorded
config = json.loads(Path(args.config).read_text())
output = Path(config["output_dir"])
print(f"training {config.get('model_name_or_path') or config.get('base_model')}", flush=True)
print({"loss": "2.5", "grad_norm": "1.25", "learning_rate": "2e-05", "epoch": "0.5"}, flush=True)
if args.wait_for:
    deadline = time.monotonic() + 60
    while not Path(args.wait_for).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
print({"loss": "1.5", "epoch": "1"}, flush=True)
(output / "model.json").write_text(
    json.dumps(
        {
            "argv": sys.argv[1:],
            "config": config,
            "secret_seen": os.environ.get("FLYWHEEL_TEST_TOKEN"),
        }
    )
)
print("saved", flush=True)
