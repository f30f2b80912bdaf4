"""Root conftest: loads every fixture module under tests/fixtures/ as a pytest plugin.

Each real part (the Telegram DC emulator, RabbitMQ, nginx WebDAV, the server) has its own
fixture module there, so helpers of one part never edit another's.
"""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)
