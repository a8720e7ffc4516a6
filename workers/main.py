"""Entry module for ``dramatiq workers.main``: the broker, then the actors bound to it."""

from workers.actors import broker, run_job, run_session

__all__ = ["broker", "run_job", "run_session"]
