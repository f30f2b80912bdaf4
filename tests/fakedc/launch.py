"""start.py in a process of its own that can reach every DC of the emulator.

    python -m tests.fakedc.launch serve --config FILE --no-console     (from the repository)

Telethon runs the DH handshake for every DC it has no auth key for yet: a file on DC 2 makes
it export the account's authorization and handshake with DC 2 first. It only sends that
handshake to a server whose RSA public key it knows, and the emulator's key is a test key,
so a server started as plain `python start.py` can talk to DC 2 only with a key made
beforehand. This launcher adds the emulator's key to Telethon's list (as the in-process
tests do, tests/fixtures/fakedc.py) and then runs start.py's `main` with the given
arguments, unchanged otherwise. It is for tests only: production never knows this key.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tests.fakedc.handshake import add_emulator_key


def main(argv: Sequence[str] | None = None) -> int:
    add_emulator_key()
    import start  # after the key: nothing of start.py runs at import, but keep the order plain

    return start.main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
