"""PostgreSQL access: pool, migrations and the query functions."""
