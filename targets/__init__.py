"""Builtin target specs (YAML), shipped as package data and loaded by name."""
