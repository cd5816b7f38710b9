"""JARM, the Job Account Reservation Manager: joins a batch system (Slurm) to the Bank.

``SERVICE`` is what the host, the runtime and the command line take from this folder; today
JARM answers ``WhoAmI`` only (issue 13 builds the rest).
"""
from gridcredit.contract import ServiceContract

SERVICE = ServiceContract(
    name="jarm",
    summary="reserves credits for batch jobs and charges them when the jobs end",
    soap_module="gridcredit.services.jarm.service",
)
