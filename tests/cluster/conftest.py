"""Cluster fixtures (control_plane, api_client, namespace, CRD, storage, operator) come from tests/conftest.py."""
