"""Everything one router app owns for its lifetime, in one object: :class:`RouterState`.

``create_app`` builds it; its :meth:`RouterState.lifespan` (the app's lifespan) opens the one shared
``httpx.AsyncClient`` (explicit timeouts, pooled) and the forwarder on it, starts discovery, the usage
ledger and the expired-image sweeper, and stops them again (the tracer last: it exports what is left).
Routes reach it through :mod:`.deps`, never through module globals, so several apps (tests) live side by
side in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from lightkube import AsyncClient, KubeConfig

from kubediffusion.router.access import TenantViews
from kubediffusion.router.auth import APIKeys, Authenticator
from kubediffusion.router.balancer import Balancer
from kubediffusion.router.delivery import Keeper
from kubediffusion.router.discovery import Discovery, StaticDiscovery
from kubediffusion.router.forwarding import Forwarder
from kubediffusion.router.holding import Holds
from kubediffusion.router.kube_discovery import KubernetesDiscovery
from kubediffusion.router.kube_ledger import ConfigMapDocument
from kubediffusion.router.kube_scaler import KubeScaler
from kubediffusion.router.ledger import Ledger, MemoryLedger, SharedLedger
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.ratelimit import FailureThrottle, RateLimiter
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.signing import URLSigner
from kubediffusion.router.storage import ImageStore
from kubediffusion.router.tenants import TenantsFile
from kubediffusion.router.tracing import Tracer, make_tracer
from kubediffusion.router.usage import Meter
from kubediffusion.router.wakeup import Scaler, Waker

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 300.0


class RouterState:
    """Discovery, balancer, keys and tenants (and each tenant's view of the models), limiters, signer,
    store (and its keeper), metrics, usage (ledger and meter), tracer, the requests held for models waking
    from zero (and the waker); the upstream client and the forwarder while the app runs.

    ``transport`` replaces the network for the upstream client (tests); ``scaler`` the API server for
    waking models (tests; default: the Kubernetes discovery's client, none for static discovery);
    ``clock`` drives rate limits and pod ejection, ``wall_clock`` the quota days (tests); ``ledger`` and
    ``tracer`` replace the configured ones (tests)."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        discovery: Discovery,
        store: ImageStore,
        transport: httpx.AsyncBaseTransport | None = None,
        scaler: Scaler | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ledger: Ledger | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.discovery = discovery
        self.store = store
        self.balancer = Balancer(eject_seconds=settings.eject_seconds, clock=clock)
        tenants = TenantsFile(settings.tenants_file) if settings.tenants_file is not None else None
        self.auth = Authenticator(APIKeys(settings.api_keys_file, warn_if_off=tenants is None), tenants)
        self.views = TenantViews(discovery.table)
        self.limiter = RateLimiter(
            rate=settings.rate_limit_rps,
            burst=settings.rate_limit_burst,
            global_rate=settings.global_rate_limit_rps,
            global_burst=settings.global_rate_limit_burst,
            clock=clock,
        )
        self.auth_failures = FailureThrottle(
            rate=settings.auth_failure_rps, burst=settings.auth_failure_burst, clock=clock
        )
        self.signer = URLSigner(signing_key(settings), ttl_seconds=settings.url_ttl_seconds)
        self.metrics = RouterMetrics()
        self.ledger = ledger or default_ledger(settings, discovery, wall_clock)
        self.meter = Meter(self.ledger, self.metrics, wall_clock)
        self.tracer = tracer or make_tracer(settings.otlp_endpoint)
        self.keeper = Keeper(store, self.signer, self.metrics)
        scaler = scaler or default_scaler(discovery)
        self.waker = Waker(scaler, table=discovery.table, metrics=self.metrics) if scaler is not None else None
        self.holds = Holds(
            table=discovery.table,
            metrics=self.metrics,
            waker=self.waker,
            limit=settings.max_held_requests,
            timeout=settings.hold_timeout_seconds,
            retry_after=settings.hold_retry_after,
        )
        discovery.subscribe(self.holds.table_changed)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._forwarder: Forwarder | None = None

    @property
    def forwarder(self) -> Forwarder:
        if self._forwarder is None:
            raise RuntimeError("the router app's lifespan is not running")
        return self._forwarder

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared upstream client, for the few reads the router makes of pods (their /info)."""
        if self._client is None:
            raise RuntimeError("the router app's lifespan is not running")
        return self._client

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        settings = self.settings
        limits = httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=min(100, settings.upstream_max_connections),
        )
        async with httpx.AsyncClient(
            timeout=upstream_timeout(settings), limits=limits, transport=self._transport, follow_redirects=False
        ) as client:
            self._client = client
            self._forwarder = Forwarder(
                client,
                self.balancer,
                max_attempts=settings.max_attempts,
                retry_read_timeouts=settings.retry_read_timeouts,
                no_endpoint_retry_after=settings.no_endpoint_retry_after,
                on_attempt=lambda model, outcome: self.metrics.upstream_attempts.labels(model, outcome).inc(),
                on_sent=self.metrics.sent,
                tracer=self.tracer,
            )
            sweeper: asyncio.Task[None] | None = None
            try:
                await self.discovery.start()
                await self.ledger.start()
                sweeper = asyncio.create_task(self._sweep_forever())
                yield
            finally:
                if sweeper is not None:
                    sweeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sweeper
                self.holds.close()
                if self.waker is not None:
                    await self.waker.close()
                await self.ledger.stop()
                await self.discovery.stop()
                self._forwarder = self._client = None
                await asyncio.to_thread(self.tracer.shutdown)  # a last export: a blocking HTTP request

    async def _sweep_forever(self) -> None:
        """Delete stored images whose links have expired (plus a minute's grace)."""
        ttl = self.settings.url_ttl_seconds
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_SECONDS, float(ttl)))
            try:
                removed = await self.store.delete_older_than(ttl + 60)
                if removed:
                    log.info("removed %d expired image(s)", removed)
            except OSError as exc:
                log.warning("sweeping stored images failed: %s", exc)


def signing_key(settings: RouterSettings) -> bytes:
    if settings.signing_key_file is not None:
        return settings.signing_key_file.read_bytes().strip()
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    log.warning(
        "no URL signing key configured: using a random one; image links will not survive a restart "
        "or work across router replicas (set KD_ROUTER_SIGNING_KEY_FILE)"
    )
    return secrets.token_bytes(32)


def default_discovery(settings: RouterSettings) -> Discovery:
    if settings.discovery == "static":
        if settings.static_config is None:
            raise ValueError("discovery=static needs KD_ROUTER_STATIC_CONFIG (a YAML file)")
        return StaticDiscovery(settings.static_config)
    return KubernetesDiscovery.from_settings(settings)


def default_ledger(settings: RouterSettings, discovery: Discovery, clock: Callable[[], float]) -> Ledger:
    """Counts in memory (this replica's), or in ``usage_configmap`` shared by every replica (ledger.py)."""
    if not settings.usage_configmap:
        return MemoryLedger(retention_days=settings.usage_retention_days, clock=clock)
    if isinstance(discovery, KubernetesDiscovery):
        client, owned = discovery.client, False
    else:
        config = KubeConfig.from_file(settings.kubeconfig) if settings.kubeconfig else KubeConfig.from_env()
        client, owned = AsyncClient(config=config), True
    namespace = settings.usage_namespace or client.namespace
    document = ConfigMapDocument(client, settings.usage_configmap, namespace, owns_client=owned)
    log.info("usage counts shared by every router replica in ConfigMap %s/%s", namespace, settings.usage_configmap)
    return SharedLedger(
        document, retention_days=settings.usage_retention_days, flush_seconds=settings.usage_flush_seconds, clock=clock
    )


def default_scaler(discovery: Discovery) -> Scaler | None:
    """Models discovered in a cluster are woken through its API server; static ones never are."""
    return KubeScaler(discovery.client) if isinstance(discovery, KubernetesDiscovery) else None


def upstream_timeout(settings: RouterSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        write=settings.upstream_write_timeout,
        pool=settings.upstream_pool_timeout,
    )
