"""The launcher's kind of error."""
from central.errors import BadInputError


class LaunchError(BadInputError):
    """Bad launcher input; the message is one line that names the option."""
