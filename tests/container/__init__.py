"""The container image, built and run with podman and buildah (tox -e container). A package,
so that its conftest never shadows tests/conftest.py as the module `conftest`."""
