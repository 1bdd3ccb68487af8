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

Extras, so adapters, component overrides and the safety checker run through real diffusers code (the
layout mirrors the cache's, docs/pipelines.md): ``write_tiny_lora(dir, name)`` writes a random LoRA for
the UNet and text encoder(s) to ``adapters/<name>/pytorch_lora_weights.safetensors`` (peft's LoRA layers
and diffusers' ``save_lora_weights``, as diffusers' training scripts do); ``write_tiny_vae_override`` a
second VAE with other random weights to ``components/vae/`` (a model directory);
``write_tiny_unet_override`` a second UNet as a bare state dict, ``components/unet/tiny_unet.safetensors``
(as SDXL-Lightning ships its UNets); ``safety_checker=`` of ``write_tiny_pipeline`` bundles a tiny
``StableDiffusionSafetyChecker`` as SD 1.x repositories do (``safety_checker/``, ``feature_extractor/``).
That checker flags an image when the cosine similarity of its embedding to a concept exceeds the
concept's threshold; similarities lie in [-1, 1], so thresholds of -2 flag every image (``flag-all``)
and thresholds of 2 none (``flag-none``), whatever the random weights.

``kubediffusion tiny-model DIR [--kind sd|sdxl] [--preview-decoder] [--lora NAME]... [--vae-override]
[--unet-override] [--safety-checker [flag-all|flag-none]]`` runs ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

from kubediffusion.imagemodel.tiny import SMOKE_TEST_MARKER, TINY_DEFAULTS

log = logging.getLogger(__name__)

KINDS = ("sd", "sdxl")
PREVIEW_DECODER_DIR = "taesd"  # an AutoencoderTiny here decodes streamed partial images
ADAPTERS_DIR = "adapters"
COMPONENTS_DIR = "components"
TINY_UNET_FILE = "tiny_unet.safetensors"
CHECKER_MODES = ("flag-all", "flag-none")
LORA_RANK = 4
LORA_STD = 0.5  # of the random up matrices: enough to change every image visibly
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


def build_tiny_safety_checker(mode: str = "flag-all") -> tuple[Any, Any]:
    """A random ``StableDiffusionSafetyChecker`` (tiny CLIP vision tower) and its image processor; thresholds
    per ``mode`` (see the module docstring)."""
    if mode not in CHECKER_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHECKER_MODES)}, got {mode!r}")
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor

    checkers: Any = importlib.import_module("diffusers.pipelines.stable_diffusion.safety_checker")
    torch.manual_seed(SEED)
    tower = {"hidden_size": TEXT_HIDDEN, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    text = {**tower, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    config = CLIPConfig(text_config=text, vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16)
    checker = checkers.StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        for thresholds in (checker.concept_embeds_weights, checker.special_care_embeds_weights):
            thresholds.fill_(-2.0 if mode == "flag-all" else 2.0)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


def write_tiny_pipeline(directory: Path, kind: str = "sd", *, safety_checker: str | None = None) -> None:
    """Write the smoke-test pipeline and its marker file into ``directory`` (created if missing); with
    ``safety_checker`` (a mode, SD only) bundling a tiny checker the way SD 1.x repositories do."""
    directory = Path(directory)
    pipeline = build_tiny_pipeline(kind)
    if safety_checker is not None:
        if kind != "sd":
            raise ValueError("only the sd pipeline bundles a safety checker")
        checker, processor = build_tiny_safety_checker(safety_checker)
        pipeline.register_modules(safety_checker=checker, feature_extractor=processor)
        pipeline.register_to_config(requires_safety_checker=True)
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    if safety_checker is not None:  # also loadable on its own, as CompVis/stable-diffusion-safety-checker is
        pipeline.feature_extractor.save_pretrained(str(directory / "safety_checker"))
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


def write_tiny_lora(directory: Path, name: str, kind: str = "sd") -> Path:
    """A random LoRA (seeded by ``name``: two names, two adapters) in ``directory/adapters/<name>``."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    diffusers_utils: Any = importlib.import_module("diffusers.utils")
    pipeline = build_tiny_pipeline(kind)
    torch.manual_seed(zlib.crc32(name.encode("utf-8")))
    targets = {
        "unet_lora_layers": (pipeline.unet, ["to_q", "to_k", "to_v", "to_out.0"]),
        "text_encoder_lora_layers": (pipeline.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"]),
    }
    if kind == "sdxl":
        targets["text_encoder_2_lora_layers"] = (pipeline.text_encoder_2, ["q_proj", "k_proj", "v_proj", "out_proj"])
    layers = {}
    for key, (module, target_modules) in targets.items():
        inject_adapter_in_model(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=target_modules), module)
        with torch.no_grad():  # peft starts the up matrices at zero (a no-op adapter)
            for param_name, param in module.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, LORA_STD)
        layers[key] = diffusers_utils.convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    target = Path(directory) / ADAPTERS_DIR / name
    type(pipeline).save_lora_weights(str(target), **layers, safe_serialization=True)
    return target


def write_tiny_vae_override(directory: Path, kind: str = "sd") -> Path:
    """The tiny VAE's architecture with other random weights, a model directory in ``components/vae``."""
    import torch

    diffusers: Any = importlib.import_module("diffusers")
    config = build_tiny_pipeline(kind).vae.config
    torch.manual_seed(SEED + 1)
    target = Path(directory) / COMPONENTS_DIR / "vae"
    diffusers.AutoencoderKL.from_config(config).save_pretrained(str(target), safe_serialization=True)
    return target


def write_tiny_unet_override(directory: Path, kind: str = "sd") -> Path:
    """The tiny UNet with other random weights as a bare state dict: ``components/unet/tiny_unet.safetensors``."""
    import torch
    from safetensors.torch import save_file

    diffusers: Any = importlib.import_module("diffusers")
    config = build_tiny_pipeline(kind).unet.config
    torch.manual_seed(SEED + 1)
    unet = diffusers.UNet2DConditionModel.from_config(config)
    target = Path(directory) / COMPONENTS_DIR / "unet" / TINY_UNET_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in unet.state_dict().items()}, str(target))
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
    parser.add_argument(
        "--lora", action="append", default=[], metavar="NAME", help=f"also write a random LoRA in {ADAPTERS_DIR}/NAME/"
    )
    parser.add_argument("--vae-override", action="store_true", help=f"also write another VAE in {COMPONENTS_DIR}/vae/")
    parser.add_argument(
        "--unet-override",
        action="store_true",
        help=f"also write another UNet, {COMPONENTS_DIR}/unet/{TINY_UNET_FILE}",
    )
    parser.add_argument(
        "--safety-checker",
        nargs="?",
        const="flag-all",
        choices=CHECKER_MODES,
        help="bundle a tiny safety checker (sd only) that flags every image (flag-all, the default) or none",
    )
    args = parser.parse_args(argv)
    if args.safety_checker is not None and args.kind != "sd":
        parser.error("--safety-checker: only the sd pipeline bundles a safety checker")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        write_tiny_pipeline(args.directory, args.kind, safety_checker=args.safety_checker)
        if args.preview_decoder:
            write_tiny_preview_decoder(args.directory)
        for name in args.lora:
            write_tiny_lora(args.directory, name, args.kind)
        if args.vae_override:
            write_tiny_vae_override(args.directory, args.kind)
        if args.unet_override:
            write_tiny_unet_override(args.directory, args.kind)
    except OSError as exc:
        log.error("could not write the tiny model to %s: %s", args.directory, exc)
        return 1
    sys.stdout.write(f"{args.directory}\n")
    return 0
