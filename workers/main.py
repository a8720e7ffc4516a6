"""Entry module for ``dramatiq workers.main``: the broker, then the actors bound to it."""

from workers.actors import broker, embed_chunks, index_workspace, run_job, run_session

__all__ = ["broker", "embed_chunks", "index_workspace", "run_job", "run_session"]
