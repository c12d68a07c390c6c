"""The embedded stack: moto's HTTP server and a throwaway PostgreSQL, for demos and tests."""
