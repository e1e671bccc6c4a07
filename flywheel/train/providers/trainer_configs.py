"""The configs and data files a local trainer reads, generated from a job request: pure functions.

The ``command`` provider hands an export to TRL (``trl sft --config config.yaml``, ``trl dpo``) or
Axolotl (``axolotl train config.yaml``). This module decides what those files say, so that it can
be tested without either tool installed; the provider only writes the results to disk.

Mapping of the flywheel's hyperparameters (OpenAI's names) onto the trainers' keys:

=========================  ==================================  ============================
flywheel                   TRL                                 Axolotl
=========================  ==================================  ============================
``n_epochs``               ``num_train_epochs``                ``num_epochs``
``batch_size``             ``per_device_train_batch_size``     ``micro_batch_size``
``learning_rate_mult..``   ``learning_rate`` = multiplier x base learning rate (below)
``beta`` (DPO)             ``beta``                            ``rl_beta``
``seed`` (train table)     ``seed``                            ``seed``
=========================  ==================================  ============================

A hyperparameter left ``"auto"`` is left out, so the trainer's own default applies (TRL trains 3
epochs at batch size 8; Axolotl 1 epoch at micro batch size 1), except the learning rate, which
Axolotl requires: it is always written, as ``learning_rate_multiplier`` (1 when ``"auto"``) times
the base learning rate. The base is the provider's ``base_learning_rate`` when set, otherwise TRL's
own default for full fine-tuning with the method: 2e-5 for supervised (``SFTConfig``), 1e-6 for DPO
(``DPOConfig``). A LoRA run usually wants about ten times more (2e-4): set ``base_learning_rate``.

Every key written is one the tool documents; the documented keys are listed below, with the pages
they come from, and the tests check each generated config against them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .base import JobRequest, Method, ProviderError

__all__ = [
    "AXOLOTL_DATASET_KEYS",
    "AXOLOTL_KEYS",
    "BASE_LEARNING_RATE",
    "TRL_KEYS",
    "TrainerFormat",
    "TrainerLayout",
    "axolotl_config",
    "documented_keys",
    "learning_rate",
    "preference_example",
    "to_yaml",
    "trainer_config",
    "trl_config",
    "undocumented_keys",
]

TrainerFormat = Literal["trl", "axolotl"]

BASE_LEARNING_RATE: Mapping[Method, float] = {"supervised": 2e-5, "dpo": 1e-6}
"""TRL's default ``learning_rate`` of ``SFTConfig`` and ``DPOConfig`` (full fine-tuning)."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# TRL: what `trl sft --config` / `trl dpo --config` read: the fields of ScriptArguments
# (https://huggingface.co/docs/trl/script_utils), ModelConfig (https://huggingface.co/docs/trl/clis,
# "Model flags"), DatasetMixtureConfig (script_utils), and SFTConfig / DPOConfig with the
# transformers TrainingArguments they extend (https://huggingface.co/docs/trl/sft_trainer,
# https://huggingface.co/docs/trl/dpo_trainer). A subset: the keys this module writes and the ones
# users commonly add under `trainer`.
_TRL_COMMON = _words(
    # ScriptArguments; DatasetMixtureConfig
    "dataset_name dataset_config dataset_train_split dataset_test_split dataset_streaming "
    "datasets streaming test_split_size "
    # ModelConfig
    "model_name_or_path model_revision dtype attn_implementation use_peft lora_r lora_alpha "
    "lora_dropout lora_target_modules lora_modules_to_save use_dora use_rslora load_in_4bit "
    "load_in_8bit bnb_4bit_quant_type "
    # TrainingArguments, through SFTConfig / DPOConfig
    "output_dir num_train_epochs max_steps per_device_train_batch_size per_device_eval_batch_size "
    "gradient_accumulation_steps learning_rate lr_scheduler_type warmup_steps weight_decay "
    "max_grad_norm optim seed data_seed eval_strategy eval_steps logging_strategy logging_steps "
    "logging_first_step save_strategy save_steps save_total_limit report_to disable_tqdm bf16 fp16 "
    "use_cpu gradient_checkpointing trust_remote_code model_init_kwargs resume_from_checkpoint "
    "push_to_hub hub_model_id dataset_num_proc max_length pad_token loss_type"
)
TRL_KEYS: Mapping[Method, frozenset[str]] = {
    "supervised": _TRL_COMMON
    | _words(
        "packing packing_strategy assistant_only_loss completion_only_loss dataset_text_field "
        "chat_template_path eos_token"
    ),
    "dpo": _TRL_COMMON | _words("beta label_smoothing precompute_ref_log_probs use_weighting"),
}

# Axolotl: what `axolotl train config.yaml` reads (https://docs.axolotl.ai/docs/config-reference.html;
# the dataset entries: https://docs.axolotl.ai/docs/dataset-formats/conversation.html#chat_template
# and, for DPO, https://docs.axolotl.ai/docs/rlhf.html#chat_template.default). A subset again.
AXOLOTL_KEYS = _words(
    "base_model base_model_config model_type tokenizer_type tokenizer_config trust_remote_code "
    "datasets test_datasets val_set_size dataset_prepared_path shuffle_merged_datasets output_dir "
    "num_epochs max_steps micro_batch_size eval_batch_size gradient_accumulation_steps "
    "learning_rate lr_scheduler warmup_steps warmup_ratio weight_decay optimizer seed rl rl_beta "
    "chat_template chat_template_jinja sequence_len sample_packing pad_to_sequence_len "
    "train_on_inputs adapter lora_model_dir lora_r lora_alpha lora_dropout lora_target_modules "
    "lora_target_linear load_in_8bit load_in_4bit bf16 fp16 tf32 gradient_checkpointing "
    "flash_attention logging_steps eval_steps evals_per_epoch eval_strategy save_steps "
    "saves_per_epoch save_strategy save_total_limit special_tokens wandb_project wandb_mode strict"
)
AXOLOTL_DATASET_KEYS = _words(
    "path type ds_type data_files split name chat_template field_messages "
    "message_property_mappings roles roles_to_train train_on_eos drop_system_message "
    "field_chosen field_rejected"
)


@dataclass(frozen=True, slots=True)
class TrainerLayout:
    """Where the job's files are: ``train_file`` and ``eval_file`` (``None`` without validation) in
    ``data_dir``; the trainer writes the model to ``output_dir``; ``work_dir`` holds it all."""

    work_dir: Path
    data_dir: Path
    train_file: Path
    eval_file: Path | None
    output_dir: Path


def documented_keys(fmt: TrainerFormat, method: Method) -> frozenset[str]:
    """The top-level keys ``fmt`` documents for ``method``."""
    return TRL_KEYS[method] if fmt == "trl" else AXOLOTL_KEYS


def undocumented_keys(fmt: TrainerFormat, method: Method, config: Mapping[str, Any]) -> list[str]:
    """The keys of ``config`` the tool does not document (dataset entries as ``datasets[].KEY``)."""
    unknown = sorted(key for key in config if key not in documented_keys(fmt, method))
    if fmt == "axolotl":
        for list_key in ("datasets", "test_datasets"):
            for entry in config.get(list_key) or ():
                unknown += sorted(f"{list_key}[].{key}" for key in entry if key not in AXOLOTL_DATASET_KEYS)
    return unknown


def learning_rate(method: Method, hyperparameters: Mapping[str, Any], base: float | None = None) -> float:
    """``learning_rate_multiplier`` (1 when ``"auto"``) times ``base``, or TRL's default for ``method``."""
    multiplier = hyperparameters.get("learning_rate_multiplier", "auto")
    if _is_auto(multiplier):
        multiplier = 1.0
    return _positive("learning_rate_multiplier", multiplier) * (base or BASE_LEARNING_RATE[method])


def trl_config(
    request: JobRequest, layout: TrainerLayout, base_learning_rate: float | None = None
) -> dict[str, Any]:
    """What ``trl sft --config`` (``trl dpo`` for DPO) reads.

    The dataset is the data directory itself (``dataset_name``: a local path is loaded by
    ``datasets.load_dataset``, which names the splits after the files: ``train.jsonl`` -> ``train``,
    ``test.jsonl`` -> ``test``), so one key serves training and evaluation. Progress bars are off
    (``disable_tqdm``): the log is a file, and the metrics are printed one dict per line instead.
    """
    config: dict[str, Any] = {
        "model_name_or_path": request.base_model,
        "dataset_name": str(layout.data_dir),
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        "output_dir": str(layout.output_dir),
        "learning_rate": learning_rate(request.method, request.hyperparameters, base_learning_rate),
        "eval_strategy": "epoch" if layout.eval_file is not None else "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    hyper = _mapped(request, {"n_epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size"})
    if request.method == "dpo":
        hyper |= _mapped(request, {"beta": "beta"})
    config |= hyper
    if request.seed is not None:
        config["seed"] = request.seed
    return config


def axolotl_config(
    request: JobRequest, layout: TrainerLayout, base_learning_rate: float | None = None
) -> dict[str, Any]:
    """What ``axolotl train config.yaml`` reads.

    The datasets are local JSONL files (``ds_type: json``, ``data_files``), formatted with the
    base model's chat template (``type: chat_template``, messages in ``messages`` with ``role`` and
    ``content``, loss on the assistant turns). DPO uses ``rl: dpo`` and ``chat_template.default``
    over ``messages`` / ``chosen`` / ``rejected``. The test split is ``test_datasets`` when
    validation is on, else ``val_set_size: 0`` (no evaluation). Axolotl's tokenized-dataset cache
    goes in the job's own directory, not in the working directory.
    """
    config: dict[str, Any] = {
        "base_model": request.base_model,
        "datasets": [_axolotl_dataset(request.method, layout.train_file)],
        "output_dir": str(layout.output_dir),
        "dataset_prepared_path": str(layout.work_dir / "prepared"),
        "learning_rate": learning_rate(request.method, request.hyperparameters, base_learning_rate),
    }
    if request.method == "dpo":
        config["rl"] = "dpo"
        config |= _mapped(request, {"beta": "rl_beta"})
    if layout.eval_file is not None:
        config["test_datasets"] = [_axolotl_dataset(request.method, layout.eval_file)]
    else:
        config["val_set_size"] = 0.0
    config |= _mapped(request, {"n_epochs": "num_epochs", "batch_size": "micro_batch_size"})
    if request.seed is not None:
        config["seed"] = request.seed
    return config


def trainer_config(
    fmt: TrainerFormat,
    request: JobRequest,
    layout: TrainerLayout,
    *,
    base_learning_rate: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config for ``fmt``, with ``extra`` (the provider's ``trainer`` table) merged over it:
    a top-level key there replaces the generated one whole (``datasets`` included)."""
    _check_hyperparameters(request)
    build = trl_config if fmt == "trl" else axolotl_config
    return build(request, layout, base_learning_rate) | dict(extra or {})


def preference_example(fmt: TrainerFormat, record: Mapping[str, Any]) -> dict[str, Any]:
    """One exported DPO line (OpenAI's ``input`` / ``preferred_output`` / ``non_preferred_output``)
    as the trainer reads it: TRL's conversational ``prompt`` / ``chosen`` / ``rejected`` (with
    ``tools``), or Axolotl's ``messages`` with one ``chosen`` and one ``rejected`` message."""
    try:
        prompt = list(record["input"]["messages"])
        chosen = list(record["preferred_output"])
        rejected = list(record["non_preferred_output"])
    except (KeyError, TypeError) as exc:
        raise ProviderError(f"a preference line lacks {exc}", "preference_train.jsonl") from exc
    if not chosen or not rejected:
        raise ProviderError("a preference line has an empty output", "preference_train.jsonl")
    if fmt == "axolotl":
        return {"messages": prompt, "chosen": chosen[-1], "rejected": rejected[-1]}
    example: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    tools = record["input"].get("tools")
    if tools:
        example["tools"] = tools
    return example


def to_yaml(config: Mapping[str, Any]) -> str:
    """``config`` as YAML without a YAML library: JSON, which is YAML, with each float spelled the
    way YAML 1.1 parsers (PyYAML, which both tools use) read back as a float. ``json`` writes
    ``2e-05``, which PyYAML reads as the *string* "2e-05"; this writes ``2.0e-05``."""
    return _dump(config, 0) + "\n"


def _dump(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dump(v, depth + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(f"{inner}{_dump(v, depth + 1)}" for v in value) + "\n" + pad + "]"
    if isinstance(value, float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be written to a trainer config")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return json.dumps(value, ensure_ascii=False)


def _axolotl_dataset(method: Method, path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": str(path),
        "ds_type": "json",
        "data_files": [str(path)],
        "split": "train",
    }
    mappings = {"role": "role", "content": "content"}
    if method == "dpo":
        return entry | {
            "type": "chat_template.default",
            "field_messages": "messages",
            "field_chosen": "chosen",
            "field_rejected": "rejected",
            "message_property_mappings": mappings,
        }
    return entry | {
        "type": "chat_template",
        "field_messages": "messages",
        "message_property_mappings": mappings,
        "roles_to_train": ["assistant"],
    }


_KNOWN_HYPERPARAMETERS = frozenset({"n_epochs", "batch_size", "learning_rate_multiplier", "beta"})


def _check_hyperparameters(request: JobRequest) -> None:
    for name, value in request.hyperparameters.items():
        if name not in _KNOWN_HYPERPARAMETERS and not _is_auto(value):
            raise ProviderError(
                f"hyperparameter {name} has no local-trainer equivalent; set the trainer's own key "
                "under [pipelines.NAME.train.trainer] instead",
                f"hyperparameters.{name}",
            )
        if name == "beta" and request.method != "dpo" and not _is_auto(value):
            raise ProviderError("beta applies to method = 'dpo' only", "hyperparameters.beta")


def _mapped(request: JobRequest, names: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in names.items():
        value = request.hyperparameters.get(ours, "auto")
        if _is_auto(value):
            continue
        number = _positive(ours, value)
        whole = ours == "batch_size" or (ours == "n_epochs" and number.is_integer())
        out[theirs] = int(number) if whole else number
    return out


def _is_auto(value: Any) -> bool:
    """Left to the trainer: not configured, or ``"auto"``."""
    return value is None or (isinstance(value, str) and value == "auto")


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ProviderError(
            f"{name} must be a positive number or 'auto', not {value!r}", f"hyperparameters.{name}"
        )
    return float(value)
