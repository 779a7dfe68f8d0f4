"""The Kafka event streamer and connector on aiokafka. Needs the ``kafka`` extra
(``pip install "aioworkflow[kafka]"``).

    from workflow.adapters.kafka import KafkaConnector, KafkaStreamer
"""

from __future__ import annotations

from ._extras import require

require("kafka", "aiokafka")

from .kafkastreamer import KafkaConnector, KafkaStreamer  # noqa: E402

__all__ = ["KafkaConnector", "KafkaStreamer"]
