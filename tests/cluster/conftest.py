"""Cluster fixtures (control_plane, api_client, namespace): see tests/support/fixtures.py."""

from tests.support.fixtures import api_client, control_plane, namespace

__all__ = ["api_client", "control_plane", "namespace"]
