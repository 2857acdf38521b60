"""Research: the studies behind the defaults (design, screen, privacy, open set, rotation
linkage). Each writes its results to docs/results/; nothing in the agent, the recognizer or the
product trainer imports them."""
