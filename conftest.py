"""Root conftest: loads the harness's pytest plugin (fixtures, options, markers)."""

pytest_plugins = ["harness.pytest_plugin"]
