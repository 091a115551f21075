"""AsyncAPI 3.0 documents generated from an :class:`~dispytch.App`, and a page that shows them.

``asyncapi(app)`` returns the document as a dict; ``dump_yaml`` writes it as YAML without
PyYAML. The command line has ``dispytch docs gen module:app`` and ``dispytch docs serve
module:app``.
"""

from dispytch.asyncapi.document import ASYNCAPI_VERSION, asyncapi
from dispytch.asyncapi.yaml import dump_yaml

__all__ = ["ASYNCAPI_VERSION", "asyncapi", "dump_yaml"]
