"""``spec.engine``: what makes a model's images (docs/engines/).

``diffusers`` (the default) is our own server reading the weights of ``spec.source``. The adapters
(``invokeai``, ``comfyui``, ``automatic1111``, ``openai``) run our server in front of another engine: at
``url`` (a Service in the cluster, or anything the pod can reach), or in a sidecar container the operator
adds to the model pod from ``image``, reached on 127.0.0.1. ``stub`` draws test patterns. Adapters and the
stub read no weights of ours: no cache volume, no cache Job, and no GPU for our container (a sidecar
engine gets the model's GPUs).

The names are the inference server's ``--engine`` values (a unit test keeps them equal: this package may
not import the server). The CRD's CEL rules refuse the combinations that make no sense;
:meth:`Engine.problem` says the same for readers that have no API server in front of them (the router,
``kubediffusion local``, unit tests).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from kubediffusion.api.limits import parse_size
from kubediffusion.imagemodel.names import PORT
from kubediffusion.imagemodel.wire import KeyRef, SpecPart, display_url

EngineName = Literal["diffusers", "invokeai", "comfyui", "automatic1111", "openai", "stub"]
ADAPTERS: frozenset[str] = frozenset({"invokeai", "comfyui", "automatic1111", "openai"})
# Where each engine's own server listens unless told otherwise: the port of a sidecar that names none.
DEFAULT_PORTS: dict[str, int] = {"invokeai": 9090, "comfyui": 8188, "automatic1111": 7860}
# Settings of an engine our server calls; diffusers and the stub take none of them (wire names).
ADAPTER_SETTINGS = (
    "url",
    "image",
    "args",
    "env",
    "port",
    "credentialsSecretRef",
    "workflowConfigMapRef",
    "timeoutSeconds",
    "model",
    "sampler",
    "sizes",
    "maxN",
    "forwardExtensions",
)


class EnvVar(SpecPart):
    """A plain variable of the sidecar (no ``valueFrom``: the operator mounts no Secret into an engine)."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field(default="", max_length=32768)


class Engine(SpecPart):
    name: EngineName = "diffusers"
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    image: str | None = Field(default=None, min_length=1, max_length=512)
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    port: int | None = Field(default=None, ge=1024, le=65535)
    credentials_secret_ref: KeyRef | None = None
    workflow_config_map_ref: KeyRef | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    model: str | None = Field(default=None, min_length=1, max_length=512)
    sampler: str | None = Field(default=None, min_length=1, max_length=128)
    sizes: list[str] | None = None
    max_n: int | None = Field(default=None, ge=1, le=10)
    forward_extensions: bool | None = None

    @property
    def is_adapter(self) -> bool:
        return self.name in ADAPTERS

    @property
    def sidecar_port(self) -> int | None:
        """The port the sidecar engine listens on (None without a sidecar, or an openai one naming none)."""
        if self.image is None:
            return None
        return self.port or DEFAULT_PORTS.get(self.name)

    @property
    def upstream_url(self) -> str | None:
        """What our server calls: ``url``, or the sidecar on the pod's loopback (an OpenAI API base has /v1)."""
        if self.url is not None:
            return self.url
        port = self.sidecar_port
        if port is None:
            return None
        return f"http://127.0.0.1:{port}/v1" if self.name == "openai" else f"http://127.0.0.1:{port}"

    def describe(self) -> str:
        """Short human form for the ``Source`` printer column: what makes the images."""
        if self.name == "stub":
            return "stub (smoke test)"
        if self.image is not None:
            shown = f"{self.name}: sidecar {self.image}"
        elif self.url is not None:
            shown = f"{self.name}: {display_url(self.url)}"
        else:
            shown = self.name
        return shown if len(shown) <= 60 else shown[:57] + "..."

    def problem(self) -> tuple[str, str] | None:
        """The first setting the CRD's CEL rules refuse, as (field under spec, message); None: all fine."""
        given = {type(self).model_fields[n].alias or n for n in self.model_fields_set if getattr(self, n) is not None}
        if not self.is_adapter:
            extra = [name for name in ADAPTER_SETTINGS if name in given]
            if extra:
                return (
                    f"engine.{extra[0]}",
                    f"engine {self.name} takes no {extra[0]}: that is a setting of invokeai, comfyui,"
                    " automatic1111 and openai",
                )
            return None
        return self._adapter_problem(given)

    def _adapter_problem(self, given: set[str]) -> tuple[str, str] | None:
        if self.url is not None and self.image is not None:
            return "engine.image", "url and image cannot both be set: the engine is at url, or in a sidecar"
        if self.url is None and self.image is None:
            return "engine.url", f"engine {self.name} needs url (where it runs) or image (a sidecar)"
        for name in ("args", "env", "port"):
            if name in given and self.image is None:
                return f"engine.{name}", f"{name} configures a sidecar: it needs engine.image"
        if self.port == PORT:
            return "engine.port", f"{PORT} is the model server's own port in the pod"
        if self.name == "openai" and self.image is not None and self.port is None:
            return "engine.port", "an openai sidecar needs its port (there is no usual one)"
        for name, only in (("workflowConfigMapRef", "comfyui"), ("sizes", "openai"), ("forwardExtensions", "openai")):
            if name in given and self.name != only:
                return f"engine.{name}", f"{name} is a setting of the {only} engine"
        if self.sampler is not None and self.name == "openai":
            return "engine.sampler", "the openai engine has no sampler"
        if self.name == "invokeai" and self.model is None:
            return "engine.model", "engine invokeai needs model: the InvokeAI model key to generate with"
        if self.name == "comfyui" and self.model is None and self.workflow_config_map_ref is None:
            return "engine.model", "engine comfyui needs model (the checkpoint of the built-in workflow) or a workflow"
        return self._value_problem()

    def _value_problem(self) -> tuple[str, str] | None:
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return "engine.url", f"{display_url(self.url)!r} is not an http(s) URL with a host"
            if "@" in parts.netloc:
                return "engine.url", "no credentials in the URL: they go in a Secret (credentialsSecretRef)"
        for index, size in enumerate(self.sizes or []):
            try:
                parse_size(size)
            except ValueError as exc:
                return f"engine.sizes[{index}]", str(exc)
        names = [var.name for var in self.env or []]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate is not None:
            return "engine.env", f"variable {duplicate} is set twice"
        return None
