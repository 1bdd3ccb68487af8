"""Test support: local control plane, fake nodes, waiting helpers, shared fixtures."""
