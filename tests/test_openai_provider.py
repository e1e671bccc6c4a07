"""The ``openai`` provider through the real ``openai`` client against the mock fine-tuning API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import openai
import orjson
import pytest

from flywheel.errors import UsageError
from flywheel.mock_server import FineTuneTiming, MockServer
from flywheel.train.providers import (
    JobHandle,
    JobRequest,
    ProviderError,
    TrainingFiles,
    TransientProviderError,
    provider_class,
)
from flywheel.train.providers.openai import OpenAIProvider, OpenAISettings

KEY_ENV = "FLYWHEEL_TEST_PROVIDER_KEY"


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    with MockServer(fine_tune=FineTuneTiming(validating_s=0.05, queued_s=0.05, running_s=0.3)) as running:
        yield running


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-provider-test")


def _files(tmp_path: Path) -> TrainingFiles:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"Ticket {n}"},
                {"role": "assistant", "content": "billing"},
            ]
        }
        for n in range(12)
    ]
    (tmp_path / "train.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    (tmp_path / "test.jsonl").write_bytes(orjson.dumps(lines[0]) + b"\n")
    return TrainingFiles(tmp_path, {"counts": {"train": 12, "test": 1}})


def _request(tmp_path: Path, settings: OpenAISettings, key: str = "k" * 32, **kw: object) -> JobRequest:
    values: dict[str, object] = {
        "key": key,
        "pipeline": "classify",
        "dataset": "classify",
        "dataset_version": 3,
        "base_model": "gpt-4o-mini-2024-07-18",
        "method": "supervised",
        "hyperparameters": {"n_epochs": 2},
        "suffix": "classify",
        "seed": 7,
        "validation": True,
        "settings": settings,
        "work_dir": tmp_path,
        "metadata": {"flywheel_job": key, "flywheel_pipeline": "classify"},
    }
    values.update(kw)
    return JobRequest(**values)  # type: ignore[arg-type]


def test_registered_by_name() -> None:
    assert provider_class("openai") is OpenAIProvider
    with pytest.raises(UsageError, match="unknown provider 'opnai'"):
        provider_class("opnai")


def test_upload_create_find_poll_to_success(server: MockServer, tmp_path: Path) -> None:
    settings = OpenAISettings(base_url=server.base_url, api_key_env=KEY_ENV)
    provider = OpenAIProvider(settings)
    request = _request(tmp_path, settings)
    try:
        assert provider.find(request) is None
        prepared = provider.prepare(request, _files(tmp_path))
        assert set(prepared) == {"training_file", "validation_file"}
        launched = provider.launch(request, prepared)
        assert launched.status == "validating_files" and launched.provider_job_id.startswith("ftjob-")
        found = provider.find(request)
        assert found is not None and found.provider_job_id == launched.provider_job_id
        assert provider.find(_request(tmp_path, settings, key="other")) is None
        handle = JobHandle(launched.provider_job_id, settings, tmp_path, {}, None)
        seen: list[str] = []
        estimated: list[str] = []
        deadline = time.monotonic() + 20
        while True:
            state = provider.poll(handle)
            if state.details["estimated_finish"] is not None:
                estimated.append(state.details["estimated_finish"])
            seen.extend(event.provider_event_id or "" for event in state.events)
            handle = JobHandle(handle.provider_job_id, settings, tmp_path, {}, seen[-1] if seen else None)
            if state.finished or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert state.status == "succeeded", state
        assert state.fine_tuned_model is not None and state.fine_tuned_model.startswith(
            "ft:gpt-4o-mini-2024-07-18:"
        )
        assert state.trained_tokens and state.trained_tokens > 0
        assert len(seen) == len(set(seen)), "each event is returned once"
        assert "checkpoints" in state.details
        # The provider's finish estimate is kept with the job while it runs, and gone once it ended.
        assert estimated and all(datetime.fromisoformat(when).tzinfo is not None for when in estimated)
        assert state.details["estimated_finish"] is None
    finally:
        provider.close()


def test_cancel(server: MockServer, tmp_path: Path) -> None:
    slow = FineTuneTiming(validating_s=5, queued_s=5, running_s=5)
    with MockServer(fine_tune=slow) as patient:
        settings = OpenAISettings(base_url=patient.base_url, api_key_env=KEY_ENV)
        provider = OpenAIProvider(settings)
        try:
            request = _request(tmp_path, settings)
            launched = provider.launch(request, provider.prepare(request, _files(tmp_path)))
            cancelled = provider.cancel(JobHandle(launched.provider_job_id, settings, tmp_path, {}, None))
            assert cancelled.status == "cancelled"
            with pytest.raises(ProviderError, match="HTTP 400") as refused:
                provider.cancel(JobHandle(launched.provider_job_id, settings, tmp_path, {}, None))
            assert not isinstance(refused.value, TransientProviderError)
        finally:
            provider.close()


def test_server_errors_are_transient_with_the_servers_wait(tmp_path: Path) -> None:
    with MockServer(error_rate=1.0) as failing:
        settings = OpenAISettings(base_url=failing.base_url, api_key_env=KEY_ENV, max_retries=1)
        provider = OpenAIProvider(settings)
        try:
            with pytest.raises(TransientProviderError, match="HTTP 500") as raised:
                provider.find(_request(tmp_path, settings))
            assert raised.value.retry_after == pytest.approx(0.01)
        finally:
            provider.close()


def test_unknown_file_is_a_permanent_error(server: MockServer, tmp_path: Path) -> None:
    settings = OpenAISettings(base_url=server.base_url, api_key_env=KEY_ENV)
    provider = OpenAIProvider(settings)
    try:
        with pytest.raises(ProviderError, match="HTTP 400") as raised:
            provider.launch(_request(tmp_path, settings), {"training_file": "file-nope"})
        assert not isinstance(raised.value, TransientProviderError)
    finally:
        provider.close()


def test_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV)
    settings = OpenAISettings(base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    with pytest.raises(ProviderError, match=f"{KEY_ENV} is not set"):
        OpenAIProvider(settings).find(_request(tmp_path, settings))


def test_dpo_uploads_the_preference_pairs(server: MockServer, tmp_path: Path) -> None:
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": f"Ticket {n}"}]},
            "preferred_output": [{"role": "assistant", "content": "billing"}],
            "non_preferred_output": [{"role": "assistant", "content": "other"}],
        }
        for n in range(12)
    ]
    files = _files(tmp_path)
    files.training_file("dpo").write_bytes(b"".join(orjson.dumps(pair) + b"\n" for pair in pairs))
    settings = OpenAISettings(base_url=server.base_url, api_key_env=KEY_ENV)
    provider = OpenAIProvider(settings)
    try:
        request = _request(
            tmp_path, settings, key="d" * 32, method="dpo", hyperparameters={"beta": 0.2}, validation=False
        )
        prepared = provider.prepare(request, files)
        assert set(prepared) == {"training_file"}
        launched = provider.launch(request, prepared)
        with openai.OpenAI(api_key="sk-test", base_url=server.base_url) as client:
            job = client.fine_tuning.jobs.retrieve(launched.provider_job_id)
            uploaded = client.files.content(prepared["training_file"]).read()
        assert job.method is not None and job.method.type == "dpo"
        assert job.method.dpo is not None and job.method.dpo.hyperparameters.beta == 0.2  # type: ignore[union-attr]
        assert uploaded == files.training_file("dpo").read_bytes()
    finally:
        provider.close()
