"""The one list of services. The host, the runtime and the command line take them from here.

Adding a service: a folder ``services/<name>/`` whose ``__init__.py`` exports ``SERVICE`` (a
``gridcredit.contract.ServiceContract``), and one line below.
"""
from __future__ import annotations

import importlib
from functools import cache
from typing import Mapping

from gridcredit.config import Config, load_config as load_host_config
from gridcredit.contract import ServiceContract, collections_overlap

SERVICE_PACKAGES = (
    "gridcredit.services.bank",
    "gridcredit.services.luts",
    "gridcredit.services.jarm",
    "gridcredit.services.auctioneer",
    "gridcredit.services.directory",
)


@cache
def services() -> tuple[ServiceContract, ...]:
    """Every registered service, in the order above (the order of --help and of the host's paths)."""
    contracts = tuple(importlib.import_module(package).SERVICE for package in SERVICE_PACKAGES)
    check_contracts(contracts)
    return contracts


def check_contracts(contracts: tuple[ServiceContract, ...]) -> None:
    """Names and store collections are each one service's; a service's indexes cover its own
    collections. A breach is a programming error: it stops the host (and every test) at once."""
    names = [contract.name for contract in contracts]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two services share a name: {names}")
    for index, first in enumerate(contracts):
        for second in contracts[index + 1:]:
            for mine in first.collections:
                for theirs in second.collections:
                    if collections_overlap(mine, theirs):
                        raise RuntimeError(f"services {first.name} and {second.name} both claim the store "
                                           f"collection {mine!r} / {theirs!r}")
        for store_index in first.store_indexes():
            if not first.owns(store_index.collection_prefix):
                raise RuntimeError(f"service {first.name} declares an index on {store_index.collection_prefix!r}, "
                                   f"a collection it does not own")


def service(name: str) -> ServiceContract:
    for contract in services():
        if contract.name == name:
            return contract
    raise KeyError(f"no service named {name!r} (registered: {', '.join(names())})")


def names() -> tuple[str, ...]:
    return tuple(contract.name for contract in services())


def config_sections() -> Mapping[str, type]:
    return {contract.name: contract.config_section for contract in services() if contract.config_section}


def load_config(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    """The configuration with every service's section (``gridcredit.config.load_config``)."""
    return load_host_config(path, env, sections=config_sections())


def complete(config: Config) -> Config:
    """``config`` with a default section for each service it lacks (a Config built in code)."""
    return config.with_sections(config_sections())


def store_indexes() -> tuple:
    """The indexes of the one store every service shares, as the services declare them."""
    return tuple(index for contract in services() for index in contract.store_indexes())


def open_service_store(config: Config, *, read_only: bool = False):
    """The one store every service shares, with the indexes the services declare."""
    from gridcredit.xmlstore import open_store

    return open_store(config.store, config.state_path, indexes=store_indexes(), read_only=read_only)
