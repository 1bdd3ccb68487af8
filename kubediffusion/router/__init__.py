"""The router: one OpenAI-compatible Images endpoint in front of every model in the cluster.

Modules, each small and named for what it does:

    settings.py        RouterSettings (env prefix KD_ROUTER_); RouterFlags, the part that is also CLI flags
    app.py             create_app(settings, discovery=..., transport=...): assembles state, routes, middleware
    state.py           RouterState: what one app owns (discovery, balancer, keys, limiters, signer, store,
                       metrics, forwarder) and its lifespan (the shared httpx client, discovery, sweeper)
    deps.py            FastAPI dependencies: StateDep, SettingsDep, AuthenticatedCaller, RateLimitedCaller
    routes/            one APIRouter per group: health.py, models.py, images.py (the request flow)
    relay.py           the body a pod gets and the answer the client gets (passthrough, stored url links)
    routing.py         ModelEntry + RoutingTable: names, aliases, the default model; validation per model
    discovery.py       the Discovery protocol + StaticDiscovery (YAML file)
    kube_discovery.py  KubernetesDiscovery: watches ImageModels and their inference Pods (lightkube, asyncio)
    balancer.py        least-requests-in-flight, passive ejection of unreachable pods
    forwarding.py      Forwarder: bounded retries on other pods; streams the pod's bytes through
    signing.py         HMAC-SHA256 signed, expiring image links
    storage.py         ImageStore protocol + FilesystemStore (S3-compatible: extension point)
    auth.py            API keys from a mounted file, constant-time comparison
    ratelimit.py       token buckets per caller and global, the failed-authentication throttle; injectable clock
    client_address.py  the client's address: the socket peer, or what trusted proxies forwarded
    metrics.py         Prometheus metrics (one registry per app)
    errors.py          router-only errors (403 link errors, 502)
    main.py            `kubediffusion router`
"""
