"""The Auctioneer: sells CPU shares of virtual machines (Tycoon-style) and enforces them.

``SERVICE`` is what the host, the runtime and the command line take from this folder; today
the Auctioneer answers ``WhoAmI`` only (issue 14 builds the rest).
"""
from gridcredit.contract import ServiceContract

SERVICE = ServiceContract(
    name="auctioneer",
    summary="sells CPU shares of virtual machines and enforces them through libvirt",
    soap_module="gridcredit.services.auctioneer.service",
)
