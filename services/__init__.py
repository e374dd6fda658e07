"""Votes: up/down votes on posts, counted exactly once, on Nameko."""

__version__ = "1.0.0"
