"""Services the tests start themselves on loopback (Synapse, PostgreSQL, a reverse proxy), each stopped by its pid."""
