"""One collection site at run time: its cabinets, the broker, the controller, the flows, and the
bridge back to the card life cycle.

``site.toml`` says what the site is made of::

    site = "HK1"
    broker = "mqtts://127.0.0.1:8883"   # or "embedded": amqtt in-process with emulated cabinets
    ca_file = "/etc/perso/mqtt-ca.pem"  # trust anchor of the broker's TLS certificate
    username = "_controller"
    password_file = "/etc/perso/mqtt-controller.pass"
    mqtt_version = "5"
    ack_timeout_s = 2.0

    [[cabinets]]
    id = "KT-1"
    office = "ROP-KT"
    drawers = 10
    slots = 50

With ``broker = "embedded"`` (the default of ``perso demo``, DESIGN §7) the site also starts an amqtt
broker and one :class:`~ecabinet.sim.CabinetSim` per cabinet in this process, each provisioned with
its own keys only.  Everything else is the same code as against Mosquitto and real cabinets.

Files under the home: ``cabinet.db`` (slot map, no personal data), ``audit.log`` (+ ``.head``,
HMAC'd with the keystore's audit key), ``cabinets/<id>/`` (the emulated cabinets' journals).
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ecabinet.audit import AuditWriter
from ecabinet.broker import EmbeddedBroker
from ecabinet.controller import SiteController
from ecabinet.device import Mechanics
from ecabinet.mqtt import BrokerAddress
from ecabinet.service import CollectionService
from ecabinet.sim import CabinetSim
from ecabinet.store import CabinetStore
from personaliser.collection import FollowingBridge, catch_up
from personaliser.errors import ConfigError
from personaliser.keystore import FileKeystore
from personaliser.operations import Home
from personaliser.store.base import Store

__all__ = ["CabinetSpec", "Site", "SiteConfig", "demo_site", "load_site_config", "open_site"]

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class CabinetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=_ID)
    office: str = Field(pattern=_ID)
    drawers: int = Field(ge=1, le=99)
    slots: int = Field(ge=1, le=999)


class SiteConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    site: str = Field(pattern=_ID)
    broker: str = "embedded"
    ca_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    mqtt_version: Literal["5", "3.1.1"] = "5"
    ack_timeout_s: float = Field(default=2.0, gt=0)
    cabinets: tuple[CabinetSpec, ...] = Field(min_length=1)
    #: Emulated cabinets only (embedded): mechanical timings; "instant" for tests and the demo.
    mechanics: Literal["realistic", "instant"] = "instant"

    @property
    def embedded(self) -> bool:
        return self.broker == "embedded"

    def address(self) -> BrokerAddress:
        password = None
        if self.password_file is not None:
            password = self.password_file.read_text(encoding="utf-8").strip()
        return BrokerAddress.parse(
            self.broker,
            username=self.username,
            password=password,
            ca_file=self.ca_file,
            version=self.mqtt_version,
        )


def load_site_config(path: str | Path) -> SiteConfig:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        return SiteConfig.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def demo_site(offices: list[str], *, slots: int = 50, drawers: int = 2) -> SiteConfig:
    """An embedded site with one cabinet per office (``perso demo``)."""
    return SiteConfig(
        site="DEMO",
        cabinets=tuple(
            CabinetSpec(id=f"{office}-C1", office=office, drawers=drawers, slots=slots)
            for office in offices
        ),
    )


@dataclass
class Site:
    """What a running site offers its callers (CLI, HTTP service, demo)."""

    config: SiteConfig
    controller: SiteController
    service: CollectionService
    cabinets: CabinetStore
    audit: AuditWriter
    sims: dict[str, CabinetSim]

    def __repr__(self) -> str:
        return f"Site({self.config.site!r}, cabinets={len(self.config.cabinets)})"


async def _ready(controller: SiteController, cabinet: str, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await controller.wait_online(cabinet, timeout=timeout)
        await controller.wait_reconciled(cabinet, timeout=timeout)


@asynccontextmanager
async def open_site(
    home: Home,
    keystore: FileKeystore,
    store: Store,
    config: SiteConfig,
    *,
    connect: bool = True,
    wait_online: float = 10.0,
) -> AsyncIterator[Site]:
    """Start the site (and, embedded, its broker and emulated cabinets); stop it on exit.

    ``connect=False`` opens the stores and the flows without a broker: enough for look-ups and
    status (the controller is built but not started, so no door can move)."""
    async with AsyncExitStack() as stack:
        cabinets = stack.enter_context(CabinetStore(home.path / "cabinet.db", sync="barrier"))
        # Closed after the controller has stopped (the exit stack unwinds in reverse), so no
        # outcome arrives after it; closing waits for the moves already asked for.
        bridge = FollowingBridge(store)
        stack.callback(bridge.close)
        audit = stack.enter_context(AuditWriter(home.path / "audit.log", key=keystore.audit_key()))
        site_key = keystore.site_key(config.site)
        sims: dict[str, CabinetSim] = {}
        if not connect:
            address = BrokerAddress("127.0.0.1", 1)  # never dialled: the controller is not started
        elif config.embedded:
            broker = await stack.enter_async_context(EmbeddedBroker())
            address = broker.address
            mechanics = Mechanics() if config.mechanics == "realistic" else Mechanics.instant()
            for spec in config.cabinets:
                sim = CabinetSim(
                    config.site,
                    spec.id,
                    site_key.cabinet(spec.id),
                    address,
                    home.path / "cabinets" / spec.id,
                    drawers=spec.drawers,
                    slots_per_drawer=spec.slots,
                    mechanics=mechanics,
                    inventory_interval_s=0.5,
                )
                await stack.enter_async_context(sim)
                sims[spec.id] = sim
        else:
            address = config.address()
        controller = SiteController(
            address, site_key, cabinets, audit, ack_timeout=config.ack_timeout_s
        )
        for spec in config.cabinets:
            controller.register_cabinet(spec.id, spec.office, spec.drawers, spec.slots)
        if connect:
            await stack.enter_async_context(controller)
        # The line's store catches up with outcomes a crash left unapplied (collection.py, 3).
        catch_up(store, cabinets)
        service = CollectionService(
            controller,
            cabinets,
            keystore.lookup_key(),
            on_stocked=bridge.stocked,
            on_issued=bridge.issued,
            on_returned=bridge.returned,
        )
        if connect:
            await controller.wait_connected(timeout=wait_online)
            # A cabinet is usable once it is online and its slot map reconciled; one that does
            # not come up in time stays offline (the flows refuse it) rather than block the rest.
            await asyncio.gather(
                *(_ready(controller, spec.id, wait_online) for spec in config.cabinets)
            )
        yield Site(config, controller, service, cabinets, audit, sims)
