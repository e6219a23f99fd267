"""The live engineering dashboard: an Open MCT web app served over HTTP (``downlink dashboard``)."""
