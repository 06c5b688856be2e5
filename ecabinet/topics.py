"""MQTT topics of the cabinet protocol: ``perso/v1/{site}/{cabinet}/{channel}``, and nothing else.

Every channel's direction, QoS and retain flag are in one table, :data:`CHANNELS`, which the
transport and the broker ACLs read rather than repeat.  Site and cabinet ids are one topic level
each: letters, digits, ``_ . -``, starting with a letter or digit.  That keeps out the level
separator ``/``, the wildcards ``+`` and ``#`` (MQTT 3.1.1 4.7.1, MQTT 5.0 4.7.1) and the leading
``$`` the broker reserves for its own topics (4.7.2), so a topic can never match more than the
one cabinet it names and an ACL pattern like ``perso/v1/S1/%u/#`` means what it says.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from ecabinet.errors import WrongTopicError

__all__ = [
    "CHANNELS",
    "TOPIC_PREFIX",
    "UP_CHANNELS",
    "CabinetTopic",
    "Channel",
    "ChannelSpec",
    "Direction",
    "check_id",
    "parse_topic",
    "subscription",
    "topic",
]

TOPIC_PREFIX: Final = "perso/v1"

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Channel(StrEnum):
    """The last topic level."""

    CMD = "cmd"
    ACK = "ack"
    EVT = "evt"
    INVENTORY = "inventory"
    HEARTBEAT = "heartbeat"
    STATUS = "status"


class Direction(StrEnum):
    DOWN = "controller->cabinet"
    UP = "cabinet->controller"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    direction: Direction
    qos: int
    retain: bool


#: Heartbeats are QoS 0 and not retained: a late heartbeat is worthless and a retained one would
#: make a dead cabinet look alive to a new subscriber.  The inventory and status are retained so a
#: controller that (re)subscribes learns the latest of each at once (MQTT 5.0 3.3.1.3).
CHANNELS: Final[Mapping[Channel, ChannelSpec]] = MappingProxyType(
    {
        Channel.CMD: ChannelSpec(Direction.DOWN, qos=1, retain=False),
        Channel.ACK: ChannelSpec(Direction.UP, qos=1, retain=False),
        Channel.EVT: ChannelSpec(Direction.UP, qos=1, retain=False),
        Channel.INVENTORY: ChannelSpec(Direction.UP, qos=1, retain=True),
        Channel.HEARTBEAT: ChannelSpec(Direction.UP, qos=0, retain=False),
        Channel.STATUS: ChannelSpec(Direction.UP, qos=1, retain=True),
    }
)

#: The channels a controller receives on.
UP_CHANNELS: Final = frozenset(c for c, s in CHANNELS.items() if s.direction is Direction.UP)


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid site or cabinet id, else raise ``ValueError``."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise ValueError(f"{what} must be 1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    return value


@dataclass(frozen=True, slots=True)
class CabinetTopic:
    site: str
    cabinet: str
    channel: Channel

    def __post_init__(self) -> None:
        check_id(self.site, "site")
        check_id(self.cabinet, "cabinet")
        if not isinstance(self.channel, Channel):
            raise TypeError("channel must be a Channel")

    def __str__(self) -> str:
        return f"{TOPIC_PREFIX}/{self.site}/{self.cabinet}/{self.channel.value}"

    @property
    def spec(self) -> ChannelSpec:
        return CHANNELS[self.channel]


def topic(site: str, cabinet: str, channel: Channel) -> str:
    """The topic string; ``ValueError`` for an id that is not one clean topic level."""
    return str(CabinetTopic(site, cabinet, channel))


def subscription(site: str, channel: Channel, cabinet: str | None = None) -> str:
    """A topic filter: one cabinet's channel, or with ``cabinet=None`` every cabinet of the site."""
    check_id(site, "site")
    level = "+" if cabinet is None else check_id(cabinet, "cabinet")
    return f"{TOPIC_PREFIX}/{site}/{level}/{channel.value}"


def parse_topic(
    value: str,
    *,
    site: str | None = None,
    cabinet: str | None = None,
    channels: Collection[Channel] | None = None,
) -> CabinetTopic:
    """Parse a received topic; ``WrongTopicError`` unless it is in the scheme and, where given,
    for ``site``, ``cabinet`` and one of ``channels``.

    The message names the level that is wrong, never echoes the topic: a topic is chosen by
    whoever published, and logs should not carry a peer's text.
    """
    if not isinstance(value, str):
        raise WrongTopicError("topic is not a string")
    levels = value.split("/")
    if len(levels) != 5 or f"{levels[0]}/{levels[1]}" != TOPIC_PREFIX:
        raise WrongTopicError(f"topic is not {TOPIC_PREFIX}/<site>/<cabinet>/<channel>")
    _, _, site_id, cabinet_id, channel_name = levels
    if _ID.fullmatch(site_id) is None or _ID.fullmatch(cabinet_id) is None:
        raise WrongTopicError("topic has an invalid site or cabinet level")
    try:
        channel = Channel(channel_name)
    except ValueError:
        raise WrongTopicError("topic has an unknown channel") from None
    if site is not None and site_id != site:
        raise WrongTopicError("topic is for another site", channel=channel.value)
    if cabinet is not None and cabinet_id != cabinet:
        raise WrongTopicError("topic is for another cabinet", channel=channel.value)
    if channels is not None and channel not in channels:
        raise WrongTopicError(
            f"channel {channel.value} is not accepted here", channel=channel.value
        )
    return CabinetTopic(site_id, cabinet_id, channel)
