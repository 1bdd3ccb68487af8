"""Sending a validated request to a pod of its model, with bounded retries on other pods.

Retry rules (one place, unit-tested):

* the pod could not be reached (connect error/timeout, pool timeout) or dropped the connection
  before answering (it died, or closed an idle keep-alive connection): eject it for a few seconds
  and try another pod;
* the pod answered 429 (queue full) or 503 (not ready): try another pod; if every attempt ends
  like this, the last such answer is passed through (it carries the pod's Retry-After); a pod
  that broke off while sending such an answer counts as unreachable;
* a read timeout is not retried by default (the pod may still be generating: retrying would
  multiply GPU work) and becomes 504; ``retry_read_timeouts`` changes that;
* anything else (2xx, other 4xx, 500) is passed through as is.

At most ``max_attempts`` pods are tried and no pod twice for one request; a cancelled forward (its
client went away) lets go of its pod at once. No ready pod at all is a
503 with Retry-After. The response body is never decoded here: :class:`Upstream` streams the pod's
bytes through and keeps the pod counted as busy until the last byte has been sent.

The same rules hold for every path a pod serves (generations, edits, variations; JSON or multipart,
answered as JSON or as an event stream): the body is opaque bytes sent as is, ``path`` says where.

Each attempt is a ``forward`` span of the tracer (:mod:`.tracing`) whose trace context the pod gets in
``traceparent``; the compute seconds a pod reports (``X-KubeDiffusion-Compute-Seconds``, :mod:`.usage`)
are read from its answer's headers, and never passed on to the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from kubediffusion.api.computetime import COMPUTE_SECONDS_HEADER, compute_seconds
from kubediffusion.api.errors import ServiceUnavailableError, UpstreamTimeoutError
from kubediffusion.router.balancer import Balancer, Lease
from kubediffusion.router.routing import ModelEntry
from kubediffusion.router.tracing import PassThroughTracer, Tracer

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 503})
GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
VARIATIONS_PATH = "/v1/images/variations"
# Response headers worth passing from a pod to the client; hop-by-hop headers are never copied.
PASSTHROUGH_HEADERS = ("content-type", "content-encoding", "retry-after", "x-request-id")


def is_retryable_status(status_code: int) -> bool:
    return status_code in RETRYABLE_STATUS


def is_retryable_error(exc: httpx.HTTPError, *, retry_read_timeouts: bool = False) -> bool:
    """Whether a transport error means "try another pod" (True) or "give up" (False)."""
    if isinstance(exc, httpx.ReadTimeout):
        return retry_read_timeouts
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    if isinstance(exc, httpx.WriteTimeout):
        return False
    return isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)


def ejects_endpoint(exc: httpx.HTTPError) -> bool:
    """Errors that suggest the pod is gone (not merely slow)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError | httpx.ReadError)


@dataclass
class Upstream:
    """A pod's answer: either still streaming (``response``) or buffered (``body``)."""

    status_code: int
    headers: dict[str, str]
    endpoint: str
    response: httpx.Response | None = None
    body: bytes | None = None
    lease: Lease | None = field(default=None, repr=False)
    compute_seconds: float = 0.0  # what the pod reported it spent (0: nothing reported)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as the pod sent it, chunk by chunk; releases the pod when done or abandoned."""
        try:
            if self.response is not None and self.response.is_stream_consumed:
                yield self.response.content  # already in memory (an in-process transport)
            elif self.response is not None:
                async for chunk in self.response.aiter_raw():
                    yield chunk
            elif self.body:
                yield self.body
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        try:
            if self.response is not None:
                self.body = await self.response.aread()
            return self.body or b""
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        try:
            if self.response is not None:
                await self.response.aclose()
        finally:
            if self.lease is not None:
                self.lease.release()


@dataclass(frozen=True)
class Failed:
    """An attempt that got no usable answer: the error, and whether another pod may be tried."""

    error: httpx.HTTPError
    retry: bool

    @property
    def outcome(self) -> str:
        return type(self.error).__name__


def _passthrough_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: headers[name] for name in PASSTHROUGH_HEADERS if name in headers}


class Forwarder:
    def __init__(
        self,
        client: httpx.AsyncClient,
        balancer: Balancer,
        *,
        max_attempts: int = 3,
        retry_read_timeouts: bool = False,
        no_endpoint_retry_after: int = 5,
        on_attempt: Callable[[str, str], None] | None = None,
        on_sent: Callable[[ModelEntry], Callable[[], None]] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._client = client
        self._balancer = balancer
        self._max_attempts = max_attempts
        self._retry_read_timeouts = retry_read_timeouts
        self._no_endpoint_retry_after = no_endpoint_retry_after
        self._on_attempt = on_attempt or (lambda _model, _outcome: None)
        # Counts a request in flight to a model (metrics.sent); what it returns runs when its lease is released.
        self._on_sent = on_sent
        self._tracer = tracer or PassThroughTracer()

    async def forward(
        self, model: ModelEntry, body: bytes, headers: Mapping[str, str], *, path: str = GENERATIONS_PATH
    ) -> Upstream:
        """POST ``body`` to ``path`` on a pod of ``model``; raises ServiceUnavailableError / UpstreamTimeoutError."""
        tried: list[str] = []
        last_rejection: Upstream | None = None
        last_error: httpx.HTTPError | None = None
        while len(tried) < self._max_attempts:
            endpoint = self._balancer.pick(model.endpoints, exclude=tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            with self._tracer.span("forward", **{"server.address": endpoint, "attempt": len(tried)}) as span:
                outcome = await self._attempt(model, endpoint, body, headers, path)
                span.set("outcome", str(outcome.status_code) if isinstance(outcome, Upstream) else outcome.outcome)
            if isinstance(outcome, Upstream):
                if not is_retryable_status(outcome.status_code):
                    return outcome
                last_rejection = outcome
                continue
            last_error = outcome.error
            if not outcome.retry:
                break
        if last_rejection is not None:
            return last_rejection
        if isinstance(last_error, httpx.TimeoutException) and not isinstance(
            last_error, httpx.ConnectTimeout | httpx.PoolTimeout
        ):
            raise UpstreamTimeoutError(f"The model '{model.name}' did not answer in time.")
        if not model.endpoints:
            raise ServiceUnavailableError(
                f"The model '{model.name}' has no ready replica. Try again later.",
                retry_after=self._no_endpoint_retry_after,
            )
        raise ServiceUnavailableError(
            f"No replica of the model '{model.name}' could be reached ({len(tried)} tried). Try again later.",
            retry_after=self._no_endpoint_retry_after,
        )

    async def _attempt(
        self, model: ModelEntry, endpoint: str, body: bytes, headers: Mapping[str, str], path: str
    ) -> Upstream | Failed:
        """One pod: its answer (a retryable one already read), or what went wrong."""
        lease = self._balancer.acquire(endpoint, self._on_sent(model) if self._on_sent is not None else None)
        outgoing = dict(headers)
        self._tracer.inject(outgoing)
        request = self._client.build_request("POST", endpoint + path, content=body, headers=outgoing)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            lease.release()
            retry = is_retryable_error(exc, retry_read_timeouts=self._retry_read_timeouts)
            if ejects_endpoint(exc):
                self._balancer.eject(endpoint)
            self._on_attempt(model.name, type(exc).__name__)
            log.warning(
                "pod %s of model %s failed: %s: %s%s",
                endpoint,
                model.name,
                type(exc).__name__,
                exc,
                "; trying another" if retry else "",
            )
            return Failed(exc, retry=retry)
        except BaseException:  # cancelled (the client went away, or shutdown): the pod is not busy for us
            lease.release()
            raise
        upstream = Upstream(
            response.status_code,
            _passthrough_headers(response.headers),
            endpoint,
            response=response,
            lease=lease,
            compute_seconds=compute_seconds(response.headers.get(COMPUTE_SECONDS_HEADER)),
        )
        self._on_attempt(model.name, str(response.status_code))
        if not is_retryable_status(response.status_code):
            return upstream
        try:
            await upstream.aread()  # a small error envelope; keep it in case every pod says the same
        except httpx.HTTPError as exc:  # it failed while refusing: no work was started, try another
            if ejects_endpoint(exc):
                self._balancer.eject(endpoint)
            log.warning("pod %s of model %s failed: %s: %s", endpoint, model.name, type(exc).__name__, exc)
            return Failed(exc, retry=True)
        log.info("pod %s of model %s answered %d; trying another", endpoint, model.name, response.status_code)
        return upstream
