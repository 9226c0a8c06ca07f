"""Helpers shared by the fault, load and benchmark runs (not a test module)."""
