"""relay.client: the Python chat SDK (visitor and agent) for both modes.

>>> from relay.client import VisitorClient, AgentClient
>>> VisitorClient("http://127.0.0.1:8440", "clinic", origin="https://clinic.example").account
'clinic'
"""

from ._session import ChatClientError, PublicKeys
from .agent import AgentClient
from .visitor import VisitorClient

__all__ = ["AgentClient", "ChatClientError", "PublicKeys", "VisitorClient"]
