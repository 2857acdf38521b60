"""Key bundles, signed envelopes and the key-ring policy: one module for every process."""
