"""RLLFPR shared core: configuration, wire protocol and key bundles.

Light to import: nothing here pulls in torch, OpenCV or a network client at import time.
"""

__version__ = "0.1.0"
