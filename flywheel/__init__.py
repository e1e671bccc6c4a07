"""Flywheel: turn logged LLM calls into fine-tuning data."""
