"""Torch-only parts shared by several methods (no Lightning imports here)."""
