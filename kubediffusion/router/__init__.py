"""The router: one OpenAI-compatible Images endpoint in front of every model in the cluster.

Modules, each small and named for what it does:

    settings.py        RouterSettings (env prefix KD_ROUTER_); RouterFlags, the part that is also CLI flags
    app.py             create_app(settings, discovery=..., transport=...): assembles state, routes, middleware
    state.py           RouterState: what one app owns (discovery, balancer, keys and tenants, limiters, signer,
                       store, metrics, usage ledger and meter, tracer, holds and waker, forwarder) and its
                       lifespan (the shared httpx client, discovery, ledger, sweeper)
    deps.py            FastAPI dependencies: StateDep, SettingsDep, AuthenticatedCaller, RateLimitedCaller
    routes/            one APIRouter per group: health.py, models.py, metadata.py, images.py (the request
                       flow), stored.py (images by id, signed files), legacy.py (the older /imagine API),
                       usage.py (GET /v1/usage, admins)
    exchange.py        one request's exchange with a pod, shared by every image endpoint; Tally (metrics)
    relay.py           the body a pod gets (only the fields it must see changed) and pod errors passed back
    delivery.py        a pod's JSON answer to the client: ids, stored images, url links, raw image bytes
    streaming.py       stream: true: the pod's events passed on one by one, completed images given ids
    negotiation.py     Accept: image/png (jpeg, webp): raw image answers and their rules
    routing.py         ModelEntry + RoutingTable: names, aliases, repo ids, <model>:<adapter>, the default
                       model; capabilities
    adapters.py        a model's LoRA adapters (spec.adapters, static entries) and a request's checked early
    modelinfo.py       publisher / family / version, explicit or derived from a Hugging Face repo id
    discovery.py       the Discovery protocol + StaticDiscovery (YAML file)
    kube_discovery.py  KubernetesDiscovery: watches ImageModels and their inference Pods (lightkube, asyncio)
    holding.py         scale from zero: requests for a model waking from zero wait (bounded) for its first pod
    wakeup.py          Waker: one request for one replica per wake-up of a model at zero, retried with backoff
    kube_scaler.py     KubeScaler: that request, a write of the ImageModel's scale subresource (the one write)
    balancer.py        least-requests-in-flight, passive ejection of unreachable pods
    forwarding.py      Forwarder: bounded retries on other pods, any image path; streams the pod's bytes
    signing.py         HMAC-SHA256 signed, expiring image links
    storage.py         ImageStore protocol + FilesystemStore, records (owner) beside images (S3: see docs/api.md)
    openapi.py         /openapi.json (and /docs) with OpenAI's schema names for the request bodies
    auth.py            API keys (the key file and the tenants file), constant-time comparison; Caller
    tenants.py         the tenants file: keys (plain or sha256:), model globs, rate limits, quotas, admin; reloads
    filestamp.py       whether a re-read file (keys, tenants) changed since the last look: one stat
    access.py          TenantViews: the routing table as a tenant sees it (other models do not exist)
    usage.py           a request's cost, admission against its tenant's quota, its bill paid or refunded once
    usagebook.py       UsageBook: counts per UTC day, tenant and model (pure data)
    ledger.py          where counts live: MemoryLedger (per replica) or SharedLedger (compare-and-swap document)
    kube_ledger.py     ConfigMapDocument: the shared document as a ConfigMap (resourceVersion preconditions)
    requestctx.py      request ids (X-Request-Id) and the middleware that gives every request its context
    logs.py            log lines with request and trace ids, as text or JSON
    tracing.py         W3C traceparent, the tracer protocol, pass-through when tracing is off
    otel.py            OpenTelemetry spans over OTLP/HTTP (imported only when tracing is on)
    ratelimit.py       token buckets per caller (tenant, key or IP) and global, the failed-authentication throttle
    client_address.py  the client's address: the socket peer, or what trusted proxies forwarded
    metrics.py         Prometheus metrics (one registry per app)
    errors.py          router-only errors (403 link errors, 502)
    main.py            `kubediffusion router`
"""
