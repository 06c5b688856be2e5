"""The ecabinet package: exports pinned, imports kept to their layer, the protocol doc complete."""

from __future__ import annotations

import ast
import importlib
import re
import typing
from pathlib import Path

import pytest

import ecabinet
from ecabinet.messages import AnyMessage, SlotReport
from ecabinet.topics import Channel

ROOT = Path(__file__).resolve().parent.parent
CORE = ("errors", "topics", "security", "slots", "messages", "allocation", "audit", "protocol")


def test_package_exports_exactly_its_modules_public_names() -> None:
    expected: set[str] = set()
    for name in CORE:
        module = importlib.import_module(f"ecabinet.{name}")
        expected |= set(module.__all__)
        for public in module.__all__:
            assert getattr(ecabinet, public) is getattr(module, public)
    assert set(ecabinet.__all__) == expected
    assert len(ecabinet.__all__) == len(set(ecabinet.__all__))


def test_exception_tree_has_one_root() -> None:
    from ecabinet import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.CabinetError)
        assert name in (errors.__doc__ or "")
    assert issubclass(errors.ReplayError, errors.ProtocolError)
    assert issubclass(errors.CapacityError, errors.SlotError)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "ecabinet").glob("*.py")), ids=lambda p: p.name)
def test_ecabinet_imports_no_sibling_product_package(path: Path) -> None:
    # DESIGN §2: ecabinet knows nothing of chips, printers, the scheduler or the line runtime.
    for module in _imports(path):
        top = module.split(".")[0]
        assert top not in {"chip", "printer", "scheduler", "personaliser", "bench", "tests"}, module


@pytest.mark.parametrize("name", CORE)
def test_protocol_core_does_no_io(name: str) -> None:
    # Sans-I/O: only a transport module may talk MQTT or sockets.  The audit writer is the one
    # module that touches files (os, fcntl), on purpose.
    forbidden = {"aiomqtt", "amqtt", "paho", "socket", "asyncio", "ssl", "threading", "time"}
    for module in _imports(ROOT / "ecabinet" / f"{name}.py"):
        assert module.split(".")[0] not in forbidden, module


def test_protocol_doc_names_every_message_and_field() -> None:
    doc = (ROOT / "docs" / "ecabinet-protocol.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_]+)`", doc))
    for model in typing.get_args(AnyMessage):
        type_name = model.model_fields["type"].default
        assert type_name in documented, type_name
        for field in model.model_fields:
            assert field in documented, f"{type_name}.{field}"
    for field in SlotReport.model_fields:
        assert field in doc
    for channel in Channel:
        assert f"`{channel.value}`" in doc
