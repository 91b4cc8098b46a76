"""facesyncd: keeps numbered face-identity folders in sync with an Immich library."""

__version__ = "0.1.0"
