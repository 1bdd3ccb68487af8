"""FastAPI dependencies of the router's routes, as ``Annotated`` aliases.

``StateDep`` is the app's :class:`~kubediffusion.router.state.RouterState`, ``SettingsDep`` its settings.
``AuthenticatedCaller`` is the caller's key fingerprint (None while auth is off), or a 401, or a 429 for
an address that has sent too many wrong keys (then its key is not even compared; see
:class:`~kubediffusion.router.ratelimit.FailureThrottle`). ``RateLimitedCaller`` is the same caller after
it has taken a token from its bucket, or a 429. Authentication comes first, so a wrong key never spends
anyone's rate budget. The client address is ``request.client``, which
:class:`~kubediffusion.router.client_address.ClientAddressMiddleware` has already resolved.

All are ``async``: FastAPI runs plain ``def`` dependencies in a thread pool, and the limiter's
buckets are not made for threads.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from kubediffusion.api.errors import AuthenticationError
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


async def authenticated_caller(request: Request, state: StateDep) -> str | None:
    if not state.keys.enabled:
        return None
    address = client_address(request)
    state.auth_failures.check(address)
    try:
        return state.keys.authenticate(request.headers.get("authorization"))
    except AuthenticationError as exc:
        # Only a wrong key is a guess; a missing one keeps its helpful 401 however often it comes.
        if exc.code == "invalid_api_key" and state.auth_failures.failed(address):
            log.warning("client %s sent too many wrong API keys: refused until its budget refills", address)
        raise


AuthenticatedCaller = Annotated[str | None, Depends(authenticated_caller)]


async def rate_limited_caller(request: Request, state: StateDep, caller: AuthenticatedCaller) -> str | None:
    state.limiter.check(caller or f"ip:{client_address(request)}")
    return caller


RateLimitedCaller = Annotated[str | None, Depends(rate_limited_caller)]
