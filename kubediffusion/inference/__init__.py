"""The model server that runs in every model pod (``kubediffusion inference``).

Modules, one job each:
    settings.py  InferenceSettings (env KD_INFERENCE_*, and a CLI flag per field)
    app.py       create_app(): OpenAI Images API, /health, /readyz, /v1/models, /info, /metrics
    batcher.py   bounded queue + dynamic batching in front of the single pipeline thread
    backend.py   the ImageBackend Protocol the app needs (so tests can use a fake)
    pipeline.py  the diffusers backend: load from a local directory, generate (imports torch)
    accel.py     CUDA speed-ups (channels_last, fused QKV, torch.compile), shared with the GPU benchmark
    encoding.py  PNG/JPEG/WebP + base64
    metrics.py   Prometheus metrics in a per-app registry
    tiny.py      the random-weight smoke-test pipeline (``kubediffusion tiny-model``)
    main.py      ``main(argv)``: settings -> uvicorn; exit 1 when the model cannot be loaded

Only pipeline.py, accel.py and tiny.py import torch/diffusers, and only inside functions, so the app
can be imported and tested without them.
"""
