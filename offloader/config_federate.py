"""Validation of the ``[federate]`` section: the ClickHouse views over warm and cold rows.

:class:`FederateChecks` adds to :class:`~offloader.config_checks.Checks` the reading of
``[federate]`` into a :class:`~offloader.config.FederateConfig`, every key checked and named
in its message. An S3 warehouse (or a REST catalog, whose tables live in object storage)
needs the name of a ClickHouse named collection holding the credentials, so that no secret
is ever written into a view's DDL, and an endpoint ClickHouse reaches the bucket at.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from offloader.config import IDENTIFIER, CatalogConfig, FederateConfig
from offloader.config_checks import Checks

KEYS = {"enabled", "database", "warehouse_path", "s3_endpoint", "named_collection"}
_ENDPOINT = re.compile(r"^https?://[^/\s'\\]+/?$")


def on_object_storage(catalog: CatalogConfig) -> bool:
    """Whether the tables' files live in S3: an s3:// warehouse, or a REST catalog's."""
    scheme = urlsplit(catalog.warehouse).scheme
    return scheme in {"s3", "s3a", "s3n"} or catalog.properties.get("type") == "rest"


class FederateChecks(Checks):
    """The checks of ``[federate]``, mixed into the loader's validator."""

    def federate(self, s: dict[str, Any], catalog: CatalogConfig | None) -> FederateConfig:
        self.unknown_keys("federate", s, KEYS)
        enabled = self.boolean("federate.enabled", s.get("enabled"), False)
        names = {}
        for key in ("database", "named_collection"):
            value = s.get(key)
            if value is not None and not (isinstance(value, str) and IDENTIFIER.match(value)):
                self.problem(f"federate.{key}", value, "expected a ClickHouse identifier (letters, digits, _)")
            elif value is not None:
                names[key] = value
        endpoint = s.get("s3_endpoint")
        if endpoint is not None and not (isinstance(endpoint, str) and _ENDPOINT.match(endpoint)):
            self.problem("federate.s3_endpoint", endpoint, "expected http(s)://host[:port], e.g. http://minio:9000")
            endpoint = None
        path = s.get("warehouse_path")
        if path is not None and not (isinstance(path, str) and path.startswith("/") and "'" not in path):
            self.problem(
                "federate.warehouse_path", path, "expected an absolute path, e.g. /var/lib/clickhouse/user_files/warehouse"
            )
            path = None
        if enabled and catalog is not None and on_object_storage(catalog):
            if "named_collection" not in names and "named_collection" not in s:
                self.problems.append(
                    "federate.named_collection: missing; the tables are in object storage, and ClickHouse reads them "
                    "with the credentials of a named collection (CREATE NAMED COLLECTION ... AS access_key_id = ..., "
                    "secret_access_key = ...), so that no secret is written into a view"
                )
            if endpoint is None and "s3.endpoint" not in catalog.properties and "s3_endpoint" not in s:
                self.problems.append(
                    "federate.s3_endpoint: missing (and catalog.s3.endpoint is not set); "
                    "e.g. https://s3.eu-west-1.amazonaws.com or http://minio:9000"
                )
        return FederateConfig(
            enabled=enabled, database=names.get("database"), warehouse_path=path, s3_endpoint=endpoint,
            named_collection=names.get("named_collection"),
        )  # fmt: skip
