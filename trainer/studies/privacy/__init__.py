"""Privacy and security evaluation (issue 5): the paper's image metrics (§4.3, Tables 2-5),
its baselines, recognition accuracy of each under the closed-set protocol, and the attacks the
paper does not run (inversion, linkage across keys, revocation). ``rllfpr eval privacy``."""
