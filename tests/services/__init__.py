"""Services the tests start themselves (PostgreSQL, a reverse proxy), on loopback only."""
