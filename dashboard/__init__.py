"""Admin dashboard, REST API and Prometheus metrics (FastAPI) on the shared database."""
