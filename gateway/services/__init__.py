"""imip-gateway."""
