"""Speed-ups applied to a loaded pipeline on CUDA; the GPU benchmark measures exactly this code.

On CUDA: TF32 matmuls, cuDNN autotuning, channels-last UNet/VAE, fused QKV projections (one GEMM
instead of three in every attention block) and PyTorch's SDPA attention (diffusers' default
``AttnProcessor2_0``). With ``compile=True`` the UNet and the VAE decoder are also ``torch.compile``d
(inductor, static shapes): each new (batch, size) shape compiles once, so the server pads batches to a
few buckets and its warm-up compiles each at the default size (:mod:`.shapes`, :mod:`.warmup`); after
that, other shapes run eagerly instead of compiling on a live request (:mod:`.compilecache`).
Imports only torch (lazily), so ``bench/bench_gpu_sdxl.py`` runs with torch + transformers + diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# "max-autotune-no-cudagraphs": autotuned GEMM/conv kernels without CUDA graphs, whose per-shape
# memory pools add up when batch size and image size vary per request. The benchmark can try others.
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"
RECOMPILE_LIMIT = 64  # shapes per compiled function before dynamo falls back to eager


def optimize_pipeline(
    pipe: Any,
    *,
    device: str,
    compile: bool = False,
    compile_mode: str = DEFAULT_COMPILE_MODE,
    adapters: bool = False,
) -> list[str]:
    """Apply the speed-ups in place; returns the names of those applied (for /info and the benchmark).
    With LoRA ``adapters`` loaded, QKV projections are not fused (the fused projection would bypass the
    adapters' layers) and the UNet/transformer is not compiled (diffusers switches adapters only on the
    module itself, not on a compiled wrapper): the VAE decoder still is."""
    if device != "cuda":
        return []
    import torch

    applied: list[str] = []
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    applied.append("tf32+cudnn_benchmark")
    for name in ("unet", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "to"):
            module.to(memory_format=torch.channels_last)
            applied.append(f"channels_last:{name}")
    if not adapters and hasattr(pipe, "fuse_qkv_projections"):
        try:
            pipe.fuse_qkv_projections()
            applied.append("fused_qkv")
        except Exception as exc:  # some pipelines/attention processors do not support fusing
            log.warning("could not fuse QKV projections: %s", exc)
    if compile:
        applied += _compile(pipe, compile_mode, denoiser=not adapters)
    return applied


def _compile(pipe: Any, mode: str, *, denoiser: bool = True) -> list[str]:
    import torch

    inductor = torch._inductor.config
    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_check_all_directions = True
    for limit_name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit_name):
            setattr(torch._dynamo.config, limit_name, RECOMPILE_LIMIT)
    applied = []
    for name in ("unet", "transformer") if denoiser else ():
        module = getattr(pipe, name, None)
        if module is not None:
            setattr(pipe, name, torch.compile(module, mode=mode, fullgraph=True, dynamic=False))
            applied.append(f"compile:{name}:{mode}")
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "decode"):
        vae.decode = torch.compile(vae.decode, mode=mode, fullgraph=True, dynamic=False)
        applied.append(f"compile:vae.decode:{mode}")
    return applied
