"""Training: fine-tune jobs that start themselves when a pipeline's dataset has grown enough.

``config`` reads ``flywheel.toml`` (the pipelines), ``providers`` are where jobs run, ``jobs`` keeps
them in the store, ``launch`` decides and starts one job per dataset version, ``watch`` runs the
passes. See docs/training.md.
"""
