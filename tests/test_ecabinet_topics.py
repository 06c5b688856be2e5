"""ecabinet.topics: the builder, the parser that refuses everything else, the channel table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecabinet.errors import WrongTopicError
from ecabinet.topics import (
    CHANNELS,
    UP_CHANNELS,
    CabinetTopic,
    Channel,
    Direction,
    parse_topic,
    subscription,
    topic,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)


def test_topic_scheme() -> None:
    assert topic("HK-01", "C07", Channel.CMD) == "perso/v1/HK-01/C07/cmd"
    assert topic("HK-01", "C07", Channel.INVENTORY) == "perso/v1/HK-01/C07/inventory"
    assert subscription("HK-01", Channel.ACK) == "perso/v1/HK-01/+/ack"
    assert subscription("HK-01", Channel.CMD, "C07") == "perso/v1/HK-01/C07/cmd"


def test_channel_table_matches_the_issue() -> None:
    assert CHANNELS[Channel.CMD].direction is Direction.DOWN and CHANNELS[Channel.CMD].qos == 1
    assert CHANNELS[Channel.INVENTORY].retain and CHANNELS[Channel.STATUS].retain
    assert not CHANNELS[Channel.HEARTBEAT].retain and CHANNELS[Channel.HEARTBEAT].qos == 0
    assert not CHANNELS[Channel.ACK].retain and not CHANNELS[Channel.EVT].retain
    assert set(Channel) - UP_CHANNELS == {Channel.CMD}


@given(ids, ids, st.sampled_from(list(Channel)))
def test_build_then_parse_round_trips(site: str, cabinet: str, channel: Channel) -> None:
    parsed = parse_topic(topic(site, cabinet, channel))
    assert parsed == CabinetTopic(site, cabinet, channel)
    assert str(parsed) == topic(site, cabinet, channel)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "perso/v1/S1/C1",
        "perso/v1/S1/C1/cmd/extra",
        "perso/v2/S1/C1/cmd",
        "other/v1/S1/C1/cmd",
        "perso/v1/S1/C1/open",
        "perso/v1/+/C1/cmd",
        "perso/v1/S1/#/cmd",
        "perso/v1/$SYS/C1/cmd",
        "perso/v1//C1/cmd",
        "/perso/v1/S1/C1/cmd",
        "perso/v1/S 1/C1/cmd",
    ],
)
def test_parser_refuses_anything_outside_the_scheme(bad: str) -> None:
    with pytest.raises(WrongTopicError):
        parse_topic(bad)


def test_parser_refuses_another_cabinet_site_or_channel() -> None:
    mine = {"site": "S1", "cabinet": "C1", "channels": (Channel.CMD,)}
    parse_topic("perso/v1/S1/C1/cmd", **mine)  # type: ignore[arg-type]
    for other in ("perso/v1/S1/C2/cmd", "perso/v1/S2/C1/cmd", "perso/v1/S1/C1/ack"):
        with pytest.raises(WrongTopicError) as info:
            parse_topic(other, **mine)  # type: ignore[arg-type]
        assert "C2" not in str(info.value) and "S2" not in str(info.value)


@pytest.mark.parametrize(
    "bad", ["", "a/b", "+", "#", "$SYS", "-lead", "x" * 65, "sp ace", "nul\x00"]
)
def test_builder_refuses_ids_that_are_not_one_clean_level(bad: str) -> None:
    with pytest.raises(ValueError):
        topic(bad, "C1", Channel.CMD)
    with pytest.raises(ValueError):
        topic("S1", bad, Channel.CMD)
