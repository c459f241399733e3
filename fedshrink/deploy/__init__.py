"""Deployment on Flower's SuperLink and SuperNodes: certificates, node keys, topology, local processes."""

from fedshrink.deploy.certs import CertificateSet, check_host, make_certificates
from fedshrink.deploy.topology import (
    CONNECTION,
    DEFAULT_PROFILES,
    DeploymentError,
    LocalDeployment,
    NodeSpec,
    Topology,
    parse_profiles,
    plan_nodes,
    shell_commands,
)

__all__ = [
    "CONNECTION",
    "DEFAULT_PROFILES",
    "CertificateSet",
    "DeploymentError",
    "LocalDeployment",
    "NodeSpec",
    "Topology",
    "check_host",
    "make_certificates",
    "parse_profiles",
    "plan_nodes",
    "shell_commands",
]
