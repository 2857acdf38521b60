"""Helpers that several test modules share: test modules import them from here, not from
each other."""
