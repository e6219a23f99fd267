"""The archive: catalogue of programs, exposures, products and engineering samples, and its API.

``models`` (tables), ``db`` (engines, sessions, migrations), ``access`` (who
may see what: pure rules), ``visibility`` (the same rules as SQL),
``catalogue`` (idempotent ingest of l0.ready / cal.done / tlm.eng.recorded),
``store`` (product files secured by content hash), ``users`` (tokens),
``reprocess`` (reprocess requests), ``service`` (the Kafka sink), ``api``
(the FastAPI app and its server). docs/archive.md describes the whole.
"""
