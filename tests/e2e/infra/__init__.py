"""Infrastructure for the end-to-end proof: back ends (local or testcontainers). Brokers, the TCP proxy and free
ports live in `testsupport` (libs/testsupport), shared with the library and service tests."""

from .backend import Infra, choose_backend, docker_reachable, start_infra

__all__ = ["Infra", "choose_backend", "docker_reachable", "start_infra"]
