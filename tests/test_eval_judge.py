"""The pairwise LLM judge: the protocol's pure functions by hand-checked cases, then ``judge_pairs``
against a real judge server on 127.0.0.1 (through the real ``sdk.AsyncOpenAI``, recorded into the
store), on SQLite and PostgreSQL: seeded and stored orders, identical outputs costing no call
(counted at the server), the bias sample in both orders, position agreement and its warning,
resuming without asking twice, and a judge that refuses (401)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
import sqlalchemy as sa

import sdk
from flywheel.evaluate.candidates import Candidate
from flywheel.evaluate.examples import Example
from flywheel.evaluate.intervals import wilson
from flywheel.evaluate.judge.judging import (
    TAG_JUDGE,
    JudgeError,
    JudgePair,
    JudgeTally,
    judge_pairs,
    judge_run_async,
    judgments_of,
)
from flywheel.evaluate.judge.protocol import (
    JUDGE_SYSTEM_PROMPT,
    MIN_POSITION_AGREEMENT,
    Judgment,
    Order,
    Verdict,
    VerdictError,
    bias_sample,
    candidate_verdict,
    default_bias_size,
    judge_messages,
    judge_summaries,
    judge_summary,
    parse_verdict,
    same_answer,
    shown_first,
    verdict_without_judge,
)
from flywheel.query import connect
from sdk._migrate import upgrade
from sdk.schema import call_tags, calls, datasets, eval_judgments, eval_outputs, eval_runs, exports

T0 = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
SEED = 1234
CANDIDATE = "gpt-4o-mini"
JUDGE = "judge-model"


def answer(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def tool_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- pure: the verdict -------------------------------------------------------------------------------


def test_parse_verdict_reads_plain_fenced_and_surrounded_json() -> None:
    assert parse_verdict('{"reasoning": "B is right", "winner": "B"}') == ("B", "B is right")
    fenced = 'Here it is:\n```json\n{"reasoning": " A follows the format ", "winner": "a"}\n```\nDone.'
    assert parse_verdict(fenced) == ("A", "A follows the format")
    assert parse_verdict('My verdict: {"winner": "TIE", "reasoning": "same"} (final)') == ("tie", "same")
    assert parse_verdict('```\n{"winner": "tie"}\n```') == ("tie", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("A is better", "no JSON object"),
        ('["A"]', "no JSON object"),
        ('{"reasoning": "x"}', '"winner" must be'),
        ('{"winner": "C"}', '"winner" must be'),
        ('{"winner": 1}', '"winner" must be'),
    ],
)
def test_parse_verdict_rejects_anything_else_clearly(text: str | None, message: str) -> None:
    with pytest.raises(VerdictError, match=message):
        parse_verdict(text)


def test_candidate_verdict_maps_the_position_back_to_the_candidate() -> None:
    assert candidate_verdict("candidate", "A") == "win"
    assert candidate_verdict("candidate", "B") == "loss"
    assert candidate_verdict("opponent", "A") == "loss"
    assert candidate_verdict("opponent", "B") == "win"
    assert candidate_verdict("opponent", "tie") == candidate_verdict("candidate", "tie") == "tie"


# --- pure: order and bias sample ---------------------------------------------------------------------


def test_shown_first_is_a_fixed_fair_coin_per_item() -> None:
    ids = [f"{n:032x}" for n in range(2000)]
    orders = [shown_first(SEED, call_id, CANDIDATE, "reference") for call_id in ids]
    assert orders == [shown_first(SEED, call_id, CANDIDATE, "reference") for call_id in ids]
    assert 0.45 < orders.count("candidate") / len(ids) < 0.55
    # Another seed, candidate or opponent flips about half of the coins.
    for other in (
        [shown_first(SEED + 1, call_id, CANDIDATE, "reference") for call_id in ids],
        [shown_first(SEED, call_id, "ft:gpt-4o-mini:acme::x", "reference") for call_id in ids],
        [shown_first(SEED, call_id, CANDIDATE, "gpt-4o") for call_id in ids],
    ):
        flipped = sum(a != b for a, b in zip(orders, other, strict=True))
        assert 0.4 < flipped / len(ids) < 0.6


def test_bias_sample_is_seeded_order_free_and_nested() -> None:
    ids = [f"item-{n}" for n in range(50)]
    sample = bias_sample(SEED, ids, 10)
    assert len(sample) == 10 and sample <= set(ids)
    assert bias_sample(SEED, reversed(ids), 10) == sample
    assert bias_sample(SEED, ids, 15) > sample
    assert bias_sample(SEED + 1, ids, 10) != sample
    assert bias_sample(SEED, ids[:4], 10) == frozenset(ids[:4])
    assert bias_sample(SEED, ids, 0) == frozenset()


def test_default_bias_size_is_a_fifth_at_least_ten() -> None:
    assert [default_bias_size(n) for n in (0, 4, 10, 40, 50, 51, 200)] == [0, 4, 10, 10, 10, 11, 40]
    assert default_bias_size(40, 0.5) == 20


# --- pure: answers that need no judge ----------------------------------------------------------------


def test_same_answer_canonicalizes_json_text_and_tool_calls() -> None:
    assert same_answer(
        answer('{"label": "refund", "n": [1, 2]}'), answer(' {"n":[1,2],\n "label":"refund"} ')
    )
    assert same_answer(answer("  Refund issued.\n"), answer("Refund issued."))
    assert not same_answer(answer("Refund issued."), answer("refund issued."))
    assert not same_answer(answer("1"), answer("1.0"))  # only objects and arrays are parsed
    assert not same_answer(answer('{"label": "refund"}'), answer('{"label": "shipping"}'))
    assert same_answer(answer(None), answer(""))
    lookup = tool_call("lookup", '{"order": 7, "full": true}', "call_a")
    assert same_answer(
        answer(None, [lookup]), answer("", [tool_call("lookup", '{"full":true,"order":7}', "b")])
    )
    assert not same_answer(answer(None, [lookup]), answer(None, [tool_call("lookup", '{"order": 8}')]))
    assert not same_answer(
        answer(None, [lookup]), answer(None, [tool_call("find", '{"order": 7, "full": true}')])
    )
    assert not same_answer(answer(None, [lookup]), answer(None))
    assert same_answer(None, None)
    assert not same_answer(None, answer(""))


def test_verdict_without_judge_for_identical_and_missing_answers() -> None:
    assert verdict_without_judge(answer(" yes "), answer("yes")) == ("tie", True, "the answers are the same")
    assert verdict_without_judge(None, None) == ("tie", True, "neither side gave an answer")
    assert verdict_without_judge(None, answer("yes")) == ("loss", False, "the candidate gave no answer")
    assert verdict_without_judge(answer("yes"), None) == ("win", False, "the opponent gave no answer")
    assert verdict_without_judge(answer("yes"), answer("no")) is None


def test_judge_messages_show_the_conversation_tools_and_both_answers_in_order() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    conversation: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": [{"type": "text", "text": "Where is order 7?"}, {"type": "image_url"}]},
    ]
    first, second = answer('{"where": "depot"}'), answer(None, [tool_call("lookup", '{"order": 7}')])
    system, user = judge_messages(conversation, tools, first, second)
    assert system == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert '"reasoning"' in JUDGE_SYSTEM_PROMPT and '"winner"' in JUDGE_SYSTEM_PROMPT
    assert JUDGE_SYSTEM_PROMPT.index('"reasoning"') < JUDGE_SYSTEM_PROMPT.index('"winner"')
    assert "longer or shorter" in JUDGE_SYSTEM_PROMPT and "shown first or second" in JUDGE_SYSTEM_PROMPT
    text = user["content"]
    assert user["role"] == "user"
    assert text.index("### system\nAnswer in JSON.") < text.index("### user\nWhere is order 7?\n[image_url]")
    assert '"name": "lookup"' in text.split("<tools>")[1].split("</tools>")[0]
    assert text.split("<answer_A>\n")[1].split("\n</answer_A>")[0] == '{"where": "depot"}'
    assert text.split("<answer_B>\n")[1].split("\n</answer_B>")[0] == '(tool call) lookup({"order": 7})'
    assert "<tools>" not in judge_messages(conversation, None, first, None)[1]["content"]
    assert (
        "<answer_B>\n(no answer)\n</answer_B>"
        in judge_messages(conversation, None, first, None)[1]["content"]
    )


# --- pure: the summary -------------------------------------------------------------------------------


def seeded_rows(verdicts: Mapping[str, tuple[str, str | None]]) -> list[Judgment]:
    """Rows for items ``call_id -> (verdict in the seeded order, verdict in the other order or None)``."""
    rows = []
    for call_id, (seeded, other) in verdicts.items():
        order = shown_first(SEED, call_id, CANDIDATE, "reference")
        rows.append(Judgment(CANDIDATE, "reference", call_id, order, cast(Verdict, seeded)))
        if other is not None:
            rows.append(Judgment(CANDIDATE, "reference", call_id, flip(order), cast(Verdict, other)))
    return rows


def flip(order: Order) -> Order:
    return "opponent" if order == "candidate" else "candidate"


def test_judge_summary_counts_the_seeded_order_and_the_agreement_hand_checked() -> None:
    rows = seeded_rows(
        {
            "a": ("win", "win"),  # agrees
            "b": ("tie", "tie"),  # agrees
            "c": ("win", "tie"),  # a tie agrees only with a tie
            "d": ("loss", "win"),  # disagrees; the seeded loss counts
            "e": ("loss", None),
            "f": ("tie", None),
        }
    )
    # An item judged only in its other order (its seeded call failed) still counts, once.
    order = shown_first(SEED, "g", CANDIDATE, "reference")
    rows.append(Judgment(CANDIDATE, "reference", "g", flip(order), "win"))
    summary = judge_summary(rows, SEED)
    assert (summary.wins, summary.ties, summary.losses, summary.n) == (3, 2, 2, 7)
    assert summary.position_agreement == wilson(2, 4)
    assert summary.warning is not None and "position agreement 0.50 is below 0.8" in summary.warning
    assert summary.as_dict() == {
        "opponent": "reference",
        "wins": {"count": 3, **wilson(3, 7).as_dict()},
        "ties": {"count": 2, **wilson(2, 7).as_dict()},
        "losses": {"count": 2, **wilson(2, 7).as_dict()},
        "position_agreement": wilson(2, 4).as_dict(),
    }
    assert summary.as_dict()["wins"]["value"] == round(3 / 7, 6)


def test_judge_summary_without_a_bias_sample_and_with_full_agreement() -> None:
    alone = judge_summary(seeded_rows({"a": ("win", None), "b": ("loss", None)}), SEED)
    assert alone.position_agreement is None and alone.warning is None
    assert alone.as_dict()["position_agreement"] is None
    agreeing = judge_summary(seeded_rows({f"i{n}": ("win", "win") for n in range(5)}), SEED)
    assert agreeing.position_agreement == wilson(5, 5) and agreeing.warning is None
    four_of_five = {**{f"i{n}": ("win", "win") for n in range(4)}, "x": ("win", "loss")}
    edge = judge_summary(seeded_rows(four_of_five), SEED)
    assert edge.position_agreement is not None and edge.position_agreement.value == MIN_POSITION_AGREEMENT
    assert edge.warning is None  # warned only below the threshold
    with pytest.raises(ValueError, match="exactly one pair"):
        judge_summary([], SEED)
    other = Judgment("ft:x", "reference", "a", "candidate", "win")
    with pytest.raises(ValueError, match="exactly one pair"):
        judge_summary([*seeded_rows({"a": ("win", None)}), other], SEED)
    assert set(judge_summaries([*seeded_rows({"a": ("win", None)}), other], SEED)) == {
        (CANDIDATE, "reference"),
        ("ft:x", "reference"),
    }


# --- a real judge on 127.0.0.1 ------------------------------------------------------------------------

Policy = Callable[[str, str, str], "str | int"]
"""(conversation, answer A, answer B) -> the reply's content, or an HTTP error status."""
_PART = re.compile(r"<(conversation|answer_A|answer_B)>\n(.*?)\n</\1>", re.DOTALL)


class JudgeServer:
    """An OpenAI-compatible judge: answers each chat completion with ``policy``'s verdict and keeps
    every request (body, and what was shown as conversation, A and B)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.bodies: list[dict[str, Any]] = []
        self.shown: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = dict(_PART.findall(body["messages"][-1]["content"]))
                shown = (parts["conversation"], parts["answer_A"], parts["answer_B"])
                with server.lock:
                    server.bodies.append(body)
                    server.shown.append(shown)
                    reply = server.policy(*shown)
                if isinstance(reply, int):
                    status, payload = reply, {"error": {"message": f"refused ({reply})", "type": "error"}}
                else:
                    status, payload = 200, completion(body["model"], reply)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.bodies)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join()


def completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-judge",
        "object": "chat.completion",
        "created": int(T0.timestamp()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }


def verdict(winner: str, reasoning: str = "judged") -> str:
    return json.dumps({"reasoning": reasoning, "winner": winner})


# Twelve tickets; TRUTH is the right label. The reference is wrong on tickets 8 and 9.
TRUTH = {n: ("refund", "shipping", "billing")[n % 3] for n in range(12)}
WRONG = {"refund": "shipping", "shipping": "billing", "billing": "refund"}


def ticket_of(conversation: str) -> int:
    found = re.search(r"Ticket (\d+):", conversation)
    assert found is not None, conversation
    return int(found.group(1))


def knows_the_label(conversation: str, a: str, b: str) -> str | int:
    """A consistent judge: prefers the answer holding the right label; a code fence now and then."""
    label = f'"{TRUTH[ticket_of(conversation)]}"'
    winner = "tie" if (label in a) == (label in b) else ("A" if label in a else "B")
    text = verdict(winner, f"the right label is {label}")
    return f"```json\n{text}\n```" if ticket_of(conversation) % 2 else text


def always_a(conversation: str, a: str, b: str) -> str | int:
    return verdict("A", "the first answer is better")


def call_id_of(n: int) -> str:
    return f"{n:032x}"


def make_pairs() -> list[JudgePair]:
    """Tickets 0-2: the same answer as the reference (spaced differently); 3: no answer; 4-7: a
    wrong label; 8-9: right where the reference is wrong; 10-11: right, with an extra key."""
    pairs = []
    for n, label in TRUTH.items():
        reference_label = WRONG[label] if n in (8, 9) else label
        reference = answer(json.dumps({"label": reference_label}))
        output: dict[str, Any] | None
        if n <= 2:
            output = answer(f'  {{ "label":"{label}" }}\n')
        elif n == 3:
            output = None
        elif n <= 7:
            output = answer(json.dumps({"label": WRONG[label]}))
        elif n <= 9:
            output = answer(json.dumps({"label": label}))
        else:
            output = answer(json.dumps({"label": label, "confidence": 0.9}))
        messages = [
            {"role": "system", "content": 'Classify the ticket. Reply {"label": ...}.'},
            {"role": "user", "content": f"Ticket {n}: something about my order"},
        ]
        pairs.append(JudgePair(call_id_of(n), CANDIDATE, "reference", messages, None, output, reference))
    return pairs


def n_of(pair: JudgePair) -> int:
    return int(pair.call_id, 16)


JUDGED = range(4, 12)
"""The tickets that need the judge (the others are decided without a call)."""


@pytest.fixture
def store(db_url: str) -> Iterator[str]:
    upgrade(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        dataset_id = conn.execute(
            sa.insert(datasets)
            .values(name="classify", created_at=T0, filter="{}", settings="{}", version=1)
            .returning(datasets.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(exports).values(
                dataset_id=dataset_id, version=1, created_at=T0, out_dir="x", manifest="{}"
            )
        )
    engine.dispose()
    yield db_url


def new_run(db_url: str, run_id: str) -> str:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        dataset_id, export_id = conn.execute(sa.select(exports.c.dataset_id, exports.c.id)).one()
        conn.execute(
            sa.insert(eval_runs).values(
                id=run_id,
                pipeline="classify",
                dataset_id=dataset_id,
                dataset_version=1,
                export_id=export_id,
                status="running",
                candidates="[]",
                judge=JUDGE,
                seed=SEED,
                settings="{}",
                examples=12,
                created_at=T0,
                updated_at=T0,
            )
        )
    engine.dispose()
    return run_id


def judge(
    db_url: str, server: JudgeServer, run_id: str, pairs: list[JudgePair], **options: Any
) -> JudgeTally:
    """``judge_pairs`` through a recording ``sdk.AsyncOpenAI`` pointed at ``server``."""
    options.setdefault("bias_size", 4)

    async def go() -> JudgeTally:
        client = sdk.AsyncOpenAI(
            api_key="sk-test", base_url=server.base_url, database_url=db_url, max_retries=0
        )
        try:
            with connect(db_url) as conn:
                return await judge_pairs(
                    conn, client, run_id=run_id, judge_model=JUDGE, pairs=pairs, seed=SEED, now=T0, **options
                )
        finally:
            await client.close()

    return asyncio.run(go())


def stored(db_url: str, run_id: str) -> list[dict[str, Any]]:
    assert sdk.flush(timeout=30)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            j = eval_judgments.c
            return [
                dict(row._mapping)
                for row in conn.execute(
                    sa.select(eval_judgments).where(j.run_id == run_id).order_by(j.call_id, j.shown_first)
                )
            ]
    finally:
        engine.dispose()


@pytest.fixture
def servers() -> Iterator[Callable[[Policy], JudgeServer]]:
    started: list[JudgeServer] = []

    def start(policy: Policy) -> JudgeServer:
        started.append(JudgeServer(policy))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_orders_are_seeded_mixed_and_stored_identical_outputs_cost_no_call_and_bias_runs_both_ways(
    store: str, servers: Callable[[Policy], JudgeServer]
) -> None:
    server = servers(knows_the_label)
    run_id = new_run(store, "a" * 32)
    pairs = make_pairs()
    tally = judge(store, server, run_id, pairs)
    rows = stored(store, run_id)
    sample = bias_sample(SEED, [call_id_of(n) for n in JUDGED], 4)

    # Every item has its seeded order stored; the orders are mixed.
    seeded = {call_id_of(n): shown_first(SEED, call_id_of(n), CANDIDATE, "reference") for n in TRUTH}
    by_key = {(row["call_id"], row["shown_first"]): row for row in rows}
    assert all((call_id, order) in by_key for call_id, order in seeded.items())
    assert {seeded[call_id_of(n)] for n in JUDGED} == {"candidate", "opponent"}
    # The bias sample, and only it, has the other order too.
    both_orders = {
        call_id for call_id, order in by_key if order == "opponent" and (call_id, "candidate") in by_key
    }
    assert both_orders == sample
    assert len(rows) == 12 + 4

    # Identical outputs and the missing one: rows with no call; the server never saw those tickets.
    for n in range(4):
        (row,) = [row for row in rows if row["call_id"] == call_id_of(n)]
        assert (row["verdict"], row["identical"], row["judge_call_id"]) == (
            ("tie", True, None) if n <= 2 else ("loss", False, None)
        )
    assert server.requests == len(JUDGED) + len(sample) == 12
    assert sorted({ticket_of(conversation) for conversation, _, _ in server.shown}) == list(JUDGED)
    assert (tally.judged, tally.decided, tally.stored_before, tally.failed, tally.bias_items) == (
        12,
        4,
        0,
        0,
        4,
    )

    # What the server was shown follows the stored order; the bias items were shown both ways.
    outputs = {
        pair.call_id: (pair.candidate_output or {})["content"] for pair in pairs if n_of(pair) in JUDGED
    }
    shown_as_a: dict[str, list[bool]] = {}
    for conversation, a, _ in server.shown:
        call_id = call_id_of(ticket_of(conversation))
        shown_as_a.setdefault(call_id, []).append(a == outputs[call_id])
    for call_id, seen in shown_as_a.items():
        if call_id in sample:
            assert sorted(seen) == [False, True]
        else:
            assert seen == [seeded[call_id] == "candidate"]

    # The request: the judge model, temperature 0, a JSON object; the verdicts are the judge's.
    assert {(b["model"], b["temperature"], json.dumps(b["response_format"])) for b in server.bodies} == {
        (JUDGE, 0, '{"type": "json_object"}')
    }
    expected = {4: "loss", 5: "loss", 6: "loss", 7: "loss", 8: "win", 9: "win", 10: "tie", 11: "tie"}
    for row in rows:
        n = int(row["call_id"], 16)
        if n in JUDGED:
            assert row["verdict"] == expected[n] and not row["identical"]
            assert row["reasoning"] == f'the right label is "{TRUTH[n]}"'
            assert row["created_at"].replace(tzinfo=UTC) == T0

    # Each asked row names its recorded judge call, tagged with the run and the candidate.
    engine = sa.create_engine(store)
    with engine.connect() as conn:
        tag_rows = conn.execute(sa.select(call_tags.c.call_id, call_tags.c.key, call_tags.c.value))
        tags = {(call_id, key): value for call_id, key, value in tag_rows}
        recorded = set(conn.execute(sa.select(calls.c.id)).scalars())
    engine.dispose()
    judge_call_ids = [row["judge_call_id"] for row in rows if int(row["call_id"], 16) in JUDGED]
    assert len(set(judge_call_ids)) == 12 and set(judge_call_ids) <= recorded
    for call_id in judge_call_ids:
        assert tags[(call_id, "flywheel_eval")] == run_id and tags[(call_id, TAG_JUDGE)] == CANDIDATE

    # A consistent judge agrees with itself in both orders: agreement 1.0, no warning.
    with connect(store) as conn:
        summary = judge_summary(judgments_of(conn, run_id), SEED)
    assert (summary.wins, summary.ties, summary.losses) == (2, 3 + 2, 4 + 1)
    assert summary.position_agreement == wilson(4, 4) and summary.warning is None


def test_a_position_biased_judge_gets_low_agreement_and_the_warning(
    store: str, servers: Callable[[Policy], JudgeServer]
) -> None:
    server = servers(always_a)
    run_id = new_run(store, "b" * 32)
    judge(store, server, run_id, make_pairs())
    with connect(store) as conn:
        summary = judge_summary(judgments_of(conn, run_id), SEED)
    # "Always A" gives the candidate a win exactly where it was shown first.
    orders = [shown_first(SEED, call_id_of(n), CANDIDATE, "reference") for n in JUDGED]
    assert summary.wins == orders.count("candidate") and summary.losses == orders.count("opponent") + 1
    assert summary.position_agreement == wilson(0, 4)
    assert summary.position_agreement.value < MIN_POSITION_AGREEMENT
    assert summary.warning is not None and "position agreement 0.00 is below 0.8" in summary.warning


def test_a_restart_asks_only_for_what_is_missing(
    store: str, servers: Callable[[Policy], JudgeServer]
) -> None:
    flaky_tickets = {5, 8}

    def flaky(conversation: str, a: str, b: str) -> str | int:
        if ticket_of(conversation) in flaky_tickets:
            return 503
        if ticket_of(conversation) == 6:
            return "I would pick A."  # no verdict
        return knows_the_label(conversation, a, b)

    first = servers(flaky)
    run_id = new_run(store, "c" * 32)
    pairs = make_pairs()
    tally = judge(store, first, run_id, pairs, concurrency=3)
    sample = bias_sample(SEED, [call_id_of(n) for n in JUDGED], 4)
    missing = [n for n in (*flaky_tickets, 6) for _ in range(2 if call_id_of(n) in sample else 1)]
    assert tally.failed == len(missing) and first.requests == 12
    reasons = {failure.reason for failure in tally.failures}
    assert any("HTTP 503" in reason for reason in reasons)
    assert any("holds no JSON object" in reason for reason in reasons)
    before = stored(store, run_id)
    assert len(before) == 16 - len(missing)

    second = servers(knows_the_label)
    again = judge(store, second, run_id, pairs, concurrency=3)
    assert second.requests == len(missing)
    assert sorted(ticket_of(conversation) for conversation, _, _ in second.shown) == sorted(missing)
    assert (again.judged, again.decided, again.stored_before, again.failed) == (
        len(missing),
        0,
        len(before),
        0,
    )
    after = stored(store, run_id)
    assert len(after) == 16
    kept = {(row["call_id"], row["shown_first"]) for row in before}
    assert [row for row in after if (row["call_id"], row["shown_first"]) in kept] == before

    third = servers(knows_the_label)
    assert judge(store, third, run_id, pairs).stored_before == 16
    assert third.requests == 0 and stored(store, run_id) == after


def test_a_judge_answering_401_stops_with_judge_error_and_keeps_earlier_rows(
    store: str, servers: Callable[[Policy], JudgeServer]
) -> None:
    run_id = new_run(store, "d" * 32)
    pairs = make_pairs()
    good = servers(knows_the_label)
    judge(store, good, run_id, pairs[:6], bias_size=0)
    before = stored(store, run_id)
    assert len(before) == 6 and good.requests == 2

    refusing = servers(lambda conversation, a, b: 401)
    with pytest.raises(JudgeError) as raised:
        judge(store, refusing, run_id, pairs, concurrency=2)
    assert raised.value.where == "--judge" and "HTTP 401" in raised.value.message
    assert refusing.requests <= 2  # the calls in flight when the first 401 came back, no more
    after = stored(store, run_id)
    assert after == before  # nothing stored is lost, nothing half-written


def test_judge_run_judges_each_candidates_stored_outputs_against_the_reference(
    store: str, servers: Callable[[Policy], JudgeServer]
) -> None:
    server = servers(knows_the_label)
    run_id = new_run(store, "e" * 32)
    pairs = make_pairs()
    examples = [
        Example(
            pair.call_id, {"model": "m", "messages": list(pair.messages)}, dict(pair.opponent_output or {})
        )
        for pair in pairs
    ]
    tuned = Candidate("ft:gpt-4o-mini:acme::x", "ft:gpt-4o-mini:acme::x", fine_tuned=True)
    rows = [
        {"candidate": CANDIDATE, "call_id": pair.call_id, "output": pair.candidate_output, "error": None}
        for pair in pairs
    ]
    # The tuned model: the reference's answer on ticket 4, errored on 5, not answered yet on the others.
    same_as_reference = answer(json.dumps({"label": TRUTH[4]}), None)
    rows += [
        {"candidate": tuned.name, "call_id": call_id_of(4), "output": same_as_reference, "error": None},
        {"candidate": tuned.name, "call_id": call_id_of(5), "output": None, "error": "HTTP 400"},
    ]
    engine = sa.create_engine(store)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(eval_outputs),
            [
                {
                    **row,
                    "run_id": run_id,
                    "output": json.dumps(row["output"]) if row["output"] is not None else None,
                    "created_at": T0,
                }
                for row in rows
            ],
        )
    engine.dispose()

    async def go() -> JudgeTally:
        client = sdk.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, database_url=store)
        try:
            with connect(store) as conn:
                return await judge_run_async(
                    conn, client, run_id=run_id, judge_model=JUDGE, examples=examples,
                    candidates=[Candidate(CANDIDATE, CANDIDATE), tuned], seed=SEED, bias_fraction=0.2,
                )  # fmt: skip
        finally:
            await client.close()

    tally = asyncio.run(go())
    with connect(store) as conn:
        summaries = judge_summaries(judgments_of(conn, run_id), SEED)
    # 12 examples: the bias sample is at least 10, so every judged item of gpt-4o-mini runs both ways.
    mini = summaries[(CANDIDATE, "reference")]
    assert (mini.wins, mini.ties, mini.losses) == (2, 5, 5)
    assert mini.position_agreement == wilson(8, 8)
    assert (tally.bias_items, tally.judged, tally.decided, tally.failed) == (8, 16, 4 + 2, 0)
    assert server.requests == 16
    ft = summaries[(tuned.name, "reference")]
    assert (ft.wins, ft.ties, ft.losses, ft.n) == (0, 1, 1, 2)  # same as the reference on 4; no answer on 5
