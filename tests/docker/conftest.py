"""Fixtures for the image tests: an engine that answers, the built image, containers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from tests.docker.containers import (
    IMAGE,
    PREPARE_HINT,
    ContainerFactory,
    DockerError,
    docker,
    engine_version,
)


@pytest.fixture(scope="session")
def docker_engine() -> str:
    answers, detail = engine_version()
    if not answers:
        pytest.skip(f"no Docker engine answers ({detail}); {PREPARE_HINT.format(image=IMAGE)}")
    return detail


@pytest.fixture(scope="session")
def service_image(docker_engine: str) -> str:
    try:
        docker("image", "inspect", IMAGE, what=f"look for image {IMAGE}")
    except DockerError:
        pytest.skip(f"image {IMAGE} not built; {PREPARE_HINT.format(image=IMAGE)}")
    return IMAGE


@pytest.fixture
def containers(service_image: str) -> Iterator[ContainerFactory]:
    factory = ContainerFactory(image=service_image)
    yield factory
    # teardown never raises (it would hide the test's own failure); leftovers are reported
    problems = factory.remove_all()
    if problems:
        warnings.warn(f"containers not removed: {problems}", stacklevel=1)
