"""End-to-end tests: real server processes on loopback, official SDKs and raw WebSocket."""
