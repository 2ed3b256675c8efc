"""Crops in, answers out: how the streams reach the model.

* :class:`~vidqa.serving.base.AnswerService` — the interface every engine's streams use.
* :class:`~vidqa.serving.batching.BatchingService` — the model on a thread of this process.
* :class:`~vidqa.serving.worker.WorkerService` — the model in a worker process, and
  :class:`~vidqa.serving.worker.WorkerClient` for stream processes.
* :class:`~vidqa.serving.ray_client.RayClient` — a stream's client of the Ray deployment.
* :class:`~vidqa.serving.stage.AnswerStage` — the pipeline stage that submits a stream's
  crops and attaches the answers to the frames they arrive at.
* :func:`~vidqa.serving.batch.answer_grouped` — the one batch function of every service.
"""

from vidqa.serving.base import AnswerService, ServiceClosed
from vidqa.serving.batch import answer_grouped
from vidqa.serving.batching import BatchingService
from vidqa.serving.stage import AnswerStage
from vidqa.serving.worker import ClientEnd, WorkerClient, WorkerService

__all__ = ["AnswerService", "AnswerStage", "BatchingService", "ClientEnd", "ServiceClosed",
           "WorkerClient", "WorkerService", "answer_grouped"]
