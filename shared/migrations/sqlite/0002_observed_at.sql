-- When the stock and the unit cost were last observed: by a market event,
-- or as of the product's updated_at when the seed or an import wrote them
-- (NULL: rows written before this migration). An event observed earlier
-- than the value stored leaves it alone, so events applied out of order
-- (two listener replicas, a taken-over entry) cannot bring back an old value.
ALTER TABLE products ADD COLUMN stock_observed_at TEXT;
ALTER TABLE products ADD COLUMN unit_cost_observed_at TEXT;
