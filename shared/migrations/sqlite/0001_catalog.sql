-- The catalog: products and the latest market signals about them.
CREATE TABLE IF NOT EXISTS products (
    id           TEXT    PRIMARY KEY NOT NULL,
    name         TEXT    NOT NULL,
    category     TEXT    NOT NULL,
    unit_cost    REAL    NOT NULL CHECK (unit_cost > 0),
    base_price   REAL    NOT NULL CHECK (base_price > 0),
    stock        INTEGER NOT NULL CHECK (stock >= 0),
    target_stock INTEGER NOT NULL CHECK (target_stock > 0),
    elasticity   REAL    NOT NULL DEFAULT 1.0 CHECK (elasticity > 0),
    min_margin   REAL    NOT NULL DEFAULT 0.10 CHECK (min_margin >= 0),
    max_margin   REAL    NOT NULL DEFAULT 0.50 CHECK (max_margin >= min_margin),
    updated_at   TEXT    NOT NULL
);

-- Latest price seen per product and competitor.
CREATE TABLE IF NOT EXISTS competitor_prices (
    product_id  TEXT NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    competitor  TEXT NOT NULL,
    price       REAL NOT NULL CHECK (price > 0),
    observed_at TEXT NOT NULL,
    PRIMARY KEY (product_id, competitor)
) WITHOUT ROWID;

-- Latest demand index per product (1.0 = normal demand).
CREATE TABLE IF NOT EXISTS demand_signals (
    product_id   TEXT PRIMARY KEY NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    demand_index REAL NOT NULL CHECK (demand_index >= 0),
    observed_at  TEXT NOT NULL
);
