from __future__ import annotations

from hypothesis import settings

# The fixtures starting real servers (postgres_server, redis_server, namespace,
# shared_log_url) live in the plugin, so users testing against sessionlog get them too.
pytest_plugins = ["gateway.testing.pytest_plugin"]

settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci")
