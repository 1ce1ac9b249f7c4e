"""Notebook integration: the ``%%enqueue`` magic, running enqueued cells, and HTML views of jobs."""
