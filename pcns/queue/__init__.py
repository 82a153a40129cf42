"""The durable queue on PostgreSQL: migrations and every SQL statement the service runs."""
