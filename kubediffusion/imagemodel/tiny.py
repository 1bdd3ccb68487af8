"""The tiny random-weight smoke-test model's serving defaults, limits and marker file: one definition.

The pipeline writer (:mod:`kubediffusion.tinymodel`) records ``TINY_DEFAULTS`` in the marker it
writes; an ImageModel with ``source.tiny`` and ``kubediffusion local`` serve with the same values.
Guidance is above 1 so the smoke test runs classifier-free guidance, the path real models take.
"""

from __future__ import annotations

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits

# The tiny pipeline makes 64x64 noise; real-model defaults (1024x1024) would be absurd for it.
TINY_DEFAULTS = GenerationDefaults(steps=2, guidance=5.0, size="64x64")
TINY_LIMITS = GenerationLimits(min_size=32, max_size=256, max_n=4, max_steps=8)
TINY_NAME = "tiny-sd"

# A file in the model directory that says "this is the smoke-test model" (and its defaults).
SMOKE_TEST_MARKER = "kubediffusion-smoke-test.json"
