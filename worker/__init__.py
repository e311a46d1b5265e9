"""Celery app and tasks: the per-study pipeline and its state."""
