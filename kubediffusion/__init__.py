"""KubeDiffusion: text-to-image models on Kubernetes behind an OpenAI-compatible Images API."""

__version__ = "0.1.0"
