"""ecabinet.allocation: capacity, no double booking, spread per day, reachability by date."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecabinet.allocation import (
    CardToPlace,
    OfficeSlots,
    SlotView,
    allocate,
    free_slots,
    free_slots_by_office,
)
from ecabinet.errors import CapacityError
from ecabinet.slots import Slot, SlotState, layout

DAY = date(2025, 3, 3)


def _office(cabinets: int, drawers: int, per: int, name: str = "KT") -> OfficeSlots:
    views = [
        SlotView(s, SlotState.EMPTY) for c in range(cabinets) for s in layout(f"C{c}", drawers, per)
    ]
    return OfficeSlots(name, tuple(views))


def _cards(dates: list[int]) -> list[CardToPlace]:
    return [CardToPlace(f"A{n:05d}", DAY + timedelta(days=d)) for n, d in enumerate(dates)]


def test_worked_example() -> None:
    office = _office(2, 1, 3)  # two cabinets, one drawer of three slots each
    cards = [
        CardToPlace("A1", DAY + timedelta(days=1)),
        CardToPlace("A2", DAY),
        CardToPlace("A3", DAY),
        CardToPlace("A4", DAY + timedelta(days=1)),
    ]
    result = allocate(office, cards)
    where = {p.card_id: (p.slot.cabinet, p.slot.index) for p in result.placements}
    # Monday's two cards: one per cabinet, each in its front slot; Tuesday's likewise, next slot.
    assert where == {"A2": ("C0", 1), "A3": ("C1", 1), "A1": ("C0", 2), "A4": ("C1", 2)}
    assert [p.card_id for p in result.placements] == ["A2", "A3", "A1", "A4"]
    assert result.slot_of("A4").code == "01-002"


def test_existing_load_counts_toward_the_spread() -> None:
    office = _office(2, 1, 4)
    views = list(office.slots)
    views[0] = SlotView(views[0].slot, SlotState.OCCUPIED, DAY)  # C0 already has a Monday card
    result = allocate(OfficeSlots("KT", tuple(views)), _cards([0]))
    assert result.placements[0].slot.cabinet == "C1"


def test_capacity_refused_with_a_clear_error_and_nothing_placed() -> None:
    office = _office(2, 1, 2)
    assert free_slots(office) == 4
    with pytest.raises(CapacityError) as info:
        allocate(office, _cards([0] * 5))
    assert (info.value.office, info.value.needed, info.value.free) == ("KT", 5, 4)
    assert "5 cards" in str(info.value) and "4 free" in str(info.value)


def test_only_empty_slots_are_free() -> None:
    slots = layout("C0", 1, 5)
    states = [
        SlotState.EMPTY,
        SlotState.RESERVED,
        SlotState.OCCUPIED,
        SlotState.OPEN_FOR_RETRIEVAL,
        SlotState.FAULT,
    ]
    office = OfficeSlots(
        "KT", tuple(SlotView(s, st_) for s, st_ in zip(slots, states, strict=True))
    )
    assert free_slots(office) == 1
    assert free_slots_by_office([office, _office(1, 1, 3, "TM")]) == {"KT": 1, "TM": 3}
    assert allocate(office, _cards([0])).placements[0].slot == slots[0]


def test_misuse() -> None:
    office = _office(1, 1, 3)
    with pytest.raises(ValueError):
        allocate(office, [CardToPlace("A1", DAY), CardToPlace("A1", DAY)])
    with pytest.raises(ValueError):
        OfficeSlots("KT", office.slots + office.slots[:1])
    with pytest.raises(ValueError):
        free_slots_by_office([office, office])


# -- properties --------------------------------------------------------------------------------


@st.composite
def offices(draw: st.DrawFn) -> OfficeSlots:
    cabinets = draw(st.integers(1, 4))
    views: list[SlotView] = []
    for c in range(cabinets):
        drawers, per = draw(st.integers(1, 3)), draw(st.integers(1, 6))
        for slot in layout(f"C{c}", drawers, per):
            state = draw(st.sampled_from(list(SlotState)) | st.just(SlotState.EMPTY))
            when = None if state is SlotState.EMPTY else draw(st.none() | st.integers(0, 3))
            views.append(
                SlotView(slot, state, None if when is None else DAY + timedelta(days=when))
            )
    return OfficeSlots("KT", tuple(views))


@given(offices(), st.lists(st.integers(0, 4), max_size=40), st.randoms(use_true_random=False))
def test_every_card_gets_its_own_empty_slot_or_none_do(
    office: OfficeSlots, dates: list[int], rnd: random.Random
) -> None:
    cards = _cards(dates)
    if len(cards) > free_slots(office):
        with pytest.raises(CapacityError):
            allocate(office, cards)
        return
    result = allocate(office, cards)
    empty = {v.slot.key for v in office.slots if v.state is SlotState.EMPTY}
    keys = [p.slot.key for p in result.placements]
    assert len(set(keys)) == len(keys) == len(cards)  # no slot double-booked
    assert set(keys) <= empty
    assert {p.card_id for p in result.placements} == {c.card_id for c in cards}
    # Deterministic: the order of the inputs does not matter.
    shuffled_cards, shuffled_slots = list(cards), list(office.slots)
    rnd.shuffle(shuffled_cards)
    rnd.shuffle(shuffled_slots)
    assert allocate(OfficeSlots("KT", tuple(shuffled_slots)), shuffled_cards) == result


@given(offices(), st.lists(st.integers(0, 4), max_size=40))
def test_earlier_collection_gets_a_more_reachable_slot_within_a_cabinet(
    office: OfficeSlots, dates: list[int]
) -> None:
    cards = _cards(dates)
    if len(cards) > free_slots(office):
        return
    placements = allocate(office, cards).placements
    for p in placements:
        for q in placements:
            if p.slot.cabinet == q.slot.cabinet and p.collection_date < q.collection_date:
                assert p.slot.reachability >= q.slot.reachability


@given(st.integers(1, 5), st.lists(st.integers(0, 3), max_size=30))
def test_each_days_collections_spread_within_one_when_capacity_allows(
    cabinets: int, dates: list[int]
) -> None:
    # Every cabinet alone could hold every card: capacity never forces the spread.
    office = _office(cabinets, 2, 16)
    placements = allocate(office, _cards(dates)).placements
    for day in set(dates):
        per = Counter(
            p.slot.cabinet for p in placements if p.collection_date == DAY + timedelta(days=day)
        )
        counts = [per.get(c, 0) for c in office.cabinets]
        assert max(counts) - min(counts) <= 1


@given(
    st.integers(2, 4),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=12),
    st.lists(st.integers(0, 2), max_size=30),
)
def test_spread_with_cards_already_stocked_never_gets_worse(
    cabinets: int, stocked: list[tuple[int, int]], dates: list[int]
) -> None:
    office = _office(cabinets, 2, 16)
    views = list(office.slots)
    per_cabinet = 32
    used: Counter[int] = Counter()
    for drawn, day in stocked:
        cabinet = drawn % cabinets
        n = cabinet * per_cabinet + per_cabinet - 1 - used[cabinet]  # fill from the back
        used[cabinet] += 1
        views[n] = SlotView(views[n].slot, SlotState.OCCUPIED, DAY + timedelta(days=day))
    office = OfficeSlots("KT", tuple(views))
    placements = allocate(office, _cards(dates)).placements
    for day in set(dates):
        when = DAY + timedelta(days=day)
        before = Counter(v.slot.cabinet for v in views if v.collection_date == when)
        after = before + Counter(p.slot.cabinet for p in placements if p.collection_date == when)
        spread_before = max(before.get(c, 0) for c in office.cabinets) - min(
            before.get(c, 0) for c in office.cabinets
        )
        spread_after = max(after.get(c, 0) for c in office.cabinets) - min(
            after.get(c, 0) for c in office.cabinets
        )
        assert spread_after <= max(spread_before, 1)


def test_a_thousand_cards_over_twenty_cabinets_is_quick() -> None:
    office = _office(20, 10, 50)  # 10,000 slots
    dates = [n % 7 for n in range(1000)]
    placements = allocate(office, _cards(dates)).placements
    per_day = Counter((p.slot.cabinet, p.collection_date) for p in placements)
    for day in range(7):
        counts = [per_day[(c, DAY + timedelta(days=day))] for c in office.cabinets]
        assert max(counts) - min(counts) <= 1
    assert all(isinstance(p.slot, Slot) for p in placements)
