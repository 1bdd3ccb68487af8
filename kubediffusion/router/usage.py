"""What one image request costs, whether its tenant may spend it, and its bill: paid once or refunded once.

A request is checked against its tenant's daily quota once it is valid and its model known, before it
goes to a pod (:meth:`Meter.admit`): its images (``n``, times the input images of an edit or variation)
are counted at once in the :mod:`.ledger`, or it is refused with OpenAI's 429 ``insufficient_quota`` and
a Retry-After at the next UTC midnight. Its :class:`Bill` is then settled exactly once:

* :meth:`Bill.paid` when images reached the client: the Prometheus counters and the ledger get the
  request, its images, megapixels, denoising steps (steps x images) and the compute seconds its pod
  reported; a stream that ended early pays for the images it completed, the rest is refunded;
* :meth:`Bill.refunded` for anything else (a pod's error, no ready pod, a timeout, the client gone):
  the images go back to the quota and the request is counted in ``failed_requests``, never billed.

The pod's side of the contract (docs/observability.md): a model pod reports the compute time it spent on a
request in the response header ``X-KubeDiffusion-Compute-Seconds: 1.234`` (seconds, a decimal number),
or, in an event stream, in a comment line ``: x-kubediffusion-compute-seconds 1.234`` before the stream
ends (the router reads and drops it). Absent or unreadable: 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from kubediffusion.api.edits import EditParams
from kubediffusion.api.schema import GenerationParams
from kubediffusion.router.errors import QuotaExceededError
from kubediffusion.router.ledger import Ledger
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.tenants import Tenant
from kubediffusion.router.usagebook import Counts, seconds_to_next_day, utc_day

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cost:
    """A request's images, their megapixels and their denoising steps (each summed over its images)."""

    images: int
    megapixels: float = 0.0
    steps: int = 0

    @classmethod
    def of_generation(cls, params: GenerationParams) -> Cost:
        return cls(params.n, params.n * params.width * params.height / 1e6, params.n * params.steps)

    @classmethod
    def of_edit(cls, params: EditParams) -> Cost:
        n = params.params.n
        pixels = sum(n * source.width * source.height for source in params.sources)
        return cls(params.images, pixels / 1e6, params.images * params.params.steps)

    def counts(self, images: int) -> Counts:
        """The success counts of ``images`` of this request's images (a stream may complete fewer)."""
        share = images / self.images if self.images else 0.0
        return Counts(
            requests=1,
            megapixels=self.megapixels * share,
            denoising_steps=round(self.steps * share),
        )


class Meter:
    """The app's usage accounting: its ledger, the usage metrics, the wall clock (UTC days)."""

    def __init__(self, ledger: Ledger, metrics: RouterMetrics, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock

    async def admit(self, tenant: Tenant, model: str, cost: Cost) -> Bill:
        """The request's bill, its images counted; QuotaExceededError when the tenant's quota is spent."""
        now = self.clock()
        day = utc_day(now)
        limit = tenant.images_per_day
        if not await self.ledger.admit(day, tenant.name, model, cost.images, limit):
            self.metrics.quota_refusals.labels(tenant.name).inc()
            raise QuotaExceededError(
                f"You exceeded your current quota of {limit} images per day (this request asks for "
                f"{cost.images}). It renews at 00:00 UTC.",
                retry_after=seconds_to_next_day(now),
            )
        return Bill(self, tenant.name, model, day, cost)

    def failed(self, tenant: str, model: str, code: int | str) -> None:
        self.metrics.usage_failed.labels(tenant, model, str(code)).inc()


class Bill:
    """One admitted request's images, counted in the ledger; settled once (see the module docstring)."""

    def __init__(self, meter: Meter, tenant: str, model: str, day: date, cost: Cost) -> None:
        self._meter = meter
        self.tenant, self.model, self.day, self.cost = tenant, model, day, cost
        self.settled = False

    def paid(self, gpu_seconds: float, images: int | None = None) -> None:
        """Images reached the client: all of them, or ``images`` of them (a stream that ended early)."""
        delivered = self.cost.images if images is None else max(0, min(images, self.cost.images))
        if delivered == 0:
            self.refunded("no_images")
            return
        if self.settled:
            return
        self.settled = True
        counts = self.cost.counts(delivered)
        counts.images = delivered - self.cost.images  # the images not delivered go back to the quota
        counts.gpu_seconds = gpu_seconds
        self._meter.ledger.record(self.day, self.tenant, self.model, counts)
        metrics, labels = self._meter.metrics, (self.tenant, self.model)
        metrics.usage_requests.labels(*labels).inc()
        metrics.usage_images.labels(*labels).inc(delivered)
        metrics.usage_megapixels.labels(*labels).inc(counts.megapixels)
        metrics.usage_steps.labels(*labels).inc(counts.denoising_steps)
        metrics.usage_gpu_seconds.labels(*labels).inc(gpu_seconds)

    def refunded(self, code: int | str) -> None:
        """No image reached the client: the images go back, the request counts as failed."""
        if self.settled:
            return
        self.settled = True
        refund = Counts(images=-self.cost.images, failed_requests=1)
        self._meter.ledger.record(self.day, self.tenant, self.model, refund)
        self._meter.failed(self.tenant, self.model, code)
