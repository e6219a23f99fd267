"""downlink: streaming telemetry processor for a JWST-like observatory."""

__version__ = "0.1.0"
