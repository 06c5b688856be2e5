"""Working days, gazetted holiday lists and the due-date rule.

The service pledge is counted in working days (DESIGN §1: cards ready 7 working days after
application), so every due date goes through a :class:`WorkingCalendar`.  A calendar may name the
years its holiday list covers; asking it about any other year raises ``ValueError`` instead of
quietly treating that year's holidays as working days and promising cards a day too early.

Due-date rule (:meth:`WorkingCalendar.due_date`): an approval made on a non-working day is deemed
made on the next working day, and the due date is the 7th working day after that deemed date.  So an
approval on Saturday, Sunday or a holiday gets the same due date as one on the following working day.
This follows the usual convention that something received when the office is closed counts as
received when it reopens, and it means the line always has seven full working days, never six and
a Sunday.  Counting from the calendar date instead would give a Saturday approval the same due date
as the Friday before it.

Only the two loaders read files (the bundled holiday lists); everything else here is pure.
"""

from __future__ import annotations

import bisect
import functools
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DUE_WORKING_DAYS",
    "Holiday",
    "HolidayList",
    "WorkingCalendar",
    "hong_kong_calendar",
    "hong_kong_holiday_lists",
    "load_holidays",
    "parse_holidays",
]

#: Working days from (deemed) approval to the due date: the SMARTICS-2 pledge (DESIGN §1).
DUE_WORKING_DAYS = 7

_ONE_DAY = timedelta(days=1)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class Holiday:
    day: date
    name: str


@dataclass(frozen=True)
class HolidayList:
    """One year's gazetted holidays and where they were read from."""

    year: int
    holidays: tuple[Holiday, ...]
    document: str
    url: str
    verified: bool
    published: date | None = None
    note: str = ""

    @property
    def dates(self) -> frozenset[date]:
        return frozenset(h.day for h in self.holidays)


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days: not a weekend day (``date.weekday()`` numbers) and not a listed holiday.

    ``years``, when given, are the years whose holiday list is complete; any question about a date
    outside them raises ``ValueError``.
    """

    holidays: frozenset[date] = frozenset()
    weekend: tuple[int, ...] = (5, 6)
    years: frozenset[int] | None = None
    _weekday_holidays: tuple[date, ...] = field(init=False, repr=False, compare=False)
    _per_week: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        days = set(self.weekend)
        if len(days) != len(self.weekend) or not days <= set(range(7)):
            raise ValueError("weekend must be distinct weekday numbers 0 (Monday) to 6 (Sunday)")
        if len(self.weekend) == 7:
            raise ValueError("a weekend of seven days leaves no working day")
        # Holidays that fall on a weekend day change nothing; keeping only the others, sorted,
        # lets working_days_between count a range with two bisections.
        weekday_holidays = sorted(h for h in self.holidays if h.weekday() not in self.weekend)
        object.__setattr__(self, "_weekday_holidays", tuple(weekday_holidays))
        object.__setattr__(self, "_per_week", 7 - len(self.weekend))

    @classmethod
    def from_lists(
        cls, lists: Iterable[HolidayList], *, weekend: tuple[int, ...] = (5, 6)
    ) -> WorkingCalendar:
        """A calendar covering exactly the years of ``lists`` (one list per year)."""
        years: set[int] = set()
        days: set[date] = set()
        for holiday_list in lists:
            if holiday_list.year in years:
                raise ValueError(f"two holiday lists for {holiday_list.year}")
            years.add(holiday_list.year)
            days |= holiday_list.dates
        return cls(frozenset(days), weekend, frozenset(years))

    def _check(self, day: date) -> None:
        if self.years is not None and day.year not in self.years:
            raise ValueError(f"no holiday list for {day.year}: add that year's gazetted holidays")

    def is_working_day(self, day: date) -> bool:
        self._check(day)
        return day.weekday() not in self.weekend and day not in self.holidays

    def add_working_days(self, start: date, n: int) -> date:
        """The ``n``-th working day after ``start`` (before it if ``n < 0``); ``start`` itself if 0.

        ``start`` is not counted, and need not be a working day.
        """
        step = _ONE_DAY if n >= 0 else -_ONE_DAY
        remaining = abs(n)
        day = start
        while remaining:
            day += step
            if self.is_working_day(day):
                remaining -= 1
        return day

    def roll_forward(self, day: date) -> date:
        """``day`` if it is a working day, else the next working day."""
        while not self.is_working_day(day):
            day += _ONE_DAY
        return day

    def roll_back(self, day: date) -> date:
        """``day`` if it is a working day, else the last working day before it."""
        while not self.is_working_day(day):
            day -= _ONE_DAY
        return day

    def working_days_between(self, start: date, end: date) -> int:
        """Working days in ``(start, end]``; negative (minus those in ``(end, start]``) if end < start.

        ``working_days_between(d, add_working_days(d, n)) == n`` for every ``n >= 0``.
        """
        if end < start:
            return -self.working_days_between(end, start)
        if self.years is not None:
            for year in range(start.year, end.year + 1):
                self._check(date(year, 1, 1))
        full_weeks, rest = divmod((end - start).days, 7)
        count = full_weeks * self._per_week
        first = start.weekday() + 1
        count += sum(1 for i in range(rest) if (first + i) % 7 not in self.weekend)
        lo = bisect.bisect_right(self._weekday_holidays, start)
        hi = bisect.bisect_right(self._weekday_holidays, end)
        return count - (hi - lo)

    def due_date(self, approved_on: date, *, working_days: int = DUE_WORKING_DAYS) -> date:
        """The due date of an application approved on ``approved_on`` (rule in the module doc)."""
        if working_days < 1:
            raise ValueError("working_days must be at least 1")
        return self.add_working_days(self.roll_forward(approved_on), working_days)


def _require(table: dict[str, Any], key: str, kind: type, origin: str) -> Any:
    value = table.get(key)
    # bool is an int subclass: a TOML `year = true` must not pass as a year.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{origin}: `{key}` must be a {kind.__name__}")
    return value


def parse_holidays(text: str, *, origin: str = "<holidays>") -> HolidayList:
    """Parse one year's holiday list (TOML: ``year``, a ``[source]`` table, ``[[holiday]]`` tables).

    Each holiday carries the weekday its source states, checked against the date, so a mistyped
    date in the file is refused rather than shifting someone's due date.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: not TOML ({exc})") from exc
    year = _require(doc, "year", int, origin)
    source = _require(doc, "source", dict, origin)
    document = _require(source, "document", str, f"{origin} [source]")
    url = _require(source, "url", str, f"{origin} [source]")
    verified = _require(source, "verified", bool, f"{origin} [source]")
    if not document.strip() or not url.strip():
        raise ValueError(f"{origin}: [source] must name its document and url")
    published = source.get("published")
    if published is not None and type(published) is not date:
        raise ValueError(f"{origin}: [source] `published` must be a date")
    note = source.get("note", "")
    if not isinstance(note, str):
        raise ValueError(f"{origin}: [source] `note` must be a string")
    entries = doc.get("holiday")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{origin}: no [[holiday]] entries")
    holidays: list[Holiday] = []
    seen: set[date] = set()
    for index, entry in enumerate(entries):
        where = f"{origin} holiday #{index + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        day = entry.get("date")
        if type(day) is not date:
            raise ValueError(f"{where}: `date` must be a TOML date (YYYY-MM-DD)")
        name = _require(entry, "name", str, where)
        weekday = _require(entry, "weekday", str, where)
        if day.year != year:
            raise ValueError(f"{where}: {day} is not in {year}")
        if day in seen:
            raise ValueError(f"{where}: {day} listed twice")
        if weekday != _WEEKDAYS[day.weekday()]:
            raise ValueError(f"{where}: {day} is a {_WEEKDAYS[day.weekday()]}, not a {weekday}")
        seen.add(day)
        holidays.append(Holiday(day, name))
    holidays.sort(key=lambda h: h.day)
    return HolidayList(year, tuple(holidays), document, url, verified, published, note.strip())


def load_holidays(path: str | Path) -> HolidayList:
    """Read a holiday list file (format in :func:`parse_holidays`)."""
    path = Path(path)
    return parse_holidays(path.read_text(encoding="utf-8"), origin=str(path))


@functools.cache
def hong_kong_holiday_lists() -> tuple[HolidayList, ...]:
    """The bundled Hong Kong lists (``scheduler/holidays/hk-*.toml``), oldest year first.

    Check ``verified`` on each: a list not yet read from the gazette says so in its ``note``.
    """
    folder = resources.files(__package__).joinpath("holidays")
    lists = [
        parse_holidays(entry.read_text(encoding="utf-8"), origin=f"holidays/{entry.name}")
        for entry in folder.iterdir()
        if entry.name.startswith("hk-") and entry.name.endswith(".toml")
    ]
    return tuple(sorted(lists, key=lambda hl: hl.year))


def hong_kong_calendar(*, weekend: tuple[int, ...] = (5, 6)) -> WorkingCalendar:
    """Hong Kong working days: Monday to Friday less the general holidays of the bundled years.

    The default working week is Monday to Friday, which is how the 7-working-day pledge is read
    here; pass ``weekend=(6,)`` for a six-day week (the lists keep the holidays that fall on a
    Saturday for that case).
    """
    return WorkingCalendar.from_lists(hong_kong_holiday_lists(), weekend=weekend)
