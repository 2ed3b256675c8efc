"""Plans shared by every VLM replica of a run: one replica profiles a question, the others wait
for its plan instead of profiling it again.

Each replica answers with its own :class:`~vidqa.vlm.adaptive.AdaptiveAnswerer` per question.
Replicas started together would each profile their first K tracks and plan on their own. A
:class:`PlanBoard` (one per run; a named Ray actor in the Ray engine) settles it per plan-cache
key: the first replica to :meth:`~PlanBoard.claim` a question profiles and plans as usual; the
others answer with the full model (phase ``profile``, collecting nothing) and adopt the plan the
moment it is published. The board holds the plan itself, so replicas on other machines need no
shared cache folder; the disk cache (``vlm.adaptive.cache_dir``) still stores it for later runs,
and a plan already on disk is used by every replica at once, as in the local engine.

A replica whose audits disprove its plan deletes it (from the disk and the board) and takes the
claim, so it is the one that re-profiles; the others keep their plan until their own audits
disagree. A claim holder that dies before publishing leaves the others on the full model.

Nothing here imports Ray: the board is a plain class, wrapped as an actor by the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from vidqa.config import QuestionConfig, VlmConfig
from vidqa.messages import Answer, Roi
from vidqa.vlm.adaptive import AdaptiveAnswerer
from vidqa.vlm.batch import Answerer, make_answerer
from vidqa.vlm.compression.plan_cache import PlanCache
from vidqa.vlm.model import VisionLanguageModel


class Board(Protocol):
    """What a replica needs of the board (a :class:`PlanBoard`, or a proxy to its actor)."""

    def claim(self, key: str, owner: str) -> bool: ...

    def publish(self, key: str, entry: dict[str, Any]) -> None: ...

    def plan(self, key: str) -> dict[str, Any] | None: ...

    def retract(self, key: str, owner: str) -> None: ...


class PlanBoard:
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

    def __init__(self, directory: str | Path | None, board: Board, owner: str) -> None:
        super().__init__(directory)
        self.board = board
        self.owner = owner

    def get(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        entry = self.board.plan(self.key(fields))
        if entry is None:
            return super().get(fields)
        self.hits += 1
        return entry

    def put(self, fields: dict[str, Any], entry: dict[str, Any]) -> Path | None:
        path = super().put(fields, entry)
        self.board.publish(self.key(fields), {"key": fields, **entry})
        return path

    def delete(self, fields: dict[str, Any]) -> None:
        super().delete(fields)
        self.board.retract(self.key(fields), self.owner)


class FleetAnswerer(AdaptiveAnswerer):
    """An :class:`AdaptiveAnswerer` that profiles only when the board gives it the question;
    until then it answers with the full model and watches the board for the plan."""

    def __init__(self, vlm: VisionLanguageModel, question: QuestionConfig, cfg: Any,
                 board: Board, owner: str, **kwargs: Any) -> None:
        directory = PlanCache.from_setting(cfg.cache_dir).directory
        super().__init__(vlm, question, cfg, cache=FleetPlanCache(directory, board, owner),
                         **kwargs)
        self.board = board
        self.owner = owner

    def _answer_profile(self, rois: list[Roi], shared: Any) -> list[Answer]:
        key = self.cache.key(self._key)
        if self.board.claim(key, self.owner):
            return super()._answer_profile(rois, shared)
        asked = self._ask_full(rois, shared)  # another replica profiles: full model meanwhile
        self.ledger.add("full", asked.seconds, len(rois))
        answers = self._answers(rois, asked, phase="profile")
        if self.board.plan(key) is not None:
            self._load_cached()  # adopts the published plan: compressed from the next batch
        return answers


def fleet_answerers(vlm: VisionLanguageModel, cfg: VlmConfig, board: Board,
                    owner: str) -> list[Answerer]:
    """One answerer per question, adaptive ones sharing their plans through ``board``."""
    adaptive = cfg.adaptive
    if not adaptive.enabled or adaptive.mode == "off":
        return [make_answerer(vlm, question, cfg) for question in cfg.questions]
    return [FleetAnswerer(vlm, question, adaptive, board, owner,
                          max_new_tokens=cfg.max_new_tokens)
            for question in cfg.questions]
