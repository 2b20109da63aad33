"""Integration tests: the Redis engine against real redis-server processes."""
