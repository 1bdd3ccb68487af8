"""The tiny smoke-test model: a real diffusers pipeline with random weights and tiny shapes.

``write_tiny_pipeline(dir, kind)`` builds UNet2DConditionModel + AutoencoderKL + CLIP text encoder(s)
+ CLIPTokenizer(s) + EulerDiscreteScheduler with a fixed torch seed and writes them with
``save_pretrained``, so the inference server loads it through the same code path as a real model.
It makes 64x64 noise, not pictures, and says so: a marker file (``SMOKE_TEST_MARKER``) sits in the
directory, recording the serving defaults of :mod:`kubediffusion.imagemodel.tiny`, and the server
reports ``"smoke_test": true`` and logs a warning.

The tokenizer is built from a vocab.json/merges.txt written here (byte-level BPE over the 256 byte
symbols plus a few merges), never downloaded. Only torch, transformers and diffusers are imported, so
the cache Job and the GPU benchmark can use this module without the server's dependencies.

``write_tiny_preview_decoder(dir)`` adds a tiny random ``AutoencoderTiny`` in ``taesd/``, where the
server looks for a preview decoder (real models put madebyollin/taesd there), so tests can exercise
that path too.

``kubediffusion tiny-model DIR [--kind sd|sdxl] [--preview-decoder]`` runs ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubediffusion.imagemodel.tiny import SMOKE_TEST_MARKER, TINY_DEFAULTS

log = logging.getLogger(__name__)

KINDS = ("sd", "sdxl")
PREVIEW_DECODER_DIR = "taesd"  # an AutoencoderTiny here decodes streamed partial images
SEED = 0
TEXT_HIDDEN = 32
MAX_TOKENS = 77
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("c", "a"), ("ca", "t</w>"), ("o", "g</w>")]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def write_tokenizer_files(directory: Path) -> None:
    """A tiny byte-level CLIP BPE vocabulary: every byte symbol, alone and word-final, plus a few merges."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    for left, right in _MERGES:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = ["#version: 0.2", *(f"{left} {right}" for left, right in _MERGES)]
    (directory / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def build_tokenizer() -> Any:
    """A CLIPTokenizer constructed from locally written files (no hub access)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="kd-tokenizer-") as tmp:
        write_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_TOKENS, local_files_only=True)


def _text_config(tokenizer: Any, *, projection_dim: int = TEXT_HIDDEN) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_pipeline(kind: str = "sd") -> Any:
    """The in-memory pipeline (float32, CPU) with seeded random weights."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    diffusers: Any = importlib.import_module("diffusers")  # untyped constructors, as Any for mypy
    AutoencoderKL = diffusers.AutoencoderKL
    EulerDiscreteScheduler = diffusers.EulerDiscreteScheduler
    StableDiffusionPipeline = diffusers.StableDiffusionPipeline
    StableDiffusionXLPipeline = diffusers.StableDiffusionXLPipeline
    UNet2DConditionModel = diffusers.UNet2DConditionModel

    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    # Four VAE blocks: the same 8x latent downscale as real SD, so sizes behave the same way.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 16, 16],
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    unet_common: dict[str, Any] = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (16, 32),
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    if kind == "sd":
        unet = UNet2DConditionModel(cross_attention_dim=TEXT_HIDDEN, **unet_common)
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer))
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        cross_attention_dim=2 * TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        use_linear_projection=True,
        **unet_common,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def write_tiny_pipeline(directory: Path, kind: str = "sd") -> None:
    """Write the smoke-test pipeline and its marker file into ``directory`` (created if missing)."""
    directory = Path(directory)
    pipeline = build_tiny_pipeline(kind)
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    marker = {
        "smoke_test": True,
        "kind": kind,
        "seed": SEED,
        "description": "KubeDiffusion tiny model: random weights, makes noise, not pictures. For smoke tests only.",
        # The server uses these when none were configured.
        "defaults": TINY_DEFAULTS.model_dump(mode="json", by_alias=True),
    }
    (directory / SMOKE_TEST_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    log.warning("wrote the tiny smoke-test %s pipeline (random weights) to %s", kind, directory)


def write_tiny_preview_decoder(directory: Path) -> Path:
    """A random-weight ``AutoencoderTiny`` (same 8x latent scale, 4 latent channels) in ``directory/taesd``."""
    import torch

    diffusers: Any = importlib.import_module("diffusers")
    torch.manual_seed(SEED)
    tiny = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    target = Path(directory) / PREVIEW_DECODER_DIR
    tiny.save_pretrained(str(target), safe_serialization=True)
    return target


def read_smoke_test_marker(directory: Path) -> dict[str, Any] | None:
    """The marker's contents when ``directory`` holds the tiny model, else None."""
    path = Path(directory) / SMOKE_TEST_MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("smoke_test") is True else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubediffusion tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where to write the pipeline")
    parser.add_argument("--kind", choices=KINDS, default="sd", help="pipeline shape (default: sd)")
    parser.add_argument(
        "--preview-decoder", action="store_true", help=f"also write a tiny AutoencoderTiny in {PREVIEW_DECODER_DIR}/"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        write_tiny_pipeline(args.directory, args.kind)
        if args.preview_decoder:
            write_tiny_preview_decoder(args.directory)
    except OSError as exc:
        log.error("could not write the tiny model to %s: %s", args.directory, exc)
        return 1
    sys.stdout.write(f"{args.directory}\n")
    return 0
