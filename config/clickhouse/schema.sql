-- The market-data demo schema (database k2): bronze trades per exchange, silver_trades
-- filled by materialized views, gold OHLCV bars (AggregatingMergeTree + finalizing views).
-- Generated from offloader.demo.schema_statements(); tests/test_demo.py keeps the two equal.
-- Regenerate: python -c 'from offloader import demo; print(demo.schema_sql(), end="")' > config/clickhouse/schema.sql

CREATE DATABASE IF NOT EXISTS k2;

CREATE TABLE IF NOT EXISTS k2.silver_trades
(
    exchange LowCardinality(String),
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    trade_id String,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    is_buyer_maker Bool
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(exchange_timestamp)
ORDER BY (ingestion_timestamp, exchange, sequence_number);

CREATE TABLE IF NOT EXISTS k2.gold_ohlcv_1m_agg
(
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol String,
    open AggregateFunction(argMin, Decimal(18, 8), UInt128),
    high AggregateFunction(max, Decimal(18, 8)),
    low AggregateFunction(min, Decimal(18, 8)),
    close AggregateFunction(argMax, Decimal(18, 8), UInt128),
    volume AggregateFunction(sum, Decimal(18, 8)),
    trade_count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.gold_ohlcv_1m_mv TO k2.gold_ohlcv_1m_agg
AS SELECT
    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 1 MINUTE), 'UTC') AS window_start,
    exchange,
    symbol,
    argMinState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS open,
    maxState(price) AS high,
    minState(price) AS low,
    argMaxState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS close,
    sumState(quantity) AS volume,
    countState() AS trade_count
FROM k2.silver_trades
GROUP BY window_start, exchange, symbol;

CREATE VIEW IF NOT EXISTS k2.gold_ohlcv_1m
AS SELECT
    window_start,
    exchange,
    symbol,
    argMinMerge(open) AS open,
    maxMerge(high) AS high,
    minMerge(low) AS low,
    argMaxMerge(close) AS close,
    sumMerge(volume) AS volume,
    countMerge(trade_count) AS trade_count
FROM k2.gold_ohlcv_1m_agg
GROUP BY window_start, exchange, symbol;

CREATE TABLE IF NOT EXISTS k2.gold_ohlcv_5m_agg
(
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol String,
    open AggregateFunction(argMin, Decimal(18, 8), UInt128),
    high AggregateFunction(max, Decimal(18, 8)),
    low AggregateFunction(min, Decimal(18, 8)),
    close AggregateFunction(argMax, Decimal(18, 8), UInt128),
    volume AggregateFunction(sum, Decimal(18, 8)),
    trade_count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.gold_ohlcv_5m_mv TO k2.gold_ohlcv_5m_agg
AS SELECT
    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 5 MINUTE), 'UTC') AS window_start,
    exchange,
    symbol,
    argMinState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS open,
    maxState(price) AS high,
    minState(price) AS low,
    argMaxState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS close,
    sumState(quantity) AS volume,
    countState() AS trade_count
FROM k2.silver_trades
GROUP BY window_start, exchange, symbol;

CREATE VIEW IF NOT EXISTS k2.gold_ohlcv_5m
AS SELECT
    window_start,
    exchange,
    symbol,
    argMinMerge(open) AS open,
    maxMerge(high) AS high,
    minMerge(low) AS low,
    argMaxMerge(close) AS close,
    sumMerge(volume) AS volume,
    countMerge(trade_count) AS trade_count
FROM k2.gold_ohlcv_5m_agg
GROUP BY window_start, exchange, symbol;

CREATE TABLE IF NOT EXISTS k2.gold_ohlcv_15m_agg
(
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol String,
    open AggregateFunction(argMin, Decimal(18, 8), UInt128),
    high AggregateFunction(max, Decimal(18, 8)),
    low AggregateFunction(min, Decimal(18, 8)),
    close AggregateFunction(argMax, Decimal(18, 8), UInt128),
    volume AggregateFunction(sum, Decimal(18, 8)),
    trade_count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.gold_ohlcv_15m_mv TO k2.gold_ohlcv_15m_agg
AS SELECT
    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 15 MINUTE), 'UTC') AS window_start,
    exchange,
    symbol,
    argMinState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS open,
    maxState(price) AS high,
    minState(price) AS low,
    argMaxState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS close,
    sumState(quantity) AS volume,
    countState() AS trade_count
FROM k2.silver_trades
GROUP BY window_start, exchange, symbol;

CREATE VIEW IF NOT EXISTS k2.gold_ohlcv_15m
AS SELECT
    window_start,
    exchange,
    symbol,
    argMinMerge(open) AS open,
    maxMerge(high) AS high,
    minMerge(low) AS low,
    argMaxMerge(close) AS close,
    sumMerge(volume) AS volume,
    countMerge(trade_count) AS trade_count
FROM k2.gold_ohlcv_15m_agg
GROUP BY window_start, exchange, symbol;

CREATE TABLE IF NOT EXISTS k2.gold_ohlcv_30m_agg
(
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol String,
    open AggregateFunction(argMin, Decimal(18, 8), UInt128),
    high AggregateFunction(max, Decimal(18, 8)),
    low AggregateFunction(min, Decimal(18, 8)),
    close AggregateFunction(argMax, Decimal(18, 8), UInt128),
    volume AggregateFunction(sum, Decimal(18, 8)),
    trade_count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.gold_ohlcv_30m_mv TO k2.gold_ohlcv_30m_agg
AS SELECT
    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 30 MINUTE), 'UTC') AS window_start,
    exchange,
    symbol,
    argMinState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS open,
    maxState(price) AS high,
    minState(price) AS low,
    argMaxState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS close,
    sumState(quantity) AS volume,
    countState() AS trade_count
FROM k2.silver_trades
GROUP BY window_start, exchange, symbol;

CREATE VIEW IF NOT EXISTS k2.gold_ohlcv_30m
AS SELECT
    window_start,
    exchange,
    symbol,
    argMinMerge(open) AS open,
    maxMerge(high) AS high,
    minMerge(low) AS low,
    argMaxMerge(close) AS close,
    sumMerge(volume) AS volume,
    countMerge(trade_count) AS trade_count
FROM k2.gold_ohlcv_30m_agg
GROUP BY window_start, exchange, symbol;

CREATE TABLE IF NOT EXISTS k2.gold_ohlcv_1h_agg
(
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol String,
    open AggregateFunction(argMin, Decimal(18, 8), UInt128),
    high AggregateFunction(max, Decimal(18, 8)),
    low AggregateFunction(min, Decimal(18, 8)),
    close AggregateFunction(argMax, Decimal(18, 8), UInt128),
    volume AggregateFunction(sum, Decimal(18, 8)),
    trade_count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.gold_ohlcv_1h_mv TO k2.gold_ohlcv_1h_agg
AS SELECT
    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 1 HOUR), 'UTC') AS window_start,
    exchange,
    symbol,
    argMinState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS open,
    maxState(price) AS high,
    minState(price) AS low,
    argMaxState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS close,
    sumState(quantity) AS volume,
    countState() AS trade_count
FROM k2.silver_trades
GROUP BY window_start, exchange, symbol;

CREATE VIEW IF NOT EXISTS k2.gold_ohlcv_1h
AS SELECT
    window_start,
    exchange,
    symbol,
    argMinMerge(open) AS open,
    maxMerge(high) AS high,
    minMerge(low) AS low,
    argMaxMerge(close) AS close,
    sumMerge(volume) AS volume,
    countMerge(trade_count) AS trade_count
FROM k2.gold_ohlcv_1h_agg
GROUP BY window_start, exchange, symbol;

CREATE TABLE IF NOT EXISTS k2.gold_ohlcv_1d_agg
(
    window_start DateTime('UTC'),
    exchange LowCardinality(String),
    symbol String,
    open AggregateFunction(argMin, Decimal(18, 8), UInt128),
    high AggregateFunction(max, Decimal(18, 8)),
    low AggregateFunction(min, Decimal(18, 8)),
    close AggregateFunction(argMax, Decimal(18, 8), UInt128),
    volume AggregateFunction(sum, Decimal(18, 8)),
    trade_count AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (window_start, exchange, symbol);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.gold_ohlcv_1d_mv TO k2.gold_ohlcv_1d_agg
AS SELECT
    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 1 DAY), 'UTC') AS window_start,
    exchange,
    symbol,
    argMinState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS open,
    maxState(price) AS high,
    minState(price) AS low,
    argMaxState(price, bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)) AS close,
    sumState(quantity) AS volume,
    countState() AS trade_count
FROM k2.silver_trades
GROUP BY window_start, exchange, symbol;

CREATE VIEW IF NOT EXISTS k2.gold_ohlcv_1d
AS SELECT
    window_start,
    exchange,
    symbol,
    argMinMerge(open) AS open,
    maxMerge(high) AS high,
    minMerge(low) AS low,
    argMaxMerge(close) AS close,
    sumMerge(volume) AS volume,
    countMerge(trade_count) AS trade_count
FROM k2.gold_ohlcv_1d_agg
GROUP BY window_start, exchange, symbol;

CREATE TABLE IF NOT EXISTS k2.bronze_trades_binance
(
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    trade_id String,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    is_buyer_maker Bool,
    buyer_order_id UInt64,
    seller_order_id UInt64,
    is_best_match Bool
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(exchange_timestamp)
ORDER BY (ingestion_timestamp, sequence_number);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.silver_trades_from_binance_mv TO k2.silver_trades
AS SELECT 'binance' AS exchange, exchange_timestamp, ingestion_timestamp, sequence_number, trade_id, symbol, side, price, quantity, is_buyer_maker
FROM k2.bronze_trades_binance;

CREATE TABLE IF NOT EXISTS k2.bronze_trades_kraken
(
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    trade_id String,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    is_buyer_maker Bool,
    order_type Enum8('market' = 1, 'limit' = 2),
    misc LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(exchange_timestamp)
ORDER BY (ingestion_timestamp, sequence_number);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.silver_trades_from_kraken_mv TO k2.silver_trades
AS SELECT 'kraken' AS exchange, exchange_timestamp, ingestion_timestamp, sequence_number, trade_id, symbol, side, price, quantity, is_buyer_maker
FROM k2.bronze_trades_kraken;

CREATE TABLE IF NOT EXISTS k2.bronze_trades_coinbase
(
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    trade_id String,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    is_buyer_maker Bool,
    maker_order_id UUID,
    taker_order_id UUID
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(exchange_timestamp)
ORDER BY (ingestion_timestamp, sequence_number);

CREATE MATERIALIZED VIEW IF NOT EXISTS k2.silver_trades_from_coinbase_mv TO k2.silver_trades
AS SELECT 'coinbase' AS exchange, exchange_timestamp, ingestion_timestamp, sequence_number, trade_id, symbol, side, price, quantity, is_buyer_maker
FROM k2.bronze_trades_coinbase;
