"""AUTOMATIC1111's stable-diffusion-webui (``--api``): ``POST /sdapi/v1/txt2img`` and ``/sdapi/v1/img2img``.

One job is one call: ``batch_size`` images per iteration (at most ``engine_max_n``) and ``n_iter``
iterations; the webui gives image ``i`` the seed ``seed + i``, as we do. ``cfg_scale`` is our guidance,
``steps`` our steps; the checkpoint (``engine_model``) goes in ``override_settings`` so the webui
switches to it for this call and back afterwards. Images come back as base64 PNG (the webui encodes in
its ``samples_format`` option, png by default), so only ``output_format: png`` is offered.

Edits are ``img2img``: ``init_images`` the upload as sent, ``denoising_strength`` our strength, and the
explicit mask as ``mask`` with ``inpainting_mask_invert: 1``: the webui reads an RGBA mask's alpha as
"opaque = repaint" (alpha above 128), so inverted, the transparent pixels are repainted, our rule
(pixels with alpha up to 128, where ours say alpha 0; a soft edge is treated a little differently).
The webui cannot read an image's own transparency as its mask, so such an edit without ``mask`` is a
400. Credentials: the webui's ``--api-auth user:password`` (HTTP Basic); the key must be ``user:password``.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import httpx

from kubediffusion.inference.backend import BackendDescription, ImageJob, ModelLoadError
from kubediffusion.inference.engines.base import Capabilities, EngineRequest
from kubediffusion.inference.engines.errors import unsupported
from kubediffusion.inference.engines.http import Upstream
from kubediffusion.inference.settings import InferenceSettings

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
HEALTH = "/sdapi/v1/progress?skip_current_image=true"
CAPABILITIES = Capabilities(output_formats=frozenset({"png"}))


class Automatic1111Engine:
    def __init__(
        self, settings: InferenceSettings, key: str | None, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        auth = None
        if key is not None:
            user, colon, password = key.partition(":")
            if not colon:
                raise ModelLoadError("the automatic1111 credential must be user:password (the webui's --api-auth)")
            auth = httpx.BasicAuth(user, password)
        self.settings = settings
        self.upstream = Upstream(
            "automatic1111",
            settings.engine_url,
            timeout=settings.engine_timeout_seconds,
            auth=auth,
            transport=transport,
        )
        self._description = BackendDescription(
            pipeline_class=f"automatic1111:{settings.engine_model or 'current checkpoint'}",
            device="upstream",
            dtype="n/a",
            edit_kinds=("img2img", "inpaint"),
        )

    @property
    def description(self) -> BackendDescription:
        return self._description

    def check(self, request: EngineRequest) -> None:
        CAPABILITIES.check("automatic1111", request)
        if request.task == "edit" and request.alpha_without_mask:
            raise unsupported(
                "mask",
                "The automatic1111 engine cannot read an image's transparency as its mask: send the mask as "
                "'mask', or an image without an alpha channel to edit it whole.",
            )

    async def probe(self) -> None:
        await self.upstream.probe(HEALTH, self.settings.engine_ready_timeout_seconds)

    def payload(self, job: ImageJob) -> dict[str, Any]:
        params = job.params
        batch = min(params.n, self.settings.engine_max_n)
        body: dict[str, Any] = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "seed": job.seeds[0],
            "steps": params.steps,
            "cfg_scale": params.guidance,
            "width": params.width,
            "height": params.height,
            "batch_size": batch,
            "n_iter": math.ceil(params.n / batch),
            "send_images": True,
            "save_images": False,
        }
        if self.settings.engine_sampler:
            body["sampler_name"] = self.settings.engine_sampler
        if self.settings.engine_model:
            body["override_settings"] = {"sd_model_checkpoint": self.settings.engine_model}
            body["override_settings_restore_afterwards"] = True
        upload = job.upload
        if upload is not None:
            body["init_images"] = [base64.b64encode(upload.image.data).decode("ascii")]
            body["denoising_strength"] = upload.strength
            body["resize_mode"] = 0  # just resize to width x height
            if upload.mask is not None:
                body["mask"] = base64.b64encode(upload.mask.data).decode("ascii")
                body["inpainting_mask_invert"] = 1
                body["inpainting_fill"] = 1  # start from the original pixels under the mask
                body["inpaint_full_res"] = False
        return body

    async def generate(self, job: ImageJob) -> list[bytes]:
        path = TXT2IMG if job.upload is None else IMG2IMG
        answer = await self.upstream.json("POST", path, json=self.payload(job))
        images = answer.get("images") if isinstance(answer, dict) else None
        if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
            raise self.upstream.malformed(f"{path} answered without an 'images' list of base64 strings")
        if len(images) < job.params.n:
            raise self.upstream.malformed(f"{path} answered {len(images)} images, {job.params.n} were asked for")
        try:
            return [base64.b64decode(image, validate=True) for image in images[: job.params.n]]
        except ValueError:
            raise self.upstream.malformed(f"{path} answered images that are not base64") from None

    async def aclose(self) -> None:
        await self.upstream.aclose()
