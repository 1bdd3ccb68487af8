"""SDXL-shaped pipeline, random weights, on one GPU: ms per denoising step, plain diffusers vs our path.

    python bench/bench_gpu_sdxl.py --steps 30 --batch 1 4 [--size 1024] [--dtypes bfloat16 float16]
                                   [--compile-modes max-autotune-no-cudagraphs] [--budget-s 540]
                                   [--guidance 0 --turbo] [--cache-dir DIR]
                                   [--variant diffusers|ours|compile --name N --json-out FILE]

``bench/gpu.sh`` (``bench_gpu_run.py``) runs one ``--variant`` per process, each under a deadline.
``--cache-dir``: the compiled variant loads torch.compile's cache artifacts from there before compiling
and saves them after (``kubediffusion.inference.compilecache``, as the server does), so a second run
measures a warm start.

Needs only torch + transformers + diffusers (the repo root is put on sys.path for
``kubediffusion.inference.accel``, which is exactly what the inference server applies on CUDA, and
``kubediffusion.tinymodel.build_tokenizer``, a local tokenizer: nothing is downloaded). The UNet,
VAE and both text encoders use the real SDXL-base configs written out below, so shapes and FLOPs are
real; the weights are random. Without CUDA it prints that it skipped (``--smoke`` runs a tiny
SDXL-shaped model on CPU, to check the script itself).

Variants, each on a freshly built pipeline, measured side by side in one run:
  diffusers_fp16            plain diffusers: fp16, default SDPA attention processor
  ours_<dtype>              accel.optimize_pipeline: TF32, channels_last, fused QKV, SDPA
  ours_<dtype>_compile_<m>  the same plus torch.compile(mode=m) of the UNet and VAE decoder
ms/step = (pipeline call with output_type="latent") / steps, CFG on (guidance 5), so each step is
one UNet call on 2*batch latents; e2e_ms adds the VAE decode. The ideal at 800 TFLOP/s bf16 on an H100
is ~16.9 ms per CFG step at 1024^2 for batch 1. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# stabilityai/stable-diffusion-xl-base-1.0 configs (unet/, vae/, text_encoder/, text_encoder_2/).
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
# force_upcast False: the fp16-safe SDXL VAE (madebyollin/sdxl-vae-fp16-fix) is what serving uses.
SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_BIGG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
# A tiny SDXL-shaped model for --smoke (CPU check of this script).
SMOKE_UNET = {
    **SDXL_UNET,
    "block_out_channels": [32, 64, 64],
    "attention_head_dim": [2, 4, 4],
    "transformer_layers_per_block": [1, 1, 1],
    "cross_attention_dim": 64,
    "layers_per_block": 1,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "norm_num_groups": 16,
}
SMOKE_VAE = {**SDXL_VAE, "block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
SMOKE_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}
H100_FLOOR_MS_PER_CFG_STEP = 16.9


def build_pipeline(device: str, dtype: Any, smoke: bool) -> Any:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from kubediffusion.tinymodel import build_tokenizer

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on .to(dtype)
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_1 = {**CLIP_L, **(SMOKE_TEXT if smoke else {}), **ids}
    text_2 = {**OPENCLIP_BIGG, **(SMOKE_TEXT if smoke else {}), **ids}
    with torch.device(device):  # random init directly on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(**(SMOKE_UNET if smoke else SDXL_UNET))
        vae = AutoencoderKL(**(SMOKE_VAE if smoke else SDXL_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_1))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_2))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed_call(
    pipe: Any, *, batch: int, steps: int, size: int, output_type: str, device: str, guidance: float = 5.0
) -> float:
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt=["a photo of an astronaut riding a horse on the moon"] * batch,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
            output_type=output_type,
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
        )
    sync()
    return (time.perf_counter() - started) * 1000


def run_variant(
    name: str, *, dtype_name: str, optimize: bool, compile_mode: str | None, args: argparse.Namespace, device: str
) -> dict[str, Any]:
    import torch

    from kubediffusion.inference.accel import optimize_pipeline
    from kubediffusion.inference.compilecache import CompileCache

    started = time.perf_counter()
    pipe = build_pipeline(device, getattr(torch, dtype_name), args.smoke)
    if args.turbo:  # SDXL-Turbo's schedule: the last timesteps, no CFG (--guidance 0)
        pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    cache = CompileCache(args.cache_dir) if compile_mode and args.cache_dir else None
    cache_loaded = cache.load() if cache is not None else None
    applied: list[str] = []
    if optimize:
        applied = optimize_pipeline(
            pipe,
            device=device,
            compile=compile_mode is not None,
            **({"compile_mode": compile_mode} if compile_mode else {}),
        )
    result: dict[str, Any] = {"variant": name, "dtype": dtype_name, "applied": applied, "batches": {}}
    if cache is not None:
        result["compile_cache"] = "warm" if cache_loaded else "cold"
    call = {"size": args.size, "device": device, "guidance": args.guidance}
    for batch in args.batch:
        warm = time.perf_counter()
        timed_call(pipe, batch=batch, steps=min(2, args.steps), output_type="latent", **call)
        timed_call(pipe, batch=batch, steps=min(2, args.steps), output_type="pt", **call)  # compiles decode
        warmup_s = time.perf_counter() - warm
        latent_ms = min(
            timed_call(pipe, batch=batch, steps=args.steps, output_type="latent", **call) for _ in range(args.repeats)
        )
        e2e_ms = timed_call(pipe, batch=batch, steps=args.steps, output_type="pt", **call)
        result["batches"][str(batch)] = {
            "ms_per_step": round(latent_ms / args.steps, 2),
            "latent_ms": round(latent_ms, 1),
            "e2e_ms": round(e2e_ms, 1),
            "warmup_s": round(warmup_s, 1),
        }
        print(
            f"  {name:<44} batch {batch}: {latent_ms / args.steps:8.2f} ms/step  e2e {e2e_ms:8.0f} ms  "
            f"(warm-up {warmup_s:.0f}s)",
            flush=True,
        )
    if cache is not None:
        result["compile_cache_saved"] = cache.save()
    if device == "cuda":
        result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    del pipe
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if compile_mode:
        torch._dynamo.reset()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"], choices=["bfloat16", "float16"])
    parser.add_argument(
        "--compile-modes",
        nargs="*",
        default=None,
        help="torch.compile modes to try (default: the product's DEFAULT_COMPILE_MODE)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    parser.add_argument("--repeats", type=int, default=2, help="timed latent runs per cell (min is kept)")
    parser.add_argument("--budget-s", type=float, default=540, help="skip variants that would start after this")
    parser.add_argument("--smoke", action="store_true", help="tiny SDXL-shaped model on CPU (checks the script)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (0: no CFG, as SDXL-Turbo)")
    parser.add_argument("--turbo", action="store_true", help="SDXL-Turbo's trailing timestep schedule")
    parser.add_argument("--cache-dir", type=Path, help="compile cache directory (loaded before, saved after)")
    parser.add_argument(
        "--variant", choices=["diffusers", "ours", "compile"], help="run only this variant (bench/gpu.sh: one each)"
    )
    parser.add_argument("--name", help="the variant's name in the results (with --variant)")
    parser.add_argument("--json-out", type=Path, help="also write the summary JSON to this file")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        print(json.dumps({"bench": "gpu_sdxl", "skipped": "torch is not installed"}))
        return 0
    from kubediffusion.inference.accel import DEFAULT_COMPILE_MODE

    if args.smoke:
        device, args.size, args.steps, args.dtypes = "cpu", 64, min(args.steps, 2), ["bfloat16"]
        args.no_compile = args.variant != "compile"
    elif not torch.cuda.is_available():
        print("CUDA is not available: skipped (run on a GPU machine, or --smoke to check the script on CPU)")
        print(json.dumps({"bench": "gpu_sdxl", "skipped": "CUDA not available"}))
        return 0
    else:
        device = "cuda"
    modes = [] if args.no_compile else (args.compile_modes or [DEFAULT_COMPILE_MODE])
    variants: list[tuple[str, str, bool, str | None]] = [
        ("diffusers_fp16", "float16" if not args.smoke else "bfloat16", False, None)
    ]
    variants += [(f"ours_{dtype}", dtype, True, None) for dtype in args.dtypes]
    variants += [(f"ours_{dtype}_compile_{mode}", dtype, True, mode) for dtype in args.dtypes[:1] for mode in modes]
    if args.variant is not None:
        index = {"diffusers": 0, "ours": 1, "compile": len(variants) - 1}[args.variant]
        name, *rest = variants[index]
        variants = [(args.name or name, *rest)]  # type: ignore[list-item]

    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(
        f"SDXL-shaped random weights on {gpu}: {args.size}x{args.size}, {args.steps} steps, CFG, "
        f"batch {args.batch}; torch {torch.__version__}",
        flush=True,
    )
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name, dtype_name, optimize, mode in variants:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(name)
            continue
        try:
            results.append(
                run_variant(name, dtype_name=dtype_name, optimize=optimize, compile_mode=mode, args=args, device=device)
            )
        except Exception as exc:  # one failing variant (e.g. a compile error) must not lose the others
            print(f"  {name}: failed: {type(exc).__name__}: {exc}", flush=True)
            results.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:500]})

    baseline = next((r for r in results if r["variant"] == "diffusers_fp16" and "batches" in r), None)
    summary: dict[str, Any] = {
        "bench": "gpu_sdxl",
        "device": gpu,
        "size": args.size,
        "steps": args.steps,
        "guidance": args.guidance,
        "torch": torch.__version__,
        "variants": results,
        "skipped_over_budget": skipped,
    }
    if baseline is not None:
        speedups: dict[str, dict[str, float]] = {}
        for result in results:
            if "batches" not in result:
                continue
            speedups[result["variant"]] = {
                batch: round(baseline["batches"][batch]["ms_per_step"] / cell["ms_per_step"], 3)
                for batch, cell in result["batches"].items()
                if batch in baseline["batches"]
            }
        summary["speedup_vs_diffusers_fp16"] = speedups
        best = min(
            (r for r in results if "batches" in r),
            key=lambda r: min(cell["ms_per_step"] / int(b) for b, cell in r["batches"].items()),
        )
        summary["best"] = best["variant"]
        print("speed-up vs plain diffusers fp16 (ms/step ratio):")
        for variant, by_batch in speedups.items():
            print(f"  {variant:<44} " + "  ".join(f"batch {b}: {s:.2f}x" for b, s in by_batch.items()))
    if device == "cuda" and args.size == 1024:
        summary["h100_floor_ms_per_step"] = {str(b): round(H100_FLOOR_MS_PER_CFG_STEP * b, 1) for b in args.batch}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))
    if args.json_out is not None:
        temporary = args.json_out.with_suffix(".part")
        temporary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        temporary.replace(args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
