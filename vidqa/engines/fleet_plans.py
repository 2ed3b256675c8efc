"""Plans shared by every VLM replica of a run: one replica profiles a question, the others wait
for its plan instead of profiling it again.

Each replica answers with its own :class:`~vidqa.vlm.adaptive.AdaptiveAnswerer` per question,
built by the local engine's factory (:func:`vidqa.vlm.factory.make_answerers`) with the
replica's :class:`Fleet`. Replicas started together would each profile their first K tracks and
plan on their own. The run's :class:`SharedPlans` (a named Ray actor in the Ray engine) settle
it per plan-cache key: the first replica to :meth:`~SharedPlans.claim` a question profiles and
plans as usual (its :class:`FleetGate` lets it); the others answer with the full model (phase
``profile``, collecting nothing) and adopt the plan the moment it is published. The shared plans
hold the plan itself, so replicas on other machines need no shared cache folder; the disk cache
(``vlm.adaptive.cache_dir``) still stores it for later runs, and a plan already on disk is used
by every replica at once, as in the local engine.

A replica whose audits disprove its plan deletes it (from the disk and the shared plans) and
takes the claim, so it is the one that re-profiles; the others keep their plan until their own
audits disagree. A claim holder that dies before publishing leaves the others on the full model.

Nothing here imports Ray: the shared plans are a plain class, wrapped as an actor by the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from vidqa.vlm.compression.plan_cache import PlanCache


class PlanSharing(Protocol):
    """What a replica needs of the shared plans (a :class:`SharedPlans`, or a proxy to its
    actor)."""

    def claim(self, key: str, owner: str) -> bool: ...

    def publish(self, key: str, entry: dict[str, Any]) -> None: ...

    def plan(self, key: str) -> dict[str, Any] | None: ...

    def retract(self, key: str, owner: str) -> None: ...


class SharedPlans:
    """Per plan key: which replica profiles it, and the plan once published. Also keeps each
    replica's latest summary, for the run's ``summary.json``."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}
        self._plans: dict[str, dict[str, Any]] = {}
        self._summaries: dict[str, dict[str, Any]] = {}

    def claim(self, key: str, owner: str) -> bool:
        """True when ``owner`` is (now) the one replica that profiles ``key``."""
        return self._owners.setdefault(key, owner) == owner

    def publish(self, key: str, entry: dict[str, Any]) -> None:
        self._plans[key] = entry

    def plan(self, key: str) -> dict[str, Any] | None:
        return self._plans.get(key)

    def retract(self, key: str, owner: str) -> None:
        """The plan was disproved by ``owner``'s audits: gone, and ``owner`` re-profiles."""
        self._plans.pop(key, None)
        self._owners[key] = owner

    def post(self, replica: str, summary: dict[str, Any]) -> None:
        self._summaries[replica] = summary

    def summaries(self) -> dict[str, dict[str, Any]]:
        return dict(self._summaries)


class FleetPlanCache(PlanCache):
    """The disk plan cache, plus the board: what one replica stores, the others read."""

    def __init__(self, directory: str | Path | None, plans: PlanSharing, owner: str) -> None:
        super().__init__(directory)
        self.plans = plans
        self.owner = owner

    def get(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        entry = self.plans.plan(self.key(fields))
        if entry is None:
            return super().get(fields)
        self.hits += 1
        return entry

    def put(self, fields: dict[str, Any], entry: dict[str, Any]) -> Path | None:
        path = super().put(fields, entry)
        self.plans.publish(self.key(fields), {"key": fields, **entry})
        return path

    def delete(self, fields: dict[str, Any]) -> None:
        super().delete(fields)
        self.plans.retract(self.key(fields), self.owner)


class FleetGate:
    """The :class:`~vidqa.vlm.adaptive.PlanGate` of a replica: it profiles a question only
    when the shared plans give it the claim; until then it answers with the full model and
    watches for the plan."""

    def __init__(self, plans: PlanSharing, owner: str) -> None:
        self.plans = plans
        self.owner = owner

    def may_profile(self, key: str) -> bool:
        return self.plans.claim(key, self.owner)

    def published(self, key: str) -> bool:
        return self.plans.plan(key) is not None


class Fleet:
    """One replica's place in the run's fleet, for :func:`vidqa.vlm.factory.make_answerers`:
    each adaptive answerer gets the fleet's plan cache and gate."""

    def __init__(self, plans: PlanSharing, owner: str) -> None:
        self.plans = plans
        self.owner = owner

    def cache_and_gate(self, cache_dir: str) -> tuple[FleetPlanCache, FleetGate]:
        directory = PlanCache.from_setting(cache_dir).directory
        return (FleetPlanCache(directory, self.plans, self.owner),
                FleetGate(self.plans, self.owner))
