"""The fleet as its agents report it: one retained ``AgentStatus`` per agent.

Agents republish their status every ``agent.status_interval_s``; the broker publishes an
agent's last will (``offline``, ``connection lost``) when its connection breaks, and an empty
retained payload removes an agent. An agent that is not offline but whose latest status is
older than ``stale_after_s`` (by the status's own clock) is flagged stale: it is alive to the
broker but says nothing, or its clock is wrong.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from rllfpr.wire.messages import AgentStatus, utc_now


class StatusError(ValueError):
    """A status payload that is not an ``AgentStatus`` of the agent of its topic."""


@dataclass(frozen=True)
class Camera:
    site: str
    camera: str
    agent: str


@dataclass(frozen=True)
class AgentRow:
    status: AgentStatus  # the retained one: state and reason
    running: AgentStatus | None  # the latest this console saw while it ran: its figures
    stale: bool

    @property
    def agent(self) -> str:
        return self.status.agent

    @property
    def last_seen(self) -> datetime | None:
        return self.running.at if self.running else None

    @property
    def figures(self) -> AgentStatus:
        """Frame rate, faces, spool and key epoch: an offline agent's last known ones."""
        return self.running if self.status.state == "offline" and self.running else self.status


class Fleet:
    def __init__(self, stale_after_s: float) -> None:
        self.stale_after = timedelta(seconds=stale_after_s)
        self._statuses: dict[str, AgentStatus] = {}
        self._running: dict[str, AgentStatus] = {}
        self._lock = threading.Lock()

    def update(self, agent: str, payload: bytes) -> None:
        """Apply a retained status (empty: the agent was removed); raises ``StatusError``."""
        if not payload:
            with self._lock:
                self._statuses.pop(agent, None)
                self._running.pop(agent, None)
            return
        try:
            status = AgentStatus.model_validate_json(payload)
        except ValidationError as error:
            raise StatusError(f"status of {agent} is not an AgentStatus: {error}") from error
        if status.agent != agent:
            raise StatusError(f"status on the topic of {agent} names agent {status.agent}")
        with self._lock:
            self._statuses[agent] = status
            seen = self._running.get(agent)
            if status.state != "offline" and (seen is None or seen.at <= status.at):
                self._running[agent] = status

    def rows(self, now: datetime | None = None) -> list[AgentRow]:
        now = now or utc_now()
        with self._lock:
            statuses = sorted(self._statuses.values(), key=lambda s: (s.site, s.agent))
            running = dict(self._running)
        return [
            AgentRow(
                status,
                running.get(status.agent),
                status.state != "offline" and now - status.at > self.stale_after,
            )
            for status in statuses
        ]

    def status(self, agent: str) -> AgentStatus | None:
        with self._lock:
            return self._statuses.get(agent)

    def cameras(self) -> set[Camera]:
        """Every camera of every known agent (offline ones included: they may come back)."""
        with self._lock:
            return {
                Camera(status.site, camera, status.agent)
                for status in self._statuses.values()
                for camera in status.cameras
            }
