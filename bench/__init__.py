"""Measurements of the product driven from outside, as a user would (later issues)."""

__all__: list[str] = []
