"""offloader: keeps a cold tier of Apache Iceberg tables exact and complete from ClickHouse."""

__version__ = "0.1.0"
