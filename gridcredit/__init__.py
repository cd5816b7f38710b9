"""gridcredit — grid accounting (Bank, LUTS, JARM) and a CPU market (Auctioneer) as signed SOAP services.

Layout of the import package (folders of the repository in brackets):
    gridcredit.security     [security/]   PKI, path validation, WS-Security 1.1
    gridcredit.xmlstore     [xmlstore/]   the XML document store: embedded and BaseX backends
    gridcredit.services.*   [services/]   Bank, LUTS, JARM, Auctioneer
    gridcredit.host, .cli, .config, .errors   the signed service host and shared mechanisms
"""

__version__ = "0.1.0"
