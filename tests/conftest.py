"""Shared fixtures (placeholder, filled in below)."""
