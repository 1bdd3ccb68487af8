"""One request's exchange with a pod, the same for every image endpoint (generations, edits,
variations, and the older ``/imagine/generate``): forward the validated body, watch for the client
leaving, and turn the pod's answer into the client's (:mod:`.delivery`, :mod:`.streaming`, or the pod's
own error as is). A request for a model waking from zero waits for its pod first (:mod:`.holding`).

A client that goes away while its pod works has its pod request closed too, so the pod drops it from
its queue (one whose request still waits for a pod leaves that wait); it is counted as 499. Each
request is counted once in ``kubediffusion_router_requests_total`` by :class:`Tally`, whatever ends it,
and its tenant's usage once (:mod:`.usage`): its :class:`~.usage.Bill` paid when images reached the client
(with the compute seconds its pod reported), refunded otherwise; a request refused before it was admitted
(401 aside: no tenant is known then) is a failed request of its tenant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from kubediffusion.api.disconnect import await_unless_disconnected
from kubediffusion.api.errors import CLIENT_CLOSED_REQUEST, APIError, InvalidRequestError
from kubediffusion.api.events import SSE_MEDIA_TYPE
from kubediffusion.router.auth import Caller
from kubediffusion.router.delivery import Delivery, deliver
from kubediffusion.router.deps import StateDep
from kubediffusion.router.forwarding import Upstream
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.negotiation import OutputFormat
from kubediffusion.router.relay import passthrough, public_base_url, upstream_headers
from kubediffusion.router.routing import Capability, ModelEntry
from kubediffusion.router.state import RouterState
from kubediffusion.router.storage import ImageRecord
from kubediffusion.router.streaming import EventStream
from kubediffusion.router.usage import Bill, Cost, Meter

log = logging.getLogger(__name__)


class Tally:
    """Counts one image request in ``kubediffusion_router_requests_total``, once, whatever ends it; and,
    once its tenant is known, in its tenant's usage (its bill, once admitted)."""

    def __init__(self, metrics: RouterMetrics, meter: Meter, request: Request) -> None:
        self.metrics = metrics
        self.meter = meter
        self.request = request
        self.model = "unknown"  # until the request names a model we know
        self.started = time.perf_counter()
        self.bill: Bill | None = None
        self.counted = False

    @property
    def caller(self) -> Caller | None:
        caller: Caller | None = getattr(self.request.state, "caller", None)
        return caller

    def answered(self, status_code: int, *, logged: bool = True) -> None:
        """Count the answer, once; ``logged`` False when another line says it already (a client that left
        while sending its body: the error handler's one line)."""
        if self.counted:
            return
        self.counted = True
        self.metrics.requests.labels(self.model, str(status_code)).inc()
        if status_code != 200:
            self.failed(status_code)
        if not logged:
            return
        caller = self.caller
        # One line per image request (the router's request log; its request id is added by logs.py).
        log.info(
            "%s %s %d model=%s tenant=%s images=%d %.3fs",
            self.request.method,
            self.request.url.path,
            status_code,
            self.model,
            caller.tenant.name if caller is not None else "-",
            self.bill.cost.images if self.bill is not None else 0,
            time.perf_counter() - self.started,
        )

    def failed(self, code: int | str) -> None:
        """No image reached the client: a refund when the request was admitted, else a failed request."""
        if self.bill is not None:
            self.bill.refunded(code)
        elif (caller := self.caller) is not None:
            self.meter.failed(caller.tenant.name, self.model, code)

    async def admit(self, caller: Caller, cost: Cost) -> None:
        """Count the request's images against its tenant's quota (a 429 insufficient_quota when spent)."""
        self.bill = await self.meter.admit(caller.tenant, self.model, cost)

    def stream_ended(self, images: int, gpu_seconds: float) -> None:
        if self.bill is not None:
            self.bill.paid(gpu_seconds, images=images)

    def upstream_answered(self) -> None:
        self.metrics.duration.labels(self.model).observe(time.perf_counter() - self.started)


async def tally(request: Request, state: StateDep) -> AsyncIterator[Tally]:
    """A dependency with ``yield``: the errors of the dependencies after it (401, 429) and of the route
    (400, 404, 408, 413, 503, ..., a client gone mid-upload) pass through here on their way to the error
    handler, so they are counted."""
    counter = Tally(state.metrics, state.meter, request)
    try:
        yield counter
    except APIError as exc:
        counter.answered(exc.status_code)
        raise
    except ClientDisconnect:
        counter.answered(CLIENT_CLOSED_REQUEST, logged=False)
        raise
    except StarletteHTTPException as exc:
        counter.answered(exc.status_code)
        raise
    except Exception:
        counter.answered(500)
        raise
    except BaseException:  # cancelled: the client went away (or shutdown)
        counter.failed(CLIENT_CLOSED_REQUEST)
        raise


def require(entry: ModelEntry, capability: Capability, param: str = "model") -> None:
    if capability not in entry.supports:
        raise InvalidRequestError(
            f"The model '{entry.name}' does not support {capability}.", param=param, code="unsupported_value"
        )


@dataclass(frozen=True)
class PodRequest:
    """What goes to the pod: ``body`` (already changed where the pod needs it) to ``path``."""

    entry: ModelEntry
    path: str
    body: bytes
    content_type: str
    stream: bool = False


async def exchange(
    request: Request, state: RouterState, counter: Tally, pod: PodRequest, delivery: Delivery
) -> Response:
    """Forward ``pod`` and answer the client (see the module docstring)."""
    headers = upstream_headers(request, pod.content_type)
    upstream = await await_unless_disconnected(request, send(state, pod, headers))
    if upstream is None:  # the client went away: held, it left the queue; sent, its pod request was closed
        counter.answered(CLIENT_CLOSED_REQUEST)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    counter.upstream_answered()
    response: Response
    if upstream.status_code != 200:
        response = passthrough(upstream)
    elif pod.stream and upstream.headers.get("content-type", "").startswith(SSE_MEDIA_TYPE):
        response = EventStream(upstream, delivery, state.keeper, on_end=counter.stream_ended)
    else:
        response = await deliver(upstream, delivery, state.keeper)
        if counter.bill is not None:
            counter.bill.paid(upstream.compute_seconds)
    counter.answered(response.status_code)
    return response


async def send(state: RouterState, pod: PodRequest, headers: dict[str, str]) -> Upstream:
    """To a ready pod of the model; a model waking from zero is waited for first (holding.py)."""
    entry = await state.holds.ready(pod.entry)
    return await state.forwarder.forward(entry, pod.body, headers, path=pod.path)


def delivery_for(
    request: Request,
    state: RouterState,
    *,
    caller: Caller,
    entry: ModelEntry,
    response_format: str | None,
    store: bool | None,
    conversation_id: str | None = None,
    user: str | None = None,
    raw: OutputFormat | None = None,
) -> Delivery:
    """How the images of this request reach its client: ``store`` as asked (else the deployment's
    default), owned by ``caller``'s key; ``url`` (asked, or the router's default) stored and linked."""
    settings = state.settings
    url = raw is None and (response_format or settings.default_response_format) == "url"
    return Delivery(
        response_format="url" if url else "b64_json",
        store=store if store is not None else settings.store_default,
        raw=raw,
        record=ImageRecord(
            created=int(time.time()), owner=caller.key, model=entry.name, conversation_id=conversation_id, user=user
        ),
        base_url=public_base_url(settings, request),
    )
