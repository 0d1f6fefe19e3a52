-- The catalog on PostgreSQL: products and the latest market signals about
-- them, the same tables as the SQLite schema (migrations/sqlite) in
-- PostgreSQL's types. Ids sort bytewise (COLLATE "C"), as they do in SQLite,
-- so a catalog scan pages through the same order on both stores whatever
-- the database's locale.
CREATE TABLE IF NOT EXISTS products (
    id                    TEXT COLLATE "C"  PRIMARY KEY,
    name                  TEXT              NOT NULL,
    category              TEXT              NOT NULL,
    unit_cost             DOUBLE PRECISION  NOT NULL CHECK (unit_cost > 0),
    base_price            DOUBLE PRECISION  NOT NULL CHECK (base_price > 0),
    stock                 BIGINT            NOT NULL CHECK (stock >= 0),
    target_stock          BIGINT            NOT NULL CHECK (target_stock > 0),
    elasticity            DOUBLE PRECISION  NOT NULL DEFAULT 1.0 CHECK (elasticity > 0),
    min_margin            DOUBLE PRECISION  NOT NULL DEFAULT 0.10 CHECK (min_margin >= 0),
    max_margin            DOUBLE PRECISION  NOT NULL DEFAULT 0.50 CHECK (max_margin >= min_margin),
    updated_at            TIMESTAMPTZ       NOT NULL,
    -- When the stock and the unit cost were last observed (an event's
    -- occurred_at, or updated_at for a seed or import): an older
    -- observation never replaces a newer one.
    stock_observed_at     TIMESTAMPTZ,
    unit_cost_observed_at TIMESTAMPTZ
);

-- Latest price seen per product and competitor.
CREATE TABLE IF NOT EXISTS competitor_prices (
    product_id  TEXT COLLATE "C"  NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    competitor  TEXT              NOT NULL,
    price       DOUBLE PRECISION  NOT NULL CHECK (price > 0),
    observed_at TIMESTAMPTZ       NOT NULL,
    PRIMARY KEY (product_id, competitor)
);

-- Latest demand index per product (1.0 = normal demand).
CREATE TABLE IF NOT EXISTS demand_signals (
    product_id   TEXT COLLATE "C"  PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    demand_index DOUBLE PRECISION  NOT NULL CHECK (demand_index >= 0),
    observed_at  TIMESTAMPTZ       NOT NULL
);
