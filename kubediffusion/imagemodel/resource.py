"""The ImageModel custom resource's coordinates (crds/imagemodel.yaml says the same)."""

from __future__ import annotations

GROUP = "kubediffusion.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ImageModel"
PLURAL = "imagemodels"
