"""gridcredit: accounting and a CPU market for shared computing, as signed SOAP services.

The repository keeps the layout of the user's design card (``security/``,
``services/<name>/``, ``xmlstore/`` at the top level, and ``server/`` above the services);
``package_dir`` maps those
folders under the single ``gridcredit`` import package so that nothing generic
such as ``services`` lands at the top of site-packages.
"""
from setuptools import setup

PACKAGE_FOLDERS = {
    "gridcredit": "gridcredit",
    "gridcredit.security": "security",
    "gridcredit.xmlstore": "xmlstore",
    "gridcredit.services": "services",
    "gridcredit.services.bank": "services/bank",
    "gridcredit.services.luts": "services/luts",
    "gridcredit.services.jarm": "services/jarm",
    "gridcredit.services.jarm.slurm": "services/jarm/slurm",   # Slurm's side: queue, hooks, accounting, the lua
    "gridcredit.services.auctioneer": "services/auctioneer",
    "gridcredit.services.directory": "services/directory",
    "gridcredit.server": "server",
    "gridcredit.wsdl_documents": "wsdl",     # the checked-in WSDLs, which the clients load (data only)
}

setup(
    name="gridcredit",
    version="0.1.0",
    description="Grid accounting (Bank, LUTS, JARM) and a CPU market as signed SOAP services",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=list(PACKAGE_FOLDERS),
    package_dir=PACKAGE_FOLDERS,
    package_data={"gridcredit.wsdl_documents": ["*.wsdl"],
                  "gridcredit.services.jarm.slurm": ["*.lua"]},   # JARM's job_submit.lua template
    install_requires=[
        # xmlsec and lxml must link the same libxml2: this pair does (see PITFALLS).
        "lxml==6.1.3",
        "xmlsec==1.3.17",
        "cryptography>=42",
        "pyOpenSSL>=24",
        "spyne==2.14.0",
        "zeep==4.3.3",
        "cheroot>=10",
        "requests>=2.31",
        "BaseXClient==8.4.4",
        "prometheus-client>=0.20",      # GET /metrics (gridcredit/metrics.py)
    ],
    extras_require={
        # libvirt-python builds against Debian's libvirt-dev (scripts/libvirt.sh installs it; 12.8 builds
        # against libvirt 9.0): the Auctioneer's enforcement on a real libvirtd (services/auctioneer/hypervisor.py).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "signxml>=4", "libvirt-python>=9.0"],
        "libvirt": ["libvirt-python>=9.0"],
    },
    entry_points={"console_scripts": ["gridcredit = gridcredit.server.cli:main"]},
)
