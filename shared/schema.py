"""Every table's metadata in one place, for Alembic and readiness checks."""

from __future__ import annotations

from sqlmodel import SQLModel

from shared.agents import models as _agents
from shared.auth import models as _auth
from shared.cas import models as _cas
from shared.chat import models as _chat
from shared.events import models as _events
from shared.jobs import models as _jobs
from shared.retrieval import models as _retrieval
from shared.scheduling import models as _scheduling
from shared.sessions import models as _sessions
from shared.turns import models as _turns

metadata = SQLModel.metadata

__all__ = [
    "_agents",
    "_auth",
    "_cas",
    "_chat",
    "_events",
    "_jobs",
    "_retrieval",
    "_scheduling",
    "_sessions",
    "_turns",
    "metadata",
]
