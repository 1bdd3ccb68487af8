"""``spec.engine`` cases shared by two enforcers of the same rules: the typed spec (tests/unit/operator,
no cluster) and the CRD's schema + CEL on a real API server (tests/cluster/test_crd_imagemodel.py).

Each invalid case names where each of them reports it: ``typed`` is :class:`InvalidSpecError.field`
(under ``spec``), ``api`` a string the API server's message must contain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

A1111_URL = "http://sd-webui.tools.svc:7860"


class Invalid(NamedTuple):
    case: str
    spec: dict[str, Any]
    typed: str
    api: str


def engine(**fields: Any) -> dict[str, Any]:
    return {"engine": fields}


def a1111(**fields: Any) -> dict[str, Any]:
    return engine(name="automatic1111", url=A1111_URL, **fields)


VALID: dict[str, dict[str, Any]] = {
    "stub": engine(name="stub"),
    "diffusers explicitly": {"source": {"tiny": {}}, **engine(name="diffusers")},
    "automatic1111 at a url": a1111(credentialsSecretRef={"name": "auth", "key": "auth"}, model="sd15 [abc]"),
    "automatic1111 sidecar": engine(name="automatic1111", image="acme/webui:1", args=["--api"], env=[{"name": "A"}]),
    "invokeai": engine(name="invokeai", url="https://invokeai.example:9090/", model="5a1b9c40", sampler="euler"),
    "comfyui with a checkpoint": engine(name="comfyui", url="http://comfyui:8188", model="sd_xl_base_1.0.safetensors"),
    "comfyui sidecar with a workflow": engine(
        name="comfyui", image="acme/comfyui:1", port=8189, workflowConfigMapRef={"name": "wf", "key": "a.json"}
    ),
    "openai upstream": {
        **engine(
            name="openai",
            url="https://api.openai.com/v1",
            model="dall-e-3",
            sizes=["1024x1024", "1792x1024"],
            maxN=1,
            timeoutSeconds=120,
            credentialsSecretRef={"name": "openai", "key": "key"},
        ),
        "defaults": {"size": "1024x1024"},
    },
    "openai sidecar": engine(name="openai", image="vllm/vllm-openai:v0.9", port=8001, forwardExtensions=True),
}

INVALID: list[Invalid] = [
    Invalid("unknown engine", engine(name="torch", url=A1111_URL), "engine.name", "spec.engine.name"),
    Invalid("engine without a name", engine(url=A1111_URL), "engine.url", "spec.engine.name"),
    Invalid("stub with a url", engine(name="stub", url=A1111_URL), "engine.url", "spec.engine.name"),
    Invalid(
        "stub with credentials",
        engine(name="stub", credentialsSecretRef={"name": "s", "key": "k"}),
        "engine.credentialsSecretRef",
        "spec.engine.name",
    ),
    Invalid(
        "diffusers with an engine model",
        {"source": {"tiny": {}}, **engine(name="diffusers", model="x")},
        "engine.model",
        "spec.engine.name",
    ),
    Invalid("adapter with url and image", a1111(image="acme/webui:1"), "engine.image", "spec.engine.image"),
    Invalid("adapter with neither url nor image", engine(name="automatic1111"), "engine.url", "spec.engine.url"),
    Invalid("args without a sidecar", a1111(args=["--api"]), "engine.args", "spec.engine.args"),
    Invalid("env without a sidecar", a1111(env=[{"name": "A", "value": "1"}]), "engine.env", "spec.engine.env"),
    Invalid("port without a sidecar", a1111(port=7861), "engine.port", "spec.engine.port"),
    Invalid(
        "sidecar on the server's port",
        engine(name="comfyui", image="acme/comfyui:1", port=8000, model="m"),
        "engine.port",
        "spec.engine.port",
    ),
    Invalid(
        "privileged port", engine(name="comfyui", image="a/c:1", port=80, model="m"), "engine.port", "spec.engine.port"
    ),
    Invalid(
        "openai sidecar without a port", engine(name="openai", image="vllm/vllm:1"), "engine.port", "spec.engine.port"
    ),
    Invalid(
        "a workflow for another engine",
        a1111(workflowConfigMapRef={"name": "wf", "key": "w.json"}),
        "engine.workflowConfigMapRef",
        "spec.engine.workflowConfigMapRef",
    ),
    Invalid(
        "a workflow without its key",
        engine(name="comfyui", url="http://c:8188", workflowConfigMapRef={"name": "wf"}),
        "engine.workflowConfigMapRef.key",
        "spec.engine.workflowConfigMapRef.key",
    ),
    Invalid("sizes for another engine", a1111(sizes=["512x512"]), "engine.sizes", "spec.engine.sizes"),
    Invalid(
        "forwardExtensions for another engine",
        a1111(forwardExtensions=True),
        "engine.forwardExtensions",
        "spec.engine.forwardExtensions",
    ),
    Invalid(
        "a sampler for openai",
        engine(name="openai", url="https://api.example/v1", sampler="euler"),
        "engine.sampler",
        "spec.engine.sampler",
    ),
    Invalid(
        "invokeai without its model key",
        engine(name="invokeai", url="http://i:9090"),
        "engine.model",
        "spec.engine.model",
    ),
    Invalid(
        "comfyui without a checkpoint or workflow",
        engine(name="comfyui", url="http://c:8188"),
        "engine.model",
        "spec.engine.model",
    ),
    Invalid("url not http", engine(name="automatic1111", url="ftp://webui/"), "engine.url", "spec.engine.url"),
    Invalid(
        "credentials in the url",
        engine(name="automatic1111", url="http://kd:secret@webui:7860"),
        "engine.url",
        "spec.engine.url",
    ),
    Invalid(
        "a size that is not WxH",
        engine(name="openai", url="https://api.example/v1", sizes=["1024"]),
        "engine.sizes",
        "spec.engine.sizes[0]",
    ),
    Invalid("maxN above 10", a1111(maxN=11), "engine.maxN", "spec.engine.maxN"),
    Invalid(
        "a sidecar variable set twice",
        engine(name="comfyui", image="a/c:1", model="m", env=[{"name": "A"}, {"name": "A", "value": "2"}]),
        "engine.env",
        "spec.engine.env[1]",
    ),
    Invalid("a source for another engine", {"source": {"tiny": {}}, **a1111()}, "source", "spec.engine.name"),
    Invalid("a cache for another engine", {**a1111(), "cache": {"size": "1Gi"}}, "cache", "spec.engine.name"),
    Invalid("a dtype for another engine", {**a1111(), "dtype": "float16"}, "dtype", "spec.engine.name"),
    Invalid("diffusers without a source", engine(name="diffusers"), "source", "spec.source"),
]
