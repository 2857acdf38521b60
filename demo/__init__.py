"""``rllfpr demo``: the whole pipeline on one machine, with a key rotation in the middle."""
