"""Deployment on Flower's SuperLink and SuperNodes: certificates, node keys, topology, Fleet gateway, processes.

Names are imported on first use, so that ``python -m fedshrink.deploy.gateway`` (a process of its own in
every deployment) starts without importing torch and the rest of fedshrink.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedshrink.deploy.certs import CertificateSet, check_host, make_certificates
    from fedshrink.deploy.topology import (
        CONNECTION,
        DEFAULT_PROFILES,
        ControlApiExposedWarning,
        DeploymentError,
        LocalDeployment,
        NodeSpec,
        Topology,
        parse_profiles,
        plan_nodes,
        shell_commands,
    )

_MODULES = {
    "CertificateSet": "certs", "check_host": "certs", "make_certificates": "certs",
    "CONNECTION": "topology", "DEFAULT_PROFILES": "topology", "ControlApiExposedWarning": "topology",
    "DeploymentError": "topology", "LocalDeployment": "topology", "NodeSpec": "topology", "Topology": "topology",
    "parse_profiles": "topology", "plan_nodes": "topology", "shell_commands": "topology",
}

__all__ = [
    "CONNECTION",
    "DEFAULT_PROFILES",
    "CertificateSet",
    "ControlApiExposedWarning",
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


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value
    return value
