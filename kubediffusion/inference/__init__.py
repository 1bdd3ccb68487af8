"""The model server that runs in every model pod (``kubediffusion inference``).

Modules, one job each:
    settings.py  InferenceSettings (env KD_INFERENCE_*, and a CLI flag per field, both read by pydantic-settings)
    server.py    InferenceServer: settings, defaults, names, metrics, phase, backend, batcher; load, warm up, serve
    app.py       create_app(): an InferenceServer, the route modules, and a lifespan that starts/stops it
    deps.py      ServerDep, the routes' Annotated dependency on the app's InferenceServer
    routes/      APIRouters: images.py (POST /v1/images/generations), edits.py (POST /v1/images/edits and
                 /v1/images/variations), health.py (/health /readyz /metrics), models.py (/v1/models /info)
    batcher.py   bounded queue + dynamic batching in front of the single pipeline thread
    backend.py   the ImageBackend Protocol the app needs (so tests can use a fake), ImageJob, EditInput, EditUpload
    engines/     the other engines (--engine): adapters in front of InvokeAI, ComfyUI, AUTOMATIC1111 or an
                 OpenAI-compatible API, and the stub; the Engine Protocol and the runner (docs/engines/)
    pipeline.py  the diffusers backend: load from a local directory, derive image-to-image and inpainting
                 pipelines (from_pipe), generate (imports torch)
    adapters.py  LoRA adapters (not engine adapters): loaded once with diffusers' PEFT integration, switched
                 per batch
    schedulers.py the default scheduler with its config overrides, and the classes a request may pick
    components.py a UNet, transformer or VAE loaded in place of the pipeline's own
    safety.py    the image safety checker, kept out of the pipeline and run on each batch's images
    moderation.py what flagged images get (reject/blur), JobImages (a job's answer and its moderation)
    inputs.py    uploaded images decoded, checked, resized; the inpainting mask derived
    streaming.py stream: true -> Server-Sent Events fed by the batcher and the step callback
    previews.py  partial images from intermediate latents (linear latent->RGB, or a tiny autoencoder)
    accel.py     CUDA speed-ups (channels_last, fused QKV, torch.compile), shared with the GPU benchmark
    shapes.py    batch buckets (padding for compiled pipelines), VAE slicing, pipeline output -> uint8 images
    warmup.py    the warm-up before /readyz: which batch sizes and guidances
    compilecache.py torch.compile's cache artifacts saved/loaded across restarts; no recompiles after warm-up
    encoding.py  PNG/JPEG/WebP + base64
    encodepool.py encoding answers in a small thread pool, off the pipeline thread
    metrics.py   Prometheus metrics in a per-app registry
    main.py      ``main(argv)``: settings -> uvicorn; exit 1 when the model cannot be loaded

Only pipeline.py, previews.py, accel.py, adapters.py, schedulers.py, components.py and safety.py import
torch/diffusers/peft, and only inside functions, so the app can be imported and tested without them; Pillow
is imported only where images are decoded or encoded for diffusers, and psutil only by /info, optionally:
the base install serves the engine adapters and the stub. The random-weight smoke-test pipeline is
``kubediffusion.tinymodel``.
"""
