"""Several server processes sharing one Redis event log (tox env cluster)."""
