"""L1b: L0 files -> uncal FITS (``reformat`` is pure, ``service`` the Kafka service)."""
