"""imip-gateway: calendar scheduling by email (iMIP, RFC 6047) for mail servers."""

__version__ = "0.1.0"
