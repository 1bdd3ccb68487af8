"""Encoding answers off the pipeline thread, so the accelerator never waits for zlib.

The pipeline thread generates a batch, runs the safety checker and hands the images (already uint8,
converted on the device: :mod:`.shapes`) to this pool: a few threads, since Pillow releases the GIL
while it compresses. Each image is encoded on its own (PNG at the server's ``png_compress_level``,
JPEG/WebP at the request's quality), so a job's images encode in parallel and requests that differ only
in output format share a batch. Each job's answer is a ``concurrent.futures.Future`` the batcher
settles when its images are done, while the next batch already runs; the batch's ``encode`` phase
ends when the last of its images is encoded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from kubediffusion.inference.backend import ImageJob
from kubediffusion.inference.encoding import DEFAULT_PNG_LEVEL, encode_image, to_b64
from kubediffusion.inference.moderation import JobImages, Moderated

if TYPE_CHECKING:
    from PIL.Image import Image

ENCODE_THREADS = 2


class EncodePool:
    def __init__(self, png_level: int = DEFAULT_PNG_LEVEL, threads: int = ENCODE_THREADS) -> None:
        self.png_level = png_level
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kd-encode")

    def encode(self, image: Image, job: ImageJob) -> str:
        params = job.params
        return to_b64(encode_image(image, params.output_format, params.output_compression, png_level=self.png_level))

    def submit(
        self, jobs: Sequence[ImageJob], results: Sequence[Moderated], on_done: Callable[[], None] | None = None
    ) -> list[Future[JobImages]]:
        """One future per job, its base64 images in order; ``on_done`` runs (in a pool thread) once every
        image of the batch is encoded, failed or not."""
        parts = [
            [self._executor.submit(self.encode, image, job) for image in done.images]
            for job, done in zip(jobs, results, strict=True)
        ]
        remaining = sum(len(images) for images in parts)
        lock = threading.Lock()

        def counted(_: Future[str]) -> None:
            nonlocal remaining
            with lock:
                remaining -= 1
                last = remaining == 0
            if last and on_done is not None:
                on_done()

        if remaining == 0 and on_done is not None:
            on_done()
        for images in parts:  # before the answers' callbacks (a future runs them in order): the batch's
            for image in images:  # encode phase is recorded before its last answer is delivered
                image.add_done_callback(counted)
        return [_joined(images, done) for images, done in zip(parts, results, strict=True)]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _joined(parts: list[Future[str]], done: Moderated) -> Future[JobImages]:
    """A future of the job's answer, settled when all its images are (the first failure fails it)."""
    answer: Future[JobImages] = Future()
    remaining = len(parts)
    lock = threading.Lock()

    def settle(_: Future[str]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if remaining:
                return
        try:
            answer.set_result(JobImages([part.result() for part in parts], done.flagged, done.blurred))
        except BaseException as exc:  # an image that failed to encode (or was cancelled at shutdown)
            answer.set_exception(exc)

    if not parts:
        answer.set_result(JobImages([], done.flagged, done.blurred))
    for part in parts:
        part.add_done_callback(settle)
    return answer
