"""PostgreSQL access: pool, migrations and the query functions; what its failures look like."""

import asyncpg

# Anything PostgreSQL, or the way to it, may raise: keep what you were writing and try again.
DB_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# PostgreSQL cannot be reached or asked right now: an outage. Anything else it refuses is a bug.
DB_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                  asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
# Errors in the data itself: writing the same rows again can never succeed.
DB_REJECTED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
