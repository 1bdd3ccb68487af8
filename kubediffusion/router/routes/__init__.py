"""The router's routes: one ``APIRouter`` per group, each in its own module; ``create_app`` includes them.

    health.py    /health, /readyz, /metrics                       open: probes and scrapers carry no key
    models.py    /v1/models, /v1/models/{model}                    API key
    metadata.py  /v1/metadata                                      API key
    images.py    /v1/images/generations, /edits, /variations       API key, then rate limit
    stored.py    /v1/images/{id}                                   API key (the one that stored it)
                 /v1/images/files/{id}                             the link's signature instead of a key
    legacy.py    /imagine/generate (key + rate limit), /imagine/info (key), /imagine/health (open);
                 errors as {"detail": ...}
    usage.py     /v1/usage                                         an admin tenant's key

Shared state and the caller come in as dependencies from :mod:`kubediffusion.router.deps`.
"""
