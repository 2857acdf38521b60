"""The wire protocol: topic names, payload models, the face-message codec, JSON Schemas."""
