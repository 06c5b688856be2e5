"""Working calendar, due-date rule and the bundled Hong Kong holiday lists.

Hand-computed due dates walk weekends, the 2026 Easter/Ching Ming cluster, Lunar New Year and the
2026/2027 year end; properties check the fast range count against a day-by-day count.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.calendar import (
    DUE_WORKING_DAYS,
    WorkingCalendar,
    hong_kong_calendar,
    hong_kong_holiday_lists,
    load_holidays,
    parse_holidays,
)

HK = hong_kong_calendar()
PLAIN = WorkingCalendar()  # Monday to Friday, no holidays, any year

# -- the due-date rule, by hand ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approved", "due", "why"),
    [
        # Mon: Tue 3 .. Fri 6 are days 1-4, Mon 9 .. Wed 11 days 5-7.
        (date(2026, 3, 2), date(2026, 3, 11), "plain week"),
        # Fri: Mon 9 .. Fri 13 are days 1-5, Mon 16 and Tue 17 days 6-7.
        (date(2026, 3, 6), date(2026, 3, 17), "Friday"),
        # Sat: deemed Mon 9, so it gets Monday's due date, a day after Friday's.
        (date(2026, 3, 7), date(2026, 3, 18), "Saturday is deemed Monday"),
        (date(2026, 3, 8), date(2026, 3, 18), "Sunday is deemed Monday"),
        # Thu 2 Apr: Good Friday 3, Sat, Sun, Mon 6 and Tue 7 (holidays) skipped; Wed 8 is day 1.
        (date(2026, 4, 2), date(2026, 4, 16), "Easter and Ching Ming 2026"),
        # Mon 16 Feb: Lunar New Year Tue 17 - Thu 19 skipped; Fri 20 is day 1, Mon 2 Mar day 7.
        (date(2026, 2, 16), date(2026, 3, 2), "Lunar New Year 2026"),
        # National Day (Thu 1 Oct) is deemed Fri 2 Oct; Mon 5 .. Tue 13 are days 1-7.
        (date(2026, 10, 1), date(2026, 10, 13), "approval on a holiday"),
        # Thu 24 Dec: Christmas (Fri), weekend; Mon 28 - Thu 31 days 1-4; 1 Jan 2027 (Fri)
        # skipped; Mon 4 - Wed 6 Jan days 5-7.
        (date(2026, 12, 24), date(2027, 1, 6), "year end"),
        # Fri 5 Feb 2027: Lunar New Year Sat 6, Sun 7, Mon 8 and Tue 9 (substitute) skipped.
        (date(2027, 2, 5), date(2027, 2, 18), "Lunar New Year 2027"),
    ],
)
def test_due_date_by_hand(approved: date, due: date, why: str) -> None:
    assert HK.due_date(approved) == due, why


def test_plain_calendar_ignores_hong_kong_holidays() -> None:
    # The same Thursday as above, without the Easter holidays: Fri 3 is day 1, Mon 13 day 7.
    assert PLAIN.due_date(date(2026, 4, 2)) == date(2026, 4, 13)


def test_add_working_days_both_ways() -> None:
    assert HK.add_working_days(date(2026, 12, 24), 0) == date(2026, 12, 24)
    assert HK.add_working_days(date(2026, 12, 24), 1) == date(2026, 12, 28)
    assert HK.add_working_days(date(2027, 1, 4), -1) == date(2026, 12, 31)
    assert HK.add_working_days(date(2026, 4, 8), -1) == date(2026, 4, 2)
    assert HK.roll_forward(date(2026, 4, 3)) == date(2026, 4, 8)
    assert HK.roll_back(date(2026, 4, 7)) == date(2026, 4, 2)


def test_working_days_between_year_end_is_signed() -> None:
    assert HK.working_days_between(date(2026, 12, 24), date(2027, 1, 6)) == 7
    assert HK.working_days_between(date(2027, 1, 6), date(2026, 12, 24)) == -7
    assert HK.working_days_between(date(2026, 3, 2), date(2026, 3, 2)) == 0


def test_years_outside_the_lists_are_refused() -> None:
    # A due date in 2028 cannot be computed honestly without the 2028 gazette.
    with pytest.raises(ValueError, match="2028"):
        HK.due_date(date(2027, 12, 24))
    with pytest.raises(ValueError, match="2025"):
        HK.is_working_day(date(2025, 12, 31))
    with pytest.raises(ValueError, match="2028"):
        HK.working_days_between(date(2027, 12, 1), date(2028, 1, 3))


def test_six_day_week_uses_saturday_holidays() -> None:
    six_day = hong_kong_calendar(weekend=(6,))
    assert not six_day.is_working_day(date(2026, 9, 26))  # Saturday: day after Mid-Autumn
    assert six_day.is_working_day(date(2026, 9, 19))  # an ordinary Saturday
    assert HK.is_working_day(date(2026, 10, 7))  # a wrong third-party list has 7 Oct


@pytest.mark.parametrize("weekend", [(7,), (5, 5), (-1,), (0, 1, 2, 3, 4, 5, 6)])
def test_bad_weekend_is_refused(weekend: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="weekend"):
        WorkingCalendar(frozenset(), weekend)


def test_due_date_needs_a_positive_count() -> None:
    with pytest.raises(ValueError):
        HK.due_date(date(2026, 3, 2), working_days=0)


# -- properties ----------------------------------------------------------------------------------

IN_LISTS = st.dates(date(2026, 1, 1), date(2027, 12, 31))
ANY_DAY = st.dates(date(2000, 1, 1), date(2100, 12, 31))


@st.composite
def calendars(draw: st.DrawFn) -> WorkingCalendar:
    weekend = draw(st.lists(st.integers(0, 6), unique=True, max_size=3))
    holidays = draw(st.frozensets(st.dates(date(2026, 1, 1), date(2026, 12, 31)), max_size=40))
    return WorkingCalendar(holidays, tuple(weekend))


def _brute_count(cal: WorkingCalendar, a: date, b: date) -> int:
    lo, hi, sign = (a, b, 1) if a <= b else (b, a, -1)
    days = (hi - lo).days
    return sign * sum(cal.is_working_day(lo + timedelta(days=i)) for i in range(1, days + 1))


@given(IN_LISTS, IN_LISTS)
def test_hk_range_count_matches_day_by_day(a: date, b: date) -> None:
    assert HK.working_days_between(a, b) == _brute_count(HK, a, b)


@given(calendars(), st.dates(date(2025, 11, 1), date(2027, 2, 1)), st.integers(0, 120))
def test_any_calendar_range_count_matches_day_by_day(
    cal: WorkingCalendar, a: date, span: int
) -> None:
    b = a + timedelta(days=span)
    assert cal.working_days_between(a, b) == _brute_count(cal, a, b)
    assert cal.working_days_between(b, a) == -_brute_count(cal, a, b)


@given(calendars(), ANY_DAY, st.integers(0, 30))
def test_add_working_days_inverts_the_count(cal: WorkingCalendar, start: date, n: int) -> None:
    end = cal.add_working_days(start, n)
    assert cal.working_days_between(start, end) == n
    if n:
        assert cal.is_working_day(end)
        # n back from end passes the n - 1 working days after start and lands on or before it.
        assert cal.add_working_days(end, -n) == cal.roll_back(start)


@given(st.dates(date(2026, 1, 1), date(2027, 12, 1)))
def test_due_date_is_seven_working_days_after_deemed_approval(approved: date) -> None:
    due = HK.due_date(approved)
    deemed = HK.roll_forward(approved)
    assert HK.is_working_day(due)
    assert HK.working_days_between(deemed, due) == DUE_WORKING_DAYS
    # Seven working days with a two-day weekend always span at least nine calendar days.
    assert (due - deemed).days >= DUE_WORKING_DAYS + 2
    assert HK.due_date(deemed) == due


# -- the bundled lists ---------------------------------------------------------------------------


def test_bundled_lists_name_their_source() -> None:
    lists = {hl.year: hl for hl in hong_kong_holiday_lists()}
    assert sorted(lists) == [2026, 2027]
    assert HK.years == frozenset({2026, 2027})
    for holiday_list in lists.values():
        # Cap. 149 gives 17 general holidays besides Sundays; a gazetted day is never a Sunday.
        assert len(holiday_list.holidays) == 17
        assert all(h.day.weekday() != 6 for h in holiday_list.holidays)
        assert holiday_list.url.startswith("https://")
        assert holiday_list.document
    assert lists[2026].verified
    assert lists[2026].published == date(2026 - 1, 5, 16)
    assert "P2025051300354" in lists[2026].url
    assert not lists[2027].verified  # read from a secondary report; see the file's note
    assert "NOT checked" in lists[2027].note


def test_2026_substitutes_from_the_press_release() -> None:
    days = {h.day: h.name for h in hong_kong_holiday_lists()[0].holidays}
    assert days[date(2026, 4, 7)] == "The day following Easter Monday"
    assert days[date(2026, 9, 26)] == "The day following the Chinese Mid-Autumn Festival"
    assert date(2026, 4, 5) not in days  # Ching Ming itself is a Sunday


# -- the file format -----------------------------------------------------------------------------

GOOD = """
year = 2026
[source]
document = "Test gazette"
url = "https://example.org/g"
verified = true
[[holiday]]
date = 2026-01-01
weekday = "Thursday"
name = "The first day of January"
"""


def test_load_holidays_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(GOOD, encoding="utf-8")
    loaded = load_holidays(path)
    assert loaded.year == 2026
    assert loaded.dates == frozenset({date(2026, 1, 1)})
    assert loaded.document == "Test gazette"


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('weekday = "Thursday"', 'weekday = "Friday"', "is a Thursday, not a Friday"),
        ("date = 2026-01-01", "date = 2027-01-01", "not in 2026"),
        ('document = "Test gazette"', 'document = ""', "must name its document"),
        ('url = "https://example.org/g"\n', "", "`url`"),
        ("verified = true", 'verified = "yes"', "`verified`"),
        ("year = 2026", "year = true", "`year`"),
        ("date = 2026-01-01", 'date = "2026-01-01"', "TOML date"),
        ("[[holiday]]", "[[feast]]", "no \\[\\[holiday\\]\\]"),
        ("year = 2026", "year = ", "not TOML"),
    ],
)
def test_bad_holiday_files_are_refused(old: str, new: str, match: str) -> None:
    assert old in GOOD
    with pytest.raises(ValueError, match=match):
        parse_holidays(GOOD.replace(old, new, 1))


def test_a_date_listed_twice_is_refused() -> None:
    twice = GOOD + GOOD[GOOD.index("[[holiday]]") :]
    with pytest.raises(ValueError, match="listed twice"):
        parse_holidays(twice)


def test_two_lists_for_one_year_are_refused() -> None:
    one = parse_holidays(GOOD)
    with pytest.raises(ValueError, match="two holiday lists"):
        WorkingCalendar.from_lists([one, one])
