"""Entry module for ``dramatiq workers.main``: the broker first, then the actors."""

from workers import actors
from workers.broker_setup import broker

__all__ = ["actors", "broker"]
