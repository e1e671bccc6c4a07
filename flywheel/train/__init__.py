"""Training: fine-tune jobs that start themselves when a pipeline's dataset has grown enough.

``config`` reads ``flywheel.toml`` (the pipelines), ``providers`` are where jobs run, ``jobs`` keeps
them in the store (the claim that makes a launch happen once), ``steps`` and ``thresholds`` decide,
``launch`` starts one job per dataset version, ``poll`` follows jobs, ``watch`` runs the passes.
Each CLI command is one function here: ``flywheel train`` is ``train_now`` (``--dry-run``:
``plan_training``), ``watch`` is ``Watcher``/``run_pass``, ``jobs`` is ``list_jobs``/``get_job``/
``cancel_job``, ``config check`` is ``load_config``. See docs/training.md.
"""

from .config import FlywheelConfig, Pipeline, load_config, parse_config
from .jobs import TrackedJob, get_job, list_jobs
from .plan import TrainPlan, plan_training
from .poll import cancel_job, poll_jobs
from .providers import Provider, ProviderError, TransientProviderError
from .watch import PassResult, Watcher, run_pass, train_now

__all__ = [
    "FlywheelConfig",
    "PassResult",
    "Pipeline",
    "Provider",
    "ProviderError",
    "TrackedJob",
    "TrainPlan",
    "TransientProviderError",
    "Watcher",
    "cancel_job",
    "get_job",
    "list_jobs",
    "load_config",
    "parse_config",
    "plan_training",
    "poll_jobs",
    "run_pass",
    "train_now",
]
