"""FastAPI dependencies of the router's routes, as ``Annotated`` aliases.

``StateDep`` is the app's :class:`~kubediffusion.router.state.RouterState`, ``SettingsDep`` its settings.
``AuthenticatedCaller`` is the caller's key fingerprint (None while auth is off), or a 401;
``RateLimitedCaller`` is the same caller after it has taken a token from its bucket, or a 429.
Authentication comes first, so a wrong key never spends anyone's rate budget.

All are ``async``: FastAPI runs plain ``def`` dependencies in a thread pool, and the limiter's
buckets are not made for threads.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.state import RouterState


async def get_state(request: Request) -> RouterState:
    state: RouterState = request.app.state.router
    return state


StateDep = Annotated[RouterState, Depends(get_state)]


async def get_settings(state: StateDep) -> RouterSettings:
    return state.settings


SettingsDep = Annotated[RouterSettings, Depends(get_settings)]


async def authenticated_caller(request: Request, state: StateDep) -> str | None:
    return state.keys.authenticate(request.headers.get("authorization"))


AuthenticatedCaller = Annotated[str | None, Depends(authenticated_caller)]


async def rate_limited_caller(request: Request, state: StateDep, caller: AuthenticatedCaller) -> str | None:
    client_ip = request.client.host if request.client else "unknown"
    state.limiter.check(caller or f"ip:{client_ip}")
    return caller


RateLimitedCaller = Annotated[str | None, Depends(rate_limited_caller)]
