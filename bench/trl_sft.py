"""A real ``trl sft`` run through the ``command`` provider, end to end, on a model made on the spot.

Nothing is downloaded: a 2-layer Llama (hidden size 64) is built from a config with random
weights, and a word-level tokenizer is trained on the examples with ``tokenizers`` and given a
chat template, so TRL can format ``messages``; both are saved to a temporary directory that is the
job's ``base_model``. The examples are chat lines as ``flywheel export`` writes them (ticket ->
queue). The job goes through ``CommandProvider`` as a pipeline's would: ``prepare`` writes the TRL
config, ``launch`` starts ``trl sft --config {config}`` detached, ``poll`` follows it to the end.
Prints the wall time, the loss at the first and last logging step, the steps logged and the model
directory it produced. Without TRL installed, prints how to install it and exits 0.

    pip install torch==2.13.0 && pip install -e '.[dev,train]'
    python bench/trl_sft.py --examples 256 --epochs 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel.train.providers import JobHandle, JobRequest, TrainingFiles  # noqa: E402
from flywheel.train.providers.command import CommandProvider, CommandSettings  # noqa: E402

NEEDED = ("trl", "transformers", "datasets", "tokenizers", "torch")
QUEUES = ["billing", "delivery", "damage", "returns", "account"]
WORDS = {
    "billing": "charge invoice refund fee card payment twice billed",
    "delivery": "late parcel missing tracking courier arrived lost route",
    "damage": "broken wet opened crushed torn cracked dented box",
    "returns": "return label send back exchange wrong size item",
    "account": "login password address email profile settings locked name",
}
SYSTEM = "Classify the ticket into one queue."
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def examples(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        queue = rng.choice(QUEUES)
        ticket = " ".join(rng.choice(WORDS[queue].split()) for _ in range(rng.randint(4, 9)))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Ticket: {ticket}"},
                    {"role": "assistant", "content": queue},
                ]
            }
        )
    return rows


def build_model(directory: Path, rows: list[dict[str, Any]]) -> None:
    """A word-level tokenizer trained on ``rows`` (with a chat template) and a tiny random Llama."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [m["content"] for row in rows for m in row["messages"]]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|end|>",
        bos_token="<|system|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rows = examples(args.examples)
    model_dir = root / "base-model"
    build_model(model_dir, rows)
    export_dir = root / "job" / "export"
    export_dir.mkdir(parents=True)
    split = max(1, len(rows) // 8)
    for name, part in (("train.jsonl", rows[split:]), ("test.jsonl", rows[:split])):
        (export_dir / name).write_text("".join(json.dumps(row) + "\n" for row in part))
    (export_dir / "manifest.json").write_text(
        json.dumps({"counts": {"train": len(rows) - split, "test": split}})
    )
    trl = Path(sys.executable).with_name("trl")
    settings = CommandSettings(
        command=f"{trl} sft --config {{config}}",
        format="trl",
        # A model trained from scratch wants a far larger rate than fine-tuning's 2e-5.
        base_learning_rate=1e-3,
        trainer={"logging_steps": 1, "max_length": 64, "use_cpu": True, "save_strategy": "no"},
        env=OFFLINE,
    )
    request = JobRequest(
        key="bench-trl-sft",
        pipeline="bench",
        dataset="bench",
        dataset_version=1,
        base_model=str(model_dir),
        method="supervised",
        hyperparameters={
            "n_epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate_multiplier": 1,
        },
        suffix=None,
        seed=7,
        validation=True,
        settings=settings,
        work_dir=root / "job",
        metadata={"flywheel_job": "bench-trl-sft"},
    )
    provider = CommandProvider(settings)
    started = time.perf_counter()
    state = provider.launch(request, provider.prepare(request, TrainingFiles(export_dir, {})))
    details, last_id, events = dict(state.details), None, list(state.events)
    while not state.finished:
        time.sleep(0.5)
        state = provider.poll(JobHandle(state.provider_job_id, settings, request.work_dir, details, last_id))
        details |= state.details
        events += state.events
        last_id = next((e.provider_event_id for e in reversed(state.events) if e.provider_event_id), last_id)
    wall = time.perf_counter() - started
    losses = [e.data["loss"] for e in events if e.kind == "metrics" and "loss" in e.data]
    evals = [e.data["eval_loss"] for e in events if e.kind == "metrics" and "eval_loss" in e.data]
    return {
        "status": state.status,
        "error": state.error,
        "wall_s": round(wall, 1),
        "train_examples": len(rows) - split,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_logged": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "eval_loss": evals,
        "model_dir": state.fine_tuned_model,
        "model_files": sorted(p.name for p in Path(state.fine_tuned_model or root).iterdir())
        if state.fine_tuned_model
        else [],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed. To run this benchmark:")
        print("    pip install torch==2.13.0   # the CPU wheel; plain `torch` may fetch a CUDA build")
        print("    pip install -e '.[dev,train]'")
        return 0
    os.environ.update(OFFLINE)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="flywheel-trl-") as tmp:
            result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))
    return 0 if result["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
