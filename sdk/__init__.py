"""Flywheel SDK."""
