"""FastAPI dependencies of the router's routes, as ``Annotated`` aliases.

``StateDep`` is the app's :class:`~kubediffusion.router.state.RouterState`, ``SettingsDep`` its settings.
``AuthenticatedCaller`` is the :class:`~kubediffusion.router.auth.Caller` (its tenant, its key's
fingerprint; the anonymous tenant while auth is off), or a 401, or a 503 while the tenants file is broken,
or a 429 for an address that has sent too many wrong keys (then its key is not even compared; see
:class:`~kubediffusion.router.ratelimit.FailureThrottle`); it is also left in ``request.state.caller`` for
the request's accounting. ``RateLimitedCaller`` is the same caller after it has taken a token from its
bucket (its tenant's, with the tenant's rate and burst), or a 429. Authentication comes first, so a wrong
key never spends anyone's rate budget. The client address is ``request.client``, which
:class:`~kubediffusion.router.client_address.ClientAddressMiddleware` has already resolved.

All are ``async``: FastAPI runs plain ``def`` dependencies in a thread pool, and the limiter's
buckets are not made for threads.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from kubediffusion.api.errors import AuthenticationError
from kubediffusion.router.auth import Caller
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.state import RouterState

log = logging.getLogger(__name__)


async def get_state(request: Request) -> RouterState:
    state: RouterState = request.app.state.router
    return state


StateDep = Annotated[RouterState, Depends(get_state)]


async def get_settings(state: StateDep) -> RouterSettings:
    return state.settings


SettingsDep = Annotated[RouterSettings, Depends(get_settings)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def authenticated_caller(request: Request, state: StateDep) -> Caller:
    with state.tracer.span("auth") as span:
        caller = authenticate(request, state)
        span.set("tenant", caller.tenant.name)
    request.state.caller = caller
    return caller


def authenticate(request: Request, state: StateDep) -> Caller:
    if not state.auth.enabled:
        return state.auth.authenticate(None)
    address = client_address(request)
    state.auth_failures.check(address)
    try:
        return state.auth.authenticate(request.headers.get("authorization"))
    except AuthenticationError as exc:
        # Only a wrong key is a guess; a missing one keeps its helpful 401 however often it comes.
        if exc.code == "invalid_api_key" and state.auth_failures.failed(address):
            log.warning("client %s sent too many wrong API keys: refused until its budget refills", address)
        raise


AuthenticatedCaller = Annotated[Caller, Depends(authenticated_caller)]


async def rate_limited_caller(request: Request, state: StateDep, caller: AuthenticatedCaller) -> Caller:
    limit = caller.tenant.rate_limit
    state.limiter.check(
        caller.bucket(client_address(request)),
        rate=limit.rps if limit is not None else None,
        burst=limit.burst if limit is not None else None,
        who="your tenant" if caller.tenant.bucket else "your key",
    )
    return caller


RateLimitedCaller = Annotated[Caller, Depends(rate_limited_caller)]
