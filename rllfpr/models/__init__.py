"""Model definitions (torch): the scrambler network and the recognizers."""
