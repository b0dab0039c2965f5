"""The dashboard in a real browser (tox -e browser). A package, so that its conftest
never shadows tests/conftest.py as the module `conftest`."""
