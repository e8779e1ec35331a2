"""Infrastructure for the end-to-end proof: back ends (local or testcontainers), brokers, a TCP proxy."""

from .backend import Infra, choose_backend, docker_reachable, start_infra
from .broker import BrokerBehindProxy, MotoS3, TansuBroker, kafka_api_versions_ok, poll_until, tansu_binary
from .ports import free_port
from .tcp_proxy import TcpProxy

__all__ = [
    "BrokerBehindProxy",
    "Infra",
    "MotoS3",
    "TansuBroker",
    "TcpProxy",
    "choose_backend",
    "docker_reachable",
    "free_port",
    "kafka_api_versions_ok",
    "poll_until",
    "start_infra",
    "tansu_binary",
]
