"""Recognizer service: scrambled faces in, identities out (issue 7)."""
