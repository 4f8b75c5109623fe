"""The review web app served by `angiogate serve`: review, label, release; health and metrics.

app.py (routes), auth.py (accounts, sessions, CSRF, trusted proxy header),
queries.py (what the pages read), media.py (previews, sampled frames, heat
maps), health.py (readiness checks, Prometheus collector), server.py
(uvicorn in a background thread). It reads the verdict log and writes labels
and releases through angiogate.store; nothing below it imports it.
"""
