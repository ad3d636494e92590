"""The ``export`` activity, and the one place that maps export errors to retry decisions."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.base import Destination
from activities.errors import PermanentExportError, RetryableExportError
from courier import metrics
from workflows.export_record import EXPORT_ACTIVITY, PERMANENT_ERROR_TYPE
from workflows.types import ExportBatch, ExportResult

log = logging.getLogger(__name__)

RETRYABLE_ERROR_TYPE = "RetryableExportError"


class ExportActivity:
    """Runs one destination's writes; one instance per destination per worker process."""

    def __init__(self, name: str, destination: Destination) -> None:
        self.name = name
        self.destination = destination

    @activity.defn(name=EXPORT_ACTIVITY)
    async def export(self, batch: ExportBatch) -> ExportResult:
        """Write a batch to this worker's destination, idempotently."""
        if batch.destination != self.name:
            raise ApplicationError(
                f"batch for {batch.destination!r} reached the worker of {self.name!r}",
                type=PERMANENT_ERROR_TYPE,
                non_retryable=True,
            )
        attempt = activity.info().attempt
        started = time.perf_counter()
        try:
            detail = await self.destination.write(batch.records)
        except PermanentExportError as err:
            metrics.record_failure(self.name, permanent=True, count=len(batch.records))
            log.warning("%s: permanent failure: %s", self.name, err.reason)
            raise ApplicationError(
                err.reason, type=PERMANENT_ERROR_TYPE, non_retryable=True
            ) from err
        except RetryableExportError as err:
            metrics.record_failure(self.name, permanent=False, count=len(batch.records))
            log.info("%s: attempt %d failed, will retry: %s", self.name, attempt, err.reason)
            delay = timedelta(seconds=err.retry_after) if err.retry_after is not None else None
            raise ApplicationError(
                err.reason, type=RETRYABLE_ERROR_TYPE, next_retry_delay=delay
            ) from err
        metrics.record_success(
            self.name, count=len(batch.records), seconds=time.perf_counter() - started
        )
        return ExportResult(
            destination=self.name, written=len(batch.records), detail=detail, attempt=attempt
        )
