"""Sources and sinks.

Sources: :class:`Records`, :class:`Generator`, :class:`JsonLines`, :class:`Csv`, :class:`Parquet`,
:class:`Kafka`.
Sinks: :class:`Collect`, :class:`Callback`, :class:`Console`, :class:`FileSink`, :class:`KafkaSink`.
Connectors' client libraries are optional extras (``pip install 'rheon[kafka]'``) imported when
a connector is built.
Extension points: :class:`Source` / :class:`SourceLogic` and :class:`Sink` / :class:`SinkLogic`.
"""

from rheon.io.base import BuildContext, Sink, SinkLogic, Source, SourceLogic
from rheon.io.callback import Callback
from rheon.io.collect import Collect
from rheon.io.console import Console
from rheon.io.files import Csv, JsonLines, Parquet
from rheon.io.filesink import FileSink
from rheon.io.generator import Generator
from rheon.io.kafka import Kafka, KafkaSink
from rheon.io.records import Records

__all__ = [
    "BuildContext",
    "Callback",
    "Collect",
    "Console",
    "Csv",
    "FileSink",
    "Generator",
    "JsonLines",
    "Kafka",
    "KafkaSink",
    "Parquet",
    "Records",
    "Sink",
    "SinkLogic",
    "Source",
    "SourceLogic",
]
