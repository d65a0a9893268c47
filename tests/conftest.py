import os

# Ray 2.60 asks for a token on every connection unless told otherwise; tests run a private Ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Keep Ray's usage-stats prompt and metrics exporter quiet and offline.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
