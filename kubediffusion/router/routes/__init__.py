"""The router's routes: one ``APIRouter`` per group, each in its own module; ``create_app`` includes them.

    health.py   /health, /readyz, /metrics            open: probes and scrapers carry no key
    models.py   /v1/models, /v1/models/{model}         API key
    images.py   /v1/images/generations                 API key, then rate limit
                /v1/images/files/{id}                  the link's signature instead of a key

Shared state and the caller come in as dependencies from :mod:`kubediffusion.router.deps`.
"""
