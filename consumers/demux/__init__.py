"""demux."""
