"""Serving: galleries and classifiers (``gallery``), enrol / query (``app``), the val report
(``report``), and the exported embedder (``export`` writes it, ``exported`` reads it)."""
