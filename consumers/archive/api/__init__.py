"""The archive API (FastAPI): one router per resource under /api/v1, assembled in ``app``."""
