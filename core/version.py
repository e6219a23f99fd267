"""The software version recorded in every product (L0 manifests, FITS SDP_VER/CAL_VER)."""

from __future__ import annotations

from importlib import metadata

try:
    SOFTWARE_VERSION = metadata.version("downlink")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    SOFTWARE_VERSION = "0.0.0+source"
