"""offloader: keeps a cold tier of Apache Iceberg tables exact and complete from ClickHouse."""

import os

__version__ = "0.1.0"

# Arrow's jemalloc pool hands memory freed after a cycle back to the system (the service calls
# release_unused()); its default, mimalloc, keeps ~50 MB more of an idle service's RSS for the
# same throughput. Set before pyarrow is first imported; an explicit setting wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
