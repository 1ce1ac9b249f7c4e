"""The worker: a supervising process and its work horses."""

from nbqueue.worker.supervisor import Worker

__all__ = ["Worker"]
