"""The fuzz tests' Hypothesis profile (see profiles.py) is loaded before they are collected."""

from . import profiles  # noqa: F401
