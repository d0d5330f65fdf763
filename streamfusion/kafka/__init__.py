"""The Kafka side of streamfusion; the only package that imports ``confluent_kafka``.

``produce`` replays a log into a topic; ``serve`` runs the daemon (``daemon``), built from
``messages`` (validation, dead-letter reasons), ``encoding`` (JSON events -> Batch),
``joins`` (bounded label join), ``metrics`` (Prometheus) and ``formats`` (raw event layouts).
"""
