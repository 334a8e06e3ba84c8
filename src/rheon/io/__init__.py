"""Sources and sinks.

Sources: :class:`Records`, :class:`Generator`, :class:`JsonLines`, :class:`Csv`, :class:`Parquet`,
:class:`Kafka`, :class:`Mqtt`, :class:`HttpIngest`.
Sinks: :class:`Collect`, :class:`Show` (``stream.show``), :class:`Callback`, :class:`Console`, :class:`FileSink`, :class:`KafkaSink`,
:class:`Postgres`, :class:`Redis`, :class:`Webhook`.
Connectors' client libraries are optional extras (``pip install 'rheon[kafka]'``, ``[mqtt]``,
``[http]``, ``[postgres]``, ``[redis]``) imported when a connector is built.
Extension points: :class:`Source` / :class:`SourceLogic` and :class:`Sink` / :class:`SinkLogic`.
"""

from rheon.io.base import BuildContext, Sink, SinkLogic, Source, SourceLogic
from rheon.io.callback import Callback
from rheon.io.collect import Collect
from rheon.io.console import Console
from rheon.io.files import Csv, JsonLines, Parquet
from rheon.io.filesink import FileSink
from rheon.io.generator import Generator
from rheon.io.http import HttpIngest
from rheon.io.kafka import Kafka, KafkaSink
from rheon.io.mqtt import Mqtt
from rheon.io.postgres import Postgres
from rheon.io.records import Records
from rheon.io.redis import Redis
from rheon.io.show import Show
from rheon.io.webhook import Webhook

__all__ = [
    "BuildContext",
    "Callback",
    "Collect",
    "Console",
    "Csv",
    "FileSink",
    "Generator",
    "HttpIngest",
    "JsonLines",
    "Kafka",
    "KafkaSink",
    "Mqtt",
    "Parquet",
    "Postgres",
    "Records",
    "Redis",
    "Show",
    "Sink",
    "SinkLogic",
    "Source",
    "SourceLogic",
    "Webhook",
]
