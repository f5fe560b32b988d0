"""The replay and debug tool: reads the event log directly, never through the API.

Errors (replay/errors.py): ``ReplayError`` is the root; ``UnknownKind`` (no code for a
kind), ``NotFound`` (no such stream, version or request) and ``BadArgument`` (an option
the tool cannot use) are what the command line turns into a message and exit status 2.
"""
