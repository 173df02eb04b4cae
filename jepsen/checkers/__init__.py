"""Checkers: pure functions from a history to a verdict a person can read."""
