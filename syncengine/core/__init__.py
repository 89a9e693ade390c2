"""The sans-I/O core: sync decisions with no sockets, no SQLite and no clock (time is passed in)."""
