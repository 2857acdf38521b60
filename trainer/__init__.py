"""Training, evaluation and key rotation."""
