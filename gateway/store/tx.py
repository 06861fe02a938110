"""The transaction handle that units of work receive.

Services pass it through to store functions without importing SQLAlchemy themselves
(the layering contract in pyproject.toml: only ``gateway.store`` imports it).
"""

from sqlalchemy.orm import Session as Tx

__all__ = ["Tx"]
