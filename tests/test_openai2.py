"""The SDK supports both ``openai`` lines: 3.x (on ``httpx2``, installed in the main venv) and 2.x (on
``httpx``). This test builds a second venv with ``openai<3`` and runs the SDK's end-to-end tests in it,
and the training provider's (it talks to the fine-tuning API through the same client).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-openai2"
SDK_TESTS = [
    "tests/test_sdk_recording.py",
    "tests/test_sdk_dropin.py",
    "tests/test_openai_provider.py",
    "tests/test_sdk_routing.py",
]


def _python() -> Path:
    return VENV / "bin" / "python"


def _ensure_venv() -> None:
    stamp = VENV / ".pyproject-sha256"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if _python().exists() and stamp.exists() and stamp.read_text() == wanted:
        return
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(_python()), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]", "openai>=2,<3"],
        check=True,
        capture_output=True,
        text=True,
    )
    stamp.write_text(wanted)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FLYWHEEL_NESTED_OPENAI2") == "1", reason="already inside the openai 2.x run"
)
@pytest.mark.timeout(900)
def test_sdk_suite_passes_on_openai_2x() -> None:
    try:
        _ensure_venv()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not build the openai 2.x venv:\n{exc.stdout}\n{exc.stderr}")
    version = subprocess.run(
        [str(_python()), "-c", "import openai, httpx; print(openai.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.startswith("2."), version
    result = subprocess.run(
        [str(_python()), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDK_TESTS],
        cwd=ROOT,
        env={**os.environ, "FLYWHEEL_NESTED_OPENAI2": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    tail = "\n".join(result.stdout.splitlines()[-40:])
    assert result.returncode == 0, f"openai {version}:\n{tail}\n{result.stderr[-2000:]}"
    assert " passed" in tail and " failed" not in tail, tail
