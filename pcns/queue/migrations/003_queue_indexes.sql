-- Fewer indexes to maintain on every claim: the per-target queue statistics can use the two
-- partial indexes that already exist (pending by due time, in-flight by lease).
DROP INDEX IF EXISTS pcns_deliveries_open;
