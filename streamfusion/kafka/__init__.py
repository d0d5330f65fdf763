"""The Kafka side of streamfusion; the only package that imports ``confluent_kafka``.

``produce`` replays a log into a topic; ``serve`` runs the daemon (``daemon``), built from
``source`` (the consumer as a :class:`~streamfusion.online.source.Source`), ``messages``
(validation, dead-letter reasons), ``encoding`` (JSON events -> Batch),
``joins`` (bounded label join), ``metrics`` (Prometheus) and ``formats`` (raw event layouts).
"""
