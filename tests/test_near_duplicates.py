"""Near-duplicate clusters: templated near-copies cluster, distinct inputs and shared boilerplate don't."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from flywheel import near_duplicates
from flywheel.near_duplicates import (
    DEFAULT_THRESHOLD,
    Boilerplate,
    choose_representative,
    input_text,
    learn_boilerplate,
    lsh_bands,
    near_duplicate_clusters,
)

SYSTEM = "\n".join(
    [
        "You are the ticket triage assistant of Acme Parcel Services.",
        "Read the customer's ticket and answer with exactly one queue name.",
        "Queues: billing, delivery, damage, returns, account, other.",
        "Use billing for charges, invoices, refunds of fees and payment methods.",
        "Use delivery for late, missing or misrouted parcels and tracking questions.",
        "Use damage for parcels that arrived broken, wet, opened or incomplete.",
        "Answer other when none fits. Never explain your answer.",
    ]
)

TICKETS = [
    "My parcel 4417 arrived completely soaked and the book inside is ruined, I would like a replacement.",
    "I was charged twice for the express shipping fee on my last order, please refund one charge.",
    "The tracking page has said 'out for delivery' for four days now and nothing has arrived yet.",
    "How do I change the email address on my account? The old one belongs to my former employer.",
    "The courier left my package at the wrong house two streets away and the neighbours are on holiday.",
    "I want to send back the boots I ordered last week because they are a size too small.",
    "Can I pay for my shipments with a bank transfer instead of a credit card from now on?",
    "Your driver threw the box over the fence and the lamp inside is cracked in three places.",
    "I never received the invoice for March and my accountant needs it before Friday.",
    "Please stop sending me text messages about every single parcel, email is enough for me.",
    "The return label you emailed me does not scan at the post office, could you send a new one?",
    "Somebody opened my parcel before it reached me, the seal was broken and a charger is missing.",
    "Why is my delivery to Lyon taking three weeks when the website promised five working days?",
    "I forgot my password and the reset link expires before it even reaches my inbox.",
    "The customs fee you charged me is higher than the amount shown on the official receipt.",
    "My order was split into two parcels and only the first one ever showed up at my door.",
    "Do you deliver on Sundays to rural addresses in the north of Scotland?",
    "The parcel was delivered to a locker but the code in the notification does not open it.",
    "I moved house last month; how can I update my default delivery address for all future orders?",
    "A glass vase arrived in pieces even though the box was marked fragile on every side.",
]

NEAR_COPIES = {
    # index of the original ticket -> copies with a word or two changed, or case and punctuation
    0: [
        "My parcel 4417 arrived completely soaked and the novel inside is ruined, "
        "I would like a replacement.",
        "my parcel 4417 arrived completely soaked and the book inside is ruined - I would like a refund.",
    ],
    4: ["The courier left my parcel at the wrong house two streets away and the neighbours are on vacation."],
    12: ["Why is my delivery to Lyon taking three weeks when the website promised five business days?!"],
}


def ticket_input(ticket: str) -> str:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Classify this ticket:\n{ticket}"},
    ]
    return input_text(messages)


def dataset() -> list[tuple[str, str]]:
    """Originals ``t00``..``t19`` followed by the near-copies ``t00-a``, ``t00-b``, ..."""
    items = [(f"t{index:02d}", ticket_input(ticket)) for index, ticket in enumerate(TICKETS)]
    for index, copies in NEAR_COPIES.items():
        items += [(f"t{index:02d}-{'ab'[n]}", ticket_input(copy)) for n, copy in enumerate(copies)]
    return items


EXPECTED = [["t00", "t00-a", "t00-b"], ["t04", "t04-a"], ["t12", "t12-a"]]


def as_sets(clusters: list[list[Any]]) -> set[frozenset[Any]]:
    return {frozenset(cluster) for cluster in clusters}


# --- input_text -----------------------------------------------------------------------------------


def test_input_text_joins_message_texts_tool_calls_and_tool_names() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Weather in"}, {"type": "text", "text": "Oslo?"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    assert input_text(messages, tools) == "Be brief.\nWeather in\nOslo?\nweather {}\nrain\ntool weather"


def test_input_text_tells_apart_inputs_that_differ_only_in_an_image() -> None:
    def with_image(url: str) -> str:
        parts = [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        return input_text([{"role": "user", "content": parts}])

    first, second = with_image("https://example.test/a.png"), with_image("https://example.test/b.png")
    assert first != second
    assert first == with_image("https://example.test/a.png")
    assert first.startswith("What is in this picture?\n[image_url ")


# --- clusters -------------------------------------------------------------------------------------


def test_templated_near_copies_cluster_and_distinct_tickets_do_not() -> None:
    assert near_duplicate_clusters(dataset()) == EXPECTED


def test_a_long_shared_system_prompt_does_not_make_everything_cluster() -> None:
    learned = learn_boilerplate(text for _, text in dataset())
    assert set(SYSTEM.split("\n")) | {"Classify this ticket:"} <= learned.lines
    # Compared with the system prompt left in, distinct tickets look alike: the boilerplate matters.
    unstripped = near_duplicate_clusters(dataset(), boilerplate=Boilerplate())
    assert max(len(cluster) for cluster in unstripped) > len(TICKETS) // 2
    assert near_duplicate_clusters(dataset(), boilerplate=learned) == EXPECTED


def test_template_words_inside_a_line_are_boilerplate_too() -> None:
    phrases = ["good morning", "see you soon", "thank you", "where is the station", "I am hungry"]
    phrases += ["it is raining", "happy birthday Anna", "the bill please", "nice to meet you", "good night"]
    template = (
        "Translate into formal German and keep every name unchanged, answer with the translation only: {}"
    )
    items = [
        (phrase, input_text([{"role": "user", "content": template.format(phrase)}])) for phrase in phrases
    ]
    assert near_duplicate_clusters(items) == []
    # The template's words would otherwise make every request look like every other.
    assert len(near_duplicate_clusters(items, boilerplate=Boilerplate())[0]) == len(phrases)


def test_threshold_is_configurable() -> None:
    base = "Please refund the shipping fee for order 5531, the parcel came a week late."
    one_edit = "Please refund the delivery fee for order 5531, the parcel came a week late."  # Jaccard 0.75
    two_edits = "Please refund the delivery fee for order 5531, the parcel came two weeks late."  # 0.47
    none = Boilerplate()
    assert near_duplicate_clusters([("a", base), ("b", one_edit)], boilerplate=none) == [["a", "b"]]
    assert near_duplicate_clusters([("a", base), ("b", one_edit)], boilerplate=none, threshold=0.9) == []
    assert near_duplicate_clusters([("a", base), ("c", two_edits)], boilerplate=none, threshold=0.3) == [
        ["a", "c"]
    ]
    assert near_duplicate_clusters([("a", base), ("c", two_edits)], boilerplate=none, threshold=0.8) == []
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_clusters([("a", base)], threshold=0)


def test_lsh_bands_keep_recall_at_the_threshold() -> None:
    assert lsh_bands(DEFAULT_THRESHOLD) == (42, 3)
    for threshold in (0.3, 0.5, 0.7, 0.9, 1.0):
        bands, rows = lsh_bands(threshold)
        assert bands * rows <= near_duplicates.NUM_BINS
        assert 1 - (1 - threshold**rows) ** bands >= 0.95
    assert lsh_bands(0.9)[1] > lsh_bands(0.5)[1]


def test_copies_cluster_at_any_threshold_including_ones_that_differ_in_case_and_punctuation() -> None:
    items = [("a", "Hello, World!"), ("b", "hello world"), ("c", "Goodbye, world."), ("d", "HELLO   world?")]
    items += [("e", "Grüße, Jürgen!"), ("f", "grüße jürgen"), ("g", "Grüße, Jörg!")]
    clusters = near_duplicate_clusters(items, boilerplate=Boilerplate(), threshold=1.0)
    assert clusters == [["a", "b", "d"], ["e", "f"]]


def test_an_input_that_is_all_boilerplate_matches_only_its_copies() -> None:
    items = dataset()
    bare = ticket_input("")
    items += [
        ("bare-1", bare),
        ("other-bare", input_text([{"role": "system", "content": SYSTEM}])),
        ("bare-2", bare),
    ]
    assert near_duplicate_clusters(items) == [*EXPECTED, ["bare-1", "bare-2"]]


# --- determinism ----------------------------------------------------------------------------------


def test_clusters_are_deterministic_and_independent_of_input_order() -> None:
    items = dataset()
    assert near_duplicate_clusters(items) == near_duplicate_clusters(list(items))
    shuffled = list(items)
    random.Random(3).shuffle(shuffled)
    assert as_sets(near_duplicate_clusters(shuffled)) == as_sets(EXPECTED)
    # Members and clusters come in the order given.
    positions = {key: position for position, (key, _) in enumerate(shuffled)}
    for cluster in near_duplicate_clusters(shuffled):
        assert cluster == sorted(cluster, key=positions.__getitem__)


def test_sketches_do_not_depend_on_the_process() -> None:
    # Python salts str hashes per process: the sketches (and so the clusters) must not use them.
    script = (
        "from flywheel.near_duplicates import Boilerplate, _sketches; import numpy as np, hashlib; "
        "s, b = _sketches(['the parcel came a week late, refund the fee', 'héllo wörld'], Boilerplate(), "
        "np.array([], dtype=np.uint64), 3); print(hashlib.sha256(s.tobytes() + b.tobytes()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_a_one_pass_iterator_learns_boilerplate_from_its_first_items(monkeypatch: pytest.MonkeyPatch) -> None:
    items = dataset()
    monkeypatch.setattr(near_duplicates, "BOILERPLATE_SAMPLE", 12)

    def stream() -> Iterator[tuple[str, str]]:
        yield from items

    first = learn_boilerplate(text for _, text in items[:12])
    assert near_duplicate_clusters(stream()) == near_duplicate_clusters(items, boilerplate=first)
    assert near_duplicate_clusters(stream()) == EXPECTED


def test_learned_boilerplate_does_not_depend_on_order() -> None:
    texts = [text for _, text in dataset()]
    assert learn_boilerplate(texts) == learn_boilerplate(reversed(texts))
    assert learn_boilerplate([]) == Boilerplate()


# --- representatives ------------------------------------------------------------------------------


def test_representative_is_the_first_member_unless_one_was_exported() -> None:
    assert choose_representative(["a", "b", "c"]) == "a"
    assert choose_representative(["a", "b", "c"], exported={"c", "b"}) == "b"
    with pytest.raises(ValueError):
        choose_representative([])


def test_an_exported_representative_is_not_replaced_as_data_grows() -> None:
    items = dataset()
    exported = {choose_representative(cluster) for cluster in near_duplicate_clusters(items)}
    assert exported == {"t00", "t04", "t12"}
    # Later near-copies of the exported entries, and a new ticket copied twice, arrive.
    later = [
        ("u1", ticket_input(TICKETS[0].replace("replacement", "new copy"))),
        ("u2", ticket_input(TICKETS[4].replace("two streets", "three streets"))),
        (
            "u3",
            ticket_input("The app shows my parcel as delivered but the photo shows a different front door."),
        ),
        (
            "u4",
            ticket_input("The app shows my parcel as delivered but the photo shows a different front gate."),
        ),
    ]
    grown = near_duplicate_clusters(items + later)
    assert as_sets(grown) == {
        frozenset({"t00", "t00-a", "t00-b", "u1"}),
        frozenset({"t04", "t04-a", "u2"}),
        frozenset({"t12", "t12-a"}),
        frozenset({"u3", "u4"}),
    }
    representatives = {choose_representative(cluster, exported) for cluster in grown}
    assert representatives == {"t00", "t04", "t12", "u3"}
    # Even if the new near-copy came first in the order, the exported entry stays.
    assert choose_representative(["u1", "t00", "t00-a"], exported) == "t00"
