"""The ``flywheel`` command line and the library functions behind it, on real SQLite and PostgreSQL.

Commands run through click's ``CliRunner`` (and a few through a real subprocess, to see exactly
what a user sees). Errors must be one line on stderr, without a traceback or a password.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from test_query import call_row, insert_calls, migrated

import flywheel
from flywheel._clidocs import render_cli_docs
from flywheel.cli import cli
from flywheel.errors import StoreError
from flywheel.logs import input_preview, output_preview, recent_calls
from flywheel.migrate import MigrationResult, migrate, pending_migrations
from flywheel.mock_server import FineTuneTiming
from flywheel.query import CallFilter
from sdk import _migrate

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE_PG = "postgresql+psycopg://flywheel:s3cret-pw@127.0.0.1:1/flywheel"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="flywheel")


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    """The command failed cleanly: one ``flywheel: error:`` line on stderr, no traceback."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an escaped exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flywheel: error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --- the command group -------------------------------------------------------------------------


def test_version() -> None:
    assert ok("--version").stdout == f"flywheel {flywheel.__version__}\n"


def test_help_lists_only_working_commands_in_workflow_order() -> None:
    result = ok("--help")
    lines = result.stdout.split("Commands:\n", 1)[1].splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")]
    assert [word for word in listed if word in cli.commands] == [
        "quickstart",
        "migrate",
        "logs",
        "stats",
        "dataset",
        "dedup",
        "relabel",
        "review",
        "export",
        "config",
        "train",
        "jobs",
        "watch",
        "eval",
        "drift",
        "promote",
        "mock-server",
    ]


@pytest.mark.slow
def test_python_dash_m_flywheel_and_a_real_error_exit() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "flywheel", "--version"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert version.stdout.strip() == f"flywheel {flywheel.__version__}"
    failed = subprocess.run(
        [sys.executable, "-m", "flywheel", "logs", "--db", UNREACHABLE_PG],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("flywheel: error: "), failed.stderr
    assert "s3cret-pw" not in failed.stderr


def test_public_exports_are_complete() -> None:
    public = {
        name
        for name, value in vars(flywheel).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(flywheel.__all__) == public | {"__version__"}
    for name in flywheel.__all__:
        assert getattr(flywheel, name) is not None


def test_every_command_calls_a_documented_library_function() -> None:
    for function in (
        migrate,
        pending_migrations,
        recent_calls,
        flywheel.call_stats,
        flywheel.create_dataset,
        flywheel.update_dataset,
        flywheel.list_datasets,
        flywheel.get_dataset,
        flywheel.export_dataset,
        flywheel.dedup_dataset,
        flywheel.relabel_dataset,
        flywheel.export_review,
        flywheel.import_review,
    ):
        assert inspect.getdoc(function)


def test_cli_docs_are_up_to_date() -> None:
    expected = render_cli_docs()
    written = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == expected, "docs/cli.md is stale: run `python -m flywheel._clidocs > docs/cli.md`"


# --- migrate -------------------------------------------------------------------------------------


def all_revisions(url: str) -> list[str]:
    """Every revision in migrations/versions, oldest first, read by Alembic from the files."""
    script = ScriptDirectory.from_config(_migrate.alembic_config(url))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def test_migrate_from_empty_then_again_and_dry_run(db_url: str) -> None:
    head = _migrate.head_revision()
    revisions = all_revisions(db_url)
    dry = ok("migrate", "--db", db_url, "--dry-run")
    assert head in dry.stdout and f"Would apply {len(revisions)} migration" in dry.stdout
    assert _migrate.current_revision(db_url) is None  # a dry run changes nothing
    if db_url.startswith("sqlite"):
        assert not Path(db_url.removeprefix("sqlite:///")).exists()
    assert json_lines(ok("migrate", "--db", db_url, "--dry-run", "--json"))[0]["pending"] == revisions

    first = ok("migrate", "--db", db_url)
    assert f"(empty) -> {head}" in first.stdout
    assert _migrate.current_revision(db_url) == head
    again = ok("migrate", "--db", db_url)
    assert "nothing to do" in again.stdout
    assert "Nothing to do" in ok("migrate", "--db", db_url, "--dry-run").stdout
    assert json_lines(ok("migrate", "--db", db_url, "--json"))[0] == {
        "url": json_lines(ok("migrate", "--db", db_url, "--dry-run", "--json"))[0]["url"],
        "before": head,
        "after": head,
    }


def test_migrate_library_functions(db_url: str) -> None:
    head = _migrate.head_revision()
    assert pending_migrations(db_url) == all_revisions(db_url)
    assert all_revisions(db_url)[-1] == head
    assert migrate(db_url) == MigrationResult(before=None, after=head)
    assert migrate(db_url) == MigrationResult(before=head, after=head)
    assert not migrate(db_url).changed
    assert pending_migrations(db_url) == []


def test_migrate_uses_flywheel_database_url_by_default(tmp_path: Path) -> None:
    ok("migrate")
    assert (tmp_path / "default.db").exists()  # the autouse fixture points the variable there
    assert (tmp_path / "default.db").stat().st_mode & 0o077 == 0  # call bodies are private


def test_migrate_to_an_unknown_revision_names_the_option(tmp_path: Path) -> None:
    result = run("migrate", "--db", f"sqlite:///{tmp_path / 's.db'}", "--revision", "nope")
    assert_one_line_error(result, 2, "'nope'", "(--revision)")


@pytest.mark.parametrize("command", [["migrate"], ["migrate", "--dry-run"], ["logs"], ["stats"]])
def test_unreachable_postgresql_is_one_line_without_the_password(command: list[str]) -> None:
    result = run(*command, "--db", UNREACHABLE_PG)
    line = assert_one_line_error(result, 1, "flywheel:***@127.0.0.1:1/flywheel")
    assert "s3cret-pw" not in result.output
    assert "port 1" in line


def test_a_store_file_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    url = f"sqlite:///{tmp_path / 'a-file' / 'store.db'}"
    assert_one_line_error(run("migrate", "--db", url), 1, "cannot create the store", url)


def test_reading_a_store_that_was_never_migrated(db_url: str) -> None:
    result = run("logs", "--db", db_url)
    assert_one_line_error(result, 1, "flywheel migrate")
    if db_url.startswith("sqlite"):
        assert not Path(db_url.removeprefix("sqlite:///")).exists()  # reading creates nothing
    with pytest.raises(StoreError):
        recent_calls(db_url)


def test_an_invalid_url_is_a_usage_error() -> None:
    assert_one_line_error(run("stats", "--db", "not a url"), 2, "--db")


# --- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--tag", "=classify"], ["'=classify'", "KEY=VALUE or KEY", "(--tag)"]),
        (["--min-latency", "-5"], ["-5", "greater than or equal to 0", "(--min-latency)"]),
        (["--max-tokens", "lots"], ["'lots'", "--max-tokens"]),
        (["--min-tokens", "50", "--max-tokens", "10"], ["50", "(--min-tokens/--max-tokens)"]),
        (["--min-completion-tokens", "-1"], ["(--min-completion-tokens)"]),
        (["--since", "yesterday"], ["'yesterday'", "30m", "(--since)"]),
        (["--until", "2024-02-30"], ["'2024-02-30'", "(--until)"]),
        (["--since", "1h", "--until", "2h"], ["(--since/--until)"]),
        (["--status", "fine"], ["--status", "'fine'"]),
        (["--limit", "0"], ["--limit"]),
        (["--no-such-option"], ["--no-such-option"]),
    ],
)
def test_bad_option_values_exit_2_with_one_line_naming_the_option(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    url = migrated(f"sqlite:///{tmp_path / 'store.db'}")
    assert_one_line_error(run("logs", "--db", url, *args), 2, *fragments)


def test_bad_group_key_names_the_option(tmp_path: Path) -> None:
    url = migrated(f"sqlite:///{tmp_path / 'store.db'}")
    assert_one_line_error(run("stats", "--db", url, "--by", "colour"), 2, "'colour'", "(--by)")


def test_unknown_command_is_one_line() -> None:
    assert_one_line_error(run("quickstrat"), 2, "quickstrat")


# --- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def store(db_url: str) -> tuple[str, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    url = migrated(db_url)
    insert_calls(
        url,
        [
            call_row(
                at=now - timedelta(minutes=5),
                prompt="Is this ticket about billing?\n  Yes or no.",
                reply="Yes",
                tags={"prompt_id": "classify", "env": "prod"},
                latency_ms=812.7,
                cost_usd=0.000125,
            ),
            call_row(
                at=now - timedelta(minutes=30), status=429, tags={"prompt_id": "classify", "env": "dev"}
            ),
            call_row(
                at=now - timedelta(hours=3),
                model="gpt-4o",
                prompt="Summarize: the meeting moved to Tuesday.",
                reply="Meeting now Tuesday.",
                latency_ms=2350.0,
                ttft_ms=310.0,
                cost_usd=None,
                tags={"prompt_id": "summarize"},
            ),
            call_row(at=now - timedelta(days=2), status=None, tags={"env": "prod"}),
        ],
    )
    return url, now


def test_logs_table_newest_first(store: tuple[str, datetime]) -> None:
    url, _ = store
    lines = ok("logs", "--db", url).stdout.splitlines()
    assert lines[0].split() == [
        "TIME",
        "(UTC)",
        "MODEL",
        "STATUS",
        "LATENCY",
        "TOKENS",
        "COST",
        "TAGS",
        "PREVIEW",
    ]
    assert len(lines) == 5
    assert "Is this ticket about billing? Yes or no. -> Yes" in lines[1]
    assert "env=prod,prompt_id=classify" in lines[1]
    assert "813ms" in lines[1] and "$0.000125" in lines[1]
    assert "error: Rate limit reached" in lines[2] and " 429 " in lines[2]
    assert "gpt-4o " in lines[3] and "2.35s" in lines[3]
    assert "ConnectTimeout" in lines[4]
    # Columns are aligned: every row starts the MODEL column at the same offset.
    assert {line.index("gpt-4o") for line in lines[1:]} == {lines[0].index("MODEL")}


def test_logs_json_lines_with_filters(store: tuple[str, datetime]) -> None:
    url, _ = store
    calls = json_lines(ok("logs", "--db", url, "--json"))
    assert len(calls) == 4
    assert [c["created_at"] for c in calls] == sorted((c["created_at"] for c in calls), reverse=True)
    assert calls[0]["created_at"].endswith("Z")
    first = calls[0]
    assert first["tags"] == {"env": "prod", "prompt_id": "classify"}
    assert first["status_code"] == 200
    assert (first["prompt_tokens"], first["completion_tokens"], first["total_tokens"]) == (12, 3, 15)
    assert first["input_preview"] == "Is this ticket about billing? Yes or no."
    assert first["output_preview"] == "Yes"
    assert "request" not in first

    tagged = json_lines(ok("logs", "--db", url, "--json", "--tag", "prompt_id=classify", "--tag", "env=prod"))
    assert [c["id"] for c in tagged] == [first["id"]]
    errors = json_lines(ok("logs", "--db", url, "--json", "--status", "error"))
    assert [c["status_code"] for c in errors] == [429, None]
    recent = json_lines(ok("logs", "--db", url, "--json", "--since", "1h"))
    assert len(recent) == 2
    window = json_lines(
        ok("logs", "--db", url, "--json", "--since", "1d", "--until", "10m", "--model", "gpt-4o")
    )
    assert [c["model"] for c in window] == ["gpt-4o"]
    assert json_lines(ok("logs", "--db", url, "--json", "--limit", "1")) == calls[:1]
    assert ok("logs", "--db", url, "--json", "--model", "nothing").stdout == ""


def test_logs_with_tag_presence_search_and_bounds(store: tuple[str, datetime]) -> None:
    url, _ = store

    def ids(*args: str) -> list[Any]:
        return [c["status_code"] for c in json_lines(ok("logs", "--db", url, "--json", *args))]

    assert ids("--tag", "env") == [200, 429, None]  # has the tag, any value
    assert ids("--tag", "env", "--tag", "prompt_id") == [200, 429]
    assert ids("--tag", "env=") == []  # the empty value, which no call has
    assert ids("--search", "TICKET about") == [200]
    assert ids("--search", "%") == []  # literal, not a wildcard
    assert ids("--search", "tuesday") == [200]  # found in the response of the gpt-4o call
    assert ids("--min-latency", "800", "--max-latency", "2350") == [200, 200]
    assert ids("--min-latency", "2000") == [200]
    assert ids("--max-tokens", "14") == []
    assert ids("--min-tokens", "15", "--max-tokens", "15", "--min-prompt-tokens", "12") == [200, 200]
    assert ids("--max-completion-tokens", "2") == []


def test_stats_accept_the_new_filters(store: tuple[str, datetime]) -> None:
    url, _ = store
    (group,) = json_lines(ok("stats", "--db", url, "--json", "--search", "billing", "--tag", "env"))
    assert group["model"] == "gpt-4o-mini" and group["calls"] == 1
    assert ok("stats", "--db", url, "--min-latency", "5000").stderr.strip() == "No calls match."


def test_logs_full_json_has_parsed_bodies(store: tuple[str, datetime]) -> None:
    url, _ = store
    first = json_lines(ok("logs", "--db", url, "--json", "--full", "--limit", "1"))[0]
    assert first["request"]["messages"][-1]["content"].startswith("Is this ticket")
    assert first["response"]["choices"][0]["message"]["content"] == "Yes"


def test_logs_with_nothing_to_show(store: tuple[str, datetime]) -> None:
    url, _ = store
    result = ok("logs", "--db", url, "--tag", "prompt_id=nothing")
    assert result.stdout == ""
    assert "No calls match" in result.stderr


def test_recent_calls_library(store: tuple[str, datetime]) -> None:
    url, now = store
    found = recent_calls(url, CallFilter(tags=(("env", "prod"),)), limit=10, full=True)
    assert [c["status_code"] for c in found] == [200, None]
    assert found[0]["created_at"] == now - timedelta(minutes=5)
    assert found[1]["error"] == "ConnectTimeout: timed out"
    assert found[1]["response"] is None and found[1]["output_preview"] is None


def test_previews_of_each_endpoint() -> None:
    chat_request = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "What is in"}, {"type": "image_url"}]},
        ]
    }
    assert input_preview("/chat/completions", chat_request) == "What is in [image]"
    tool_reply = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
                }
            }
        ]
    }
    assert output_preview("/chat/completions", tool_reply) == 'get_weather({"city":"Paris"})'
    assert output_preview(
        "/openai/deployments/d1/chat/completions", {"choices": [{"message": {"content": "ok"}}]}
    )
    assert input_preview("/responses", {"input": "Tell me a joke"}) == "Tell me a joke"
    assert (
        input_preview(
            "/responses",
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Describe"}]}]},
        )
        == "Describe"
    )
    response = {
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Why did the chicken..."}]},
        ],
    }
    assert output_preview("/responses", response) == "Why did the chicken..."
    assert input_preview("/completions", {"prompt": ["a", "Once upon"]}) == "[2 inputs] Once upon"
    assert output_preview("/completions", {"choices": [{"text": " a time"}]}) == "a time"
    assert input_preview("/embeddings", {"input": [1, 2, 3]}) == "[3 tokens]"
    assert (
        output_preview("/embeddings", {"data": [{"embedding": [0.1] * 8}] * 2})
        == "[2 embeddings, 8 dimensions]"
    )
    assert (
        output_preview("/chat/completions", {"error": {"message": "Invalid model"}}) == "error: Invalid model"
    )
    assert input_preview("/files", {"purpose": "fine-tune"}) is None
    assert input_preview("/chat/completions", "not json") is None
    long_text = input_preview("/responses", {"input": "word " * 100})
    assert long_text is not None and len(long_text) == 120 and long_text.endswith("…")


# --- stats ---------------------------------------------------------------------------------------


def test_stats_table_and_json(store: tuple[str, datetime]) -> None:
    url, _ = store
    lines = ok("stats", "--db", url).stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "CALLS", "ERRORS"]
    assert lines[1].split()[:4] == ["gpt-4o-mini", "3", "2", "(66.7%)"]
    assert lines[2].startswith("gpt-4o ")
    groups = json_lines(ok("stats", "--db", url, "--json", "--by", "tag:prompt_id", "--by", "model"))
    assert {(g["tag:prompt_id"], g["model"]): g["calls"] for g in groups} == {
        ("classify", "gpt-4o-mini"): 2,
        ("summarize", "gpt-4o"): 1,
        (None, "gpt-4o-mini"): 1,
    }
    summarize = next(g for g in groups if g["tag:prompt_id"] == "summarize")
    assert summarize["cost_usd"] is None and summarize["unpriced_calls"] == 1
    assert summarize["latency_ms_p50"] == 2350.0 and summarize["ttft_ms_p50"] == 310.0
    (errors,) = json_lines(ok("stats", "--db", url, "--json", "--status", "error", "--by", "endpoint"))
    assert errors == errors | {"endpoint": "/chat/completions", "calls": 2, "errors": 2, "error_rate": 1.0}


def test_stats_marks_a_partial_cost(db_url: str) -> None:
    url = migrated(db_url)
    now = datetime.now(UTC)
    insert_calls(url, [call_row(at=now, cost_usd=0.5), call_row(at=now, cost_usd=None)])
    result = ok("stats", "--db", url)
    assert "$0.5000*" in result.stdout
    assert "lower bound" in result.stdout


# --- mock-server ---------------------------------------------------------------------------------


def test_mock_server_prints_the_base_url_then_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import flywheel.mock_server

    served: list[dict[str, Any]] = []
    monkeypatch.setattr(flywheel.mock_server, "serve", lambda **kwargs: served.append(kwargs))
    result = ok("mock-server", "--port", "9123", "--latency-ms", "25", "--error-rate", "0.1")
    assert served == [
        {
            "host": "127.0.0.1",
            "port": 9123,
            "latency_ms": 25.0,
            "error_rate": 0.1,
            "fine_tune": FineTuneTiming(),
        }
    ]
    assert "http://127.0.0.1:9123/v1" in result.stdout.splitlines()[0]
    assert "OPENAI_BASE_URL=http://127.0.0.1:9123/v1 " in result.stdout


def test_mock_server_rejects_an_error_rate_above_one() -> None:
    assert_one_line_error(run("mock-server", "--error-rate", "1.5"), 2, "--error-rate")
