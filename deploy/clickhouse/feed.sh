#!/usr/bin/env bash
# A small live feed of market-data trades for the compose stack.
#
# Runs in the clickhouse/clickhouse-server image (it only needs clickhouse-client). On start it
# waits for the schema (config/clickhouse/schema.sql, applied by the server's init scripts); if
# the bronze tables are empty it backfills FEED_BACKFILL_ROWS trades per exchange spread over
# the last FEED_BACKFILL_HOURS hours; then every FEED_INTERVAL seconds it inserts FEED_ROWS
# trades per exchange (binance, kraken, coinbase). Materialized views carry every insert on to
# k2.silver_trades and the gold OHLCV tables.
#
# Environment:
#   CLICKHOUSE_HOST (clickhouse), CLICKHOUSE_PORT (9000), CLICKHOUSE_USER, CLICKHOUSE_PASSWORD
#   FEED_ROWS (5, at most 1000: the batch position is part of sequence_number), FEED_INTERVAL (1),
#   FEED_BACKFILL_ROWS (20000), FEED_BACKFILL_HOURS (6)
#   FEED_PRINT_SQL=1: print the SQL of one backfill and one live batch and exit (used by
#   tests/test_stack.py, which runs it against the schema in chDB).
set -uo pipefail

FEED_ROWS="${FEED_ROWS:-5}"
FEED_INTERVAL="${FEED_INTERVAL:-1}"
FEED_BACKFILL_ROWS="${FEED_BACKFILL_ROWS:-20000}"
FEED_BACKFILL_HOURS="${FEED_BACKFILL_HOURS:-6}"
EXCHANGES=(binance kraken coinbase)
if [ "$FEED_ROWS" -gt 1000 ]; then
  echo "feed: FEED_ROWS must be at most 1000 (the batch position is part of sequence_number)" >&2
  exit 2
fi

# insert_sql EXCHANGE ROWS SPAN_SECONDS
# One INSERT ... SELECT of ROWS trades into k2.bronze_trades_<EXCHANGE>, with ingestion times
# spread evenly over the last SPAN_SECONDS (0: all at the server's now64()). The cursor
# (ingestion_timestamp, sequence_number) is unique: sequence_number is the ingestion time in
# microseconds times 1000 plus the row's position in the batch.
insert_sql() {
  local exchange="$1" rows="$2" span="$3" symbols bases prefix extra_cols extra_exprs
  case "$exchange" in
    binance)
      symbols="'BTCUSDT', 'ETHUSDT', 'SOLUSDT'"; prefix="b"
      extra_cols=", buyer_order_id, seller_order_id, is_best_match"
      extra_exprs=", rand64(7) % 1000000000000 AS buyer_order_id, rand64(8) % 1000000000000 AS seller_order_id, true AS is_best_match"
      ;;
    kraken)
      symbols="'XBT/USD', 'ETH/USD', 'SOL/USD'"; prefix="k"
      extra_cols=", order_type, misc"
      extra_exprs=", if(rand(7) % 4 = 0, 'limit', 'market') AS order_type, '' AS misc"
      ;;
    coinbase)
      symbols="'BTC-USD', 'ETH-USD', 'SOL-USD'"; prefix="c"
      extra_cols=", maker_order_id, taker_order_id"
      extra_exprs=", generateUUIDv4(7) AS maker_order_id, generateUUIDv4(8) AS taker_order_id"
      ;;
    *) echo "feed: unknown exchange $exchange" >&2; return 1 ;;
  esac
  bases="65000, 3400, 150"
  cat <<SQL
INSERT INTO k2.bronze_trades_${exchange}
    (exchange_timestamp, ingestion_timestamp, sequence_number, trade_id, symbol, side, price, quantity, is_buyer_maker${extra_cols})
SELECT
    toDateTime64(ts - toIntervalMillisecond(rand(1) % 250), 3, 'UTC') AS exchange_timestamp,
    ts AS ingestion_timestamp,
    toUInt64(toUnixTimestamp64Micro(ts)) * 1000 + number % 1000 AS sequence_number,
    concat('${prefix}', toString(sequence_number)) AS trade_id,
    [${symbols}][s] AS symbol,
    if(rand(2) % 2 = 0, 'buy', 'sell') AS side,
    toDecimal64([${bases}][s] * (1 + 0.02 * sin(toUnixTimestamp64Milli(ts) / 3600000.0) + (toInt32(rand(3) % 2001) - 1000) / 1000000.0), 8) AS price,
    toDecimal64((rand(4) % 100000 + 1) / 100000.0, 8) AS quantity,
    rand(5) % 2 = 1 AS is_buyer_maker${extra_exprs}
FROM
(
    SELECT
        number,
        1 + rand(6) % 3 AS s,
        now64(6, 'UTC') - toIntervalMicrosecond(intDiv((${rows} - 1 - number) * ${span}000000, ${rows})) AS ts
    FROM numbers(${rows})
)
SQL
}

if [ "${FEED_PRINT_SQL:-0}" = "1" ]; then
  for exchange in "${EXCHANGES[@]}"; do
    insert_sql "$exchange" "$FEED_BACKFILL_ROWS" "$((FEED_BACKFILL_HOURS * 3600))"; echo ";"
    insert_sql "$exchange" "$FEED_ROWS" 0; echo ";"
  done
  exit 0
fi

ch() {
  clickhouse-client --host "${CLICKHOUSE_HOST:-clickhouse}" --port "${CLICKHOUSE_PORT:-9000}" \
    --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" "$@"
}

trap 'echo "feed: stopping"; exit 0' TERM INT

echo "feed: waiting for the k2 schema on ${CLICKHOUSE_HOST:-clickhouse}"
until [ "$(ch --query "EXISTS TABLE k2.bronze_trades_coinbase" 2>/dev/null)" = "1" ]; do
  sleep 2
done

if [ "$(ch --query "SELECT count() FROM k2.bronze_trades_binance")" = "0" ] && [ "$FEED_BACKFILL_ROWS" -gt 0 ]; then
  echo "feed: backfilling ${FEED_BACKFILL_ROWS} trades per exchange over ${FEED_BACKFILL_HOURS}h"
  for exchange in "${EXCHANGES[@]}"; do
    insert_sql "$exchange" "$FEED_BACKFILL_ROWS" "$((FEED_BACKFILL_HOURS * 3600))" | ch --multiquery || exit 1
  done
fi

echo "feed: inserting ${FEED_ROWS} trades per exchange every ${FEED_INTERVAL}s"
while true; do
  for exchange in "${EXCHANGES[@]}"; do
    insert_sql "$exchange" "$FEED_ROWS" 0 | ch --multiquery || echo "feed: insert into bronze_trades_${exchange} failed; retrying" >&2
  done
  sleep "$FEED_INTERVAL" &
  wait $!
done
