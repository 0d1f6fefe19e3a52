-- When the stock and the unit cost were last observed by a market event
-- (NULL: never; set by the seed or an import). An event older than the
-- value stored leaves it alone, so events applied out of order (two
-- listener replicas, a taken-over entry) cannot bring back an old value.
ALTER TABLE products ADD COLUMN stock_observed_at TEXT;
ALTER TABLE products ADD COLUMN unit_cost_observed_at TEXT;
